"""``avatar render`` throughput: a 10 s speech clip rendered to MP4 with every avatar.

Registers skimage's public-domain astronaut as a photo avatar in a temporary data folder, builds
a 10 s clip from the dev-speech recordings (espeak-ng if they are absent), then times the same
code path as ``avatar render IN.wav -o OUT.mp4 --avatar NAME`` (decode, the live stages on a
virtual clock, render, H.264 + AAC encode) for each avatar and prints the real-time factor.

    .venv/bin/python bench/render_files.py [--seconds 10] [--model default|energy] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# isort: off
import server  # noqa: E402, F401  (first: limits BLAS/OpenMP pools to one thread before numpy loads)

# isort: on
import numpy as np  # noqa: E402
import soundfile  # noqa: E402

from server.config import load_config  # noqa: E402
from server.offline import render_file  # noqa: E402
from server.pipeline.runner import load_models  # noqa: E402

DEV = ROOT.parent / "shared" / "data" / "dev-speech" / "audio"


def clip(out: Path, seconds: float) -> Path:
    """About ``seconds`` of speech as a 16 kHz WAV (dev-speech utterances, 0.3 s apart)."""
    parts: list[np.ndarray] = []
    files = sorted(DEV.glob("*.wav"))
    if files:
        while sum(p.size for p in parts) < seconds * 16_000:
            for f in files:
                x, sr = soundfile.read(str(f), dtype="float32")
                parts += [x, np.zeros(int(0.3 * sr), np.float32)]
    else:
        tmp = out.with_suffix(".espeak.wav")
        subprocess.run(["espeak-ng", "-w", str(tmp), "The quick brown fox jumps over the lazy dog. " * 6], check=True)
        x, sr = soundfile.read(str(tmp), dtype="float32")
        parts = [x]
    audio = np.concatenate(parts)[: int(seconds * 16_000)]
    soundfile.write(str(out), audio, 16_000, subtype="PCM_16")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--model", default="default")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = load_config(overrides={"visemes": {"model": args.model}, "avatars": {"data_dir": str(tmp / "data")}})
        models = load_models(cfg)
        import cv2
        from skimage import data as skdata

        portrait = tmp / "astronaut.png"
        cv2.imwrite(str(portrait), cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
        models.registry.add_photo(portrait, "astronaut", "NASA public-domain portrait (benchmark)")
        wav = clip(tmp / "clip.wav", args.seconds)
        rows = []
        for info in models.registry.list():
            t0 = time.perf_counter()
            res = render_file(wav, tmp / f"{info.name}.mp4", cfg, models, info.name, progress=False)
            dt = time.perf_counter() - t0
            rows.append({"avatar": info.name, "kind": info.kind, "audio_s": round(res.duration_s, 2), "wall_s": round(dt, 2), "x_realtime": round(res.duration_s / dt, 1), "frames": res.video_frames})
    print(f"machine: {platform.processor() or platform.machine()}, model {args.model}")
    print(f"{'avatar':12} {'kind':9} {'audio s':>8} {'wall s':>7} {'x real time':>12}")
    for r in rows:
        print(f"{r['avatar']:12} {r['kind']:9} {r['audio_s']:8.2f} {r['wall_s']:7.2f} {r['x_realtime']:12.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
