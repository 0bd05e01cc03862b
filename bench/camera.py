"""``avatar camera`` benchmark: frames reaching the camera, mic → frame latency, A/V offset.

For each avatar (default: the built-ins ava, leo, kofi, mei and the sprite fox) it runs
:func:`server.stage.camera.run_camera` in this process with ``--mic-file`` playing real speech
(dev-speech utterances 1.2 s apart) in real time into a fake pyvirtualcam backend that stamps every frame it receives, and reports:

- **fps while speaking**: frames the camera received per second while the file played;
- **latency**: mic frame captured → the first camera frame reflecting it, p50 / p95 (the
  command's own measure, the same as a live session's);
- **A/V offset** (built-in characters): a second run records (``--record``) what the camera
  and the voice output emitted, each stamped with its emission time; per utterance the mouth's
  onset minus the speech's onset (server/sync.py, as bench/stage_sync.py measures a viewer) is
  compared with the same on ``avatar render`` of the same speech (in sync by construction):
  positive = the voice comes early, negative = late (EBU R37: +40 / -60 ms).
- **virtual microphone** (``--pulse``, needs pulseaudio): a private PulseAudio; speech played
  into its null sink is the microphone, the virtual microphone is recorded back with parec,
  and the voice's delay is compared with when the frame showing it left (capture + video
  latency): positive = the voice is heard after its frame.

Usage::

    .venv/bin/python bench/camera.py [--avatars ava,leo,kofi,mei,fox] [--seconds 20] [--pulse] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from server.config import AppConfig, load_config  # noqa: E402
from server.pipeline.runner import SharedModels, load_models  # noqa: E402
from server.stage.camera import CameraOptions, run_camera  # noqa: E402

BUILTIN = ("ava", "leo", "kofi", "mei")


class StampCam:
    """A pyvirtualcam backend that stamps the frames it receives (time.monotonic(), s)."""

    last: StampCam | None = None

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw: Any) -> None:
        self.times: list[float] = []
        self.size = (width, height)
        StampCam.last = self

    def send(self, frame: Any) -> None:
        self.times.append(time.monotonic())

    def device(self) -> str:
        return "bench"

    def native_fourcc(self) -> int | None:
        return None

    def close(self) -> None:
        pass


def cpu_s() -> float:
    """CPU seconds this process used so far (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_once(cfg: AppConfig, models: SharedModels, wav: Path, avatar: str, seconds: float, record: Path | None) -> dict[str, Any]:
    """One run: camera (fake backend) or recording only; the command's stats + CPU."""
    opts = CameraOptions(mic_file=wav, avatar=avatar, seconds=seconds, quiet=True, record=record,
                         camera_backend=None if record is not None else "bench", no_camera=record is not None)
    c0, w0 = cpu_s(), time.monotonic()
    stats = run_camera(cfg, opts, lambda _cfg: models)
    stats["cpu_cores"] = round((cpu_s() - c0) / (time.monotonic() - w0), 2)
    return stats


def camera_fps(times: list[float], speech_s: float) -> float:
    """Frames per second the camera received during the first ``speech_s`` s (the file)."""
    t = np.array(times)
    t = t[t - t[0] <= speech_s]
    return float((len(t) - 1) / (t[-1] - t[0])) if len(t) > 1 else 0.0


def file_offsets(path: Path, avatar: str) -> list[tuple[float, float]]:
    """(speech onset s, mouth onset − speech onset s) per utterance of an MP4 (server/sync.py)."""
    from server.stage.sync import read_recording, utterance_offsets

    return utterance_offsets(read_recording(path, avatar))


def render_reference(cfg: AppConfig, models: SharedModels, wav: Path, avatar: str, out: Path) -> list[tuple[float, float]]:
    """The offsets of ``avatar render``'s MP4 of the same speech (in sync by construction)."""
    from server.offline import render_file

    render_file(wav, out, cfg, models, avatar, progress=False)
    return file_offsets(out, avatar)


def virtual_mic_delay(wav: Path, d: Path, seconds: float) -> dict[str, Any]:
    """Voice through the virtual microphone vs the frame showing it, over a private PulseAudio."""
    from tests.marionette import NullAudio
    from tests.test_camera import (
        MIC_CAPTURE_MS,
        CameraProc,
        PulseRecorder,
        pulse_env,
        speech_16k,
        speech_lag_s,
    )

    srv = NullAudio(d)
    try:
        env = pulse_env(srv)
        stats_path = d / "vmic-stats.json"
        cam = CameraProc(["--mic", "null.monitor", "--virtual-mic", "--no-camera", "--seconds", str(seconds + 5),
                          "--stats", str(stats_path)], env)
        try:
            cam.wait_line("avatar camera: live")
            time.sleep(2.0)  # a fresh null sink plays nothing for its first ~2 s
            mic_rec = PulseRecorder(srv, "null.monitor")
            vmic_rec = PulseRecorder(srv, "avatar_mic.monitor")
            time.sleep(0.3)
            subprocess.run(["paplay", "--device=null", str(wav)], env=env, check=True, timeout=seconds + 30)
            time.sleep(1.0)
            mic, vmic = mic_rec.stop(), vmic_rec.stop()
        finally:
            cam.finish(seconds + 60)
        stats = json.loads(stats_path.read_text())
        speech = speech_16k(wav)
        lag_mic, c1 = speech_lag_s(mic, speech)
        lag_vmic, c2 = speech_lag_s(vmic, speech)
        assert mic_rec.start_t is not None and vmic_rec.start_t is not None
        heard = (vmic_rec.start_t + lag_vmic) - (mic_rec.start_t + lag_mic)
        shown = (MIC_CAPTURE_MS + stats["latency_ms"]["p50"]) / 1000.0
        return {"voice_after_mic_ms": round(heard * 1000), "frame_after_mic_ms": round(shown * 1000),
                "offset_ms": round((heard - shown) * 1000), "correlation": [round(c1, 2), round(c2, 2)],
                "latency_ms": stats["latency_ms"], "voice_delay_ms": stats["voice_delay_ms"], "virtual_mic": stats["virtual_mic"]}
    finally:
        srv.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--avatars", default="ava,leo,kofi,mei,fox")
    p.add_argument("--seconds", type=float, default=20.0, help="s of speech per run (at least; whole utterances)")
    p.add_argument("--audio", type=Path, default=None, help="speech file (default: dev-speech utterances 1.2 s apart)")
    p.add_argument("--no-offset", action="store_true", help="skip the recording runs (A/V offset)")
    p.add_argument("--pulse", action="store_true", help="also measure the virtual microphone over a private PulseAudio")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import pyvirtualcam

    from bench.stage_sync import compare, utterance_wav
    from server.offline import audio_duration

    pyvirtualcam.register_backend("bench", StampCam)
    cfg = load_config(None, {})
    models = load_models(cfg)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-camera-") as tmp:
        d = Path(tmp)
        wav = args.audio or utterance_wav(d / "speech.wav", args.seconds / 60.0)
        speech_s = audio_duration(wav)
        run_s = speech_s + 0.5
        print(f"speech {speech_s:.1f} s, {cfg.video.width}x{cfg.video.height} at {cfg.video.fps:g} fps; {platform.processor() or platform.machine()}", flush=True)
        for name in args.avatars.split(","):
            stats = run_once(cfg, models, wav, name, run_s, None)
            assert StampCam.last is not None
            row: dict[str, Any] = {
                "avatar": name, "camera_fps": round(camera_fps(StampCam.last.times, speech_s), 2),
                "frames": len(StampCam.last.times), "skipped_ticks": stats["skipped_ticks"],
                "latency_ms": stats["latency_ms"], "frame_gap_ms": stats["frame_gap_ms"], "cpu_cores": stats["cpu_cores"],
            }
            if name in BUILTIN and not args.no_offset:
                rec = d / f"{name}.mp4"
                rstats = run_once(cfg, models, wav, name, run_s, rec)
                live = file_offsets(rec, name)
                ref = render_reference(cfg, models, wav, name, d / f"{name}-render.mp4")
                # the render's first utterance reads ~+250 ms late (its own start-up), so the
                # first pair is left out
                pairs = compare(live, ref)[1:]
                diffs = np.array([x for _, x in pairs]) * 1000.0
                row.update(record_fps=rstats["emitted_fps"], record_latency_p50_ms=rstats["latency_ms"]["p50"],
                           utterances=len(pairs), camera_onset_ms=round(float(np.median([o for _, o in live])) * 1000),
                           render_onset_ms=round(float(np.median([o for _, o in ref])) * 1000),
                           av_offset_ms=round(float(np.median(diffs))) if len(diffs) else None,
                           av_offset_range_ms=[round(float(diffs.min())), round(float(diffs.max()))] if len(diffs) else None)
            results.append(row)
            print(json.dumps(row), flush=True)
        vmic = virtual_mic_delay(wav, d, speech_s) if args.pulse else None
        if vmic is not None:
            print(json.dumps({"virtual_mic": vmic}), flush=True)
    print()
    print("| avatar | camera fps while speaking | latency p50 / p95 (ms) | skipped ticks | CPU (cores) | A/V offset vs render, median [range] (ms) | utterances |")
    print("|---|---|---|---|---|---|---|")
    for row in results:
        lat = row["latency_ms"]
        off = f"{row['av_offset_ms']:+d} [{row['av_offset_range_ms'][0]:+d}, {row['av_offset_range_ms'][1]:+d}]" if row.get("av_offset_ms") is not None else "-"
        print(f"| {row['avatar']} | {row['camera_fps']:.2f} | {lat['p50']:.0f} / {lat['p95']:.0f} | {row['skipped_ticks']} | "
              f"{row['cpu_cores']:.2f} | {off} | {row.get('utterances', '-')} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"speech_s": speech_s, "results": results, "virtual_mic": vmic}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
