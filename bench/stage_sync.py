"""A viewer's audio/video sync, against an offline render of the same speech.

    tests/netns_run.sh .venv/bin/python bench/stage_sync.py --minutes 2

Starts the real server on the private test address; the headless speaker plays real speech
(dev-speech utterances, each after 1.2 s of silence, repeated for ``--minutes``); one headless
WHEP viewer receives the stage's program, measures the mouth in every frame and keeps the audio,
and lines the two up on the sender's wallclock through RTCP sender reports, as a browser does.
For every utterance: the mouth's onset minus the speech's onset (server/sync.py). The same
measure on ``avatar render`` of the same WAV (in sync by construction) is the reference; the
difference is the stream's A/V offset (positive: audio early). Prints one JSON line with the
median, the spread, EBU R37's window (+40 ms audio early / -60 ms audio late), and the drift
(median of the last quarter of the run minus the first quarter).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.latency import DEV_SPEECH, HOST, machine_desc, netns_reexec  # noqa: E402
from tests.server_proc import ServerProcess, model_args  # noqa: E402


def utterance_wav(out: Path, minutes: float) -> Path:
    """Real utterances separated by 1.2 s of silence, about ``minutes`` long (16 kHz mono)."""
    import soundfile as sf

    files = sorted(DEV_SPEECH.glob("*.wav"))
    if not files:
        raise SystemExit(f"no speech recordings in {DEV_SPEECH}")
    gap = np.zeros(int(1.2 * 16000), np.float32)
    parts: list[np.ndarray] = [gap]
    total = gap.size
    while total < minutes * 60 * 16000:
        for f in files:
            x, sr = sf.read(str(f), dtype="float32", always_2d=True)
            parts += [x[:, 0], gap]
            total += x.shape[0] + gap.size
    sf.write(str(out), np.concatenate(parts), 16000, subtype="PCM_16")
    return out


async def viewer_offsets(base: str, wav: Path, seconds: float) -> tuple[list[tuple[float, float]], dict[str, Any]]:
    from server.client import AvatarClient, load_audio
    from server.watch import WatchClient

    speaker = AvatarClient(base, load_audio(wav), duration=seconds + 2.0)
    welcome = await speaker.connect()
    speaker.make_pc()
    await speaker.negotiate()
    viewer = WatchClient(f"{base}/watch/{welcome['stage']['id']}", measure_sync=True)
    try:
        await viewer.start()
        await viewer.watch(seconds)
        from tests.server_proc import get_json

        sess = (await get_json(base, "/stats"))["sessions"][0]
        server = {"latency_ms": sess["latency_ms"], "audio_delay_ms": sess["program"]["audio_delay_ms"],
                  "encode_ms": sess["program"]["video"]["encode_ms"], "audio": sess["program"]["audio"]}
    finally:
        await viewer.close()
        await speaker.close()
    return viewer.sync_offsets(), {**viewer.stats.summary(), "server": server}


def render_offsets(wav: Path, d: Path) -> list[tuple[float, float]]:
    from server.client import load_mouth_measure
    from server.sync import file_offsets

    mp4 = d / "render.mp4"
    subprocess.run([sys.executable, "-m", "server", "render", str(wav), "-o", str(mp4), "-q", *model_args()], cwd=ROOT, check=True)
    return file_offsets(mp4, load_mouth_measure())


def compare(stream: list[tuple[float, float]], ref: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(stream time s, stream offset − reference offset s) per utterance found in both.

    The two time lines (the viewer's wallclock, the file's time) differ by a constant: it is the
    shift that pairs the most speech onsets within 0.1 s; each stream onset is then paired with
    the reference onset nearest to it.
    """
    if not stream or not ref:
        return []
    r = np.array([x[0] for x in ref])
    best_c, best_n = 0.0, -1
    for si, _ in stream[:10]:
        for rj in r[:40]:
            c = si - rj
            n = sum(1 for sk, _ in stream if np.min(np.abs(r - (sk - c))) < 0.1)
            if n > best_n:
                best_c, best_n = c, n
    out = []
    for sk, ok in stream:
        j = int(np.argmin(np.abs(r - (sk - best_c))))
        if abs(r[j] - (sk - best_c)) < 0.1:
            out.append((sk, ok - ref[j][1]))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0, help="length of the run")
    args = p.parse_args()
    netns_reexec()
    with tempfile.TemporaryDirectory(prefix="stage-sync-") as tmp:
        d = Path(tmp)
        wav = utterance_wav(d / "speech.wav", args.minutes)
        seconds = float(len(__import__("soundfile").read(str(wav))[0]) / 16000)
        ref = render_offsets(wav, d)
        srv = ServerProcess(HOST, d / "server.log", ["--data-dir", str(d / "data"), *model_args()])
        srv.start()
        try:
            stream, summary = asyncio.run(viewer_offsets(srv.url, wav, seconds))
        finally:
            srv.stop()
    deltas = compare(stream, ref)
    ms = np.array([x[1] * 1000.0 for x in deltas])
    q = max(1, len(ms) // 4)
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_desc(),
        "minutes": args.minutes,
        "utterances": len(ms),
        "render_offset_ms_median": round(float(np.median([r[1] for r in ref])) * 1000.0, 1) if ref else None,
        "viewer_offset_ms_median": round(float(np.median([s[1] for s in stream])) * 1000.0, 1) if stream else None,
        "av_offset_ms_median": round(float(np.median(ms)), 1) if ms.size else None,
        "av_offset_ms_p5_p95": [round(float(np.percentile(ms, 5)), 1), round(float(np.percentile(ms, 95)), 1)] if ms.size else None,
        "av_offset_ms_min_max": [round(float(ms.min()), 1), round(float(ms.max()), 1)] if ms.size else None,
        "within_ebu_r37": int(((ms <= 40.0) & (ms >= -60.0)).sum()) if ms.size else 0,
        "drift_ms_last_minus_first_quarter": round(float(np.median(ms[-q:]) - np.median(ms[:q])), 1) if ms.size >= 8 else None,
        "viewer": summary,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
