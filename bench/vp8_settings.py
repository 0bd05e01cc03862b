"""VP8 encode cost of rendered avatar frames: aiortc's settings against ``RenderedVp8Encoder``'s.

Renders ``--frames`` varied talking frames of ``--avatar`` (bench/render_speed.py's states), then
encodes them on one thread with libvpx under each setting (aiortc's: temporal denoiser
``noise-sensitivity`` 4, ``cpu-used`` -6; ours: denoiser off, ``cpu-used`` from the config),
and prints the median ms per frame, the bitrate and the PSNR of every 10th decoded frame.
The settings are interleaved over ``--repeats`` rounds so machine load hits them alike.

    .venv/bin/python bench/vp8_settings.py [--avatar ava] [--frames 300] [--repeats 3]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from fractions import Fraction  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.render_speed import states  # noqa: E402
from server.avatars import AvatarRegistry  # noqa: E402
from server.media.vp8 import DEFAULT_CPU_USED  # noqa: E402

VIDEO_TIME_BASE = Fraction(1, 90000)  # s per pts unit (RTP video clock)


def open_encoder(noise_sensitivity: int, cpu_used: int, size: int, bitrate: int) -> Any:
    """A one-thread libvpx video encoder context (PyAV's VideoCodecContext; its stubs type
    ``CodecContext.create`` as the base class) with aiortc's rate control and the given options."""
    c: Any = av.CodecContext.create("libvpx", "w")
    c.width = c.height = size
    c.time_base = VIDEO_TIME_BASE  # as aiortc's frames: pts in 90 kHz units, 3000 per 30 fps frame
    c.bit_rate, c.pix_fmt, c.gop_size, c.qmin, c.qmax = bitrate, "yuv420p", 3000, 2, 56
    c.options = {
        "bufsize": str(bitrate), "cpu-used": str(cpu_used), "deadline": "realtime", "lag-in-frames": "0",
        "minrate": str(bitrate), "maxrate": str(bitrate), "noise-sensitivity": str(noise_sensitivity),
        "overshoot-pct": "15", "partitions": "0", "static-thresh": "1", "undershoot-pct": "100",
    }
    c.thread_count = 1
    return c


def run(frames: list[np.ndarray], noise_sensitivity: int, cpu_used: int, fps: float, bitrate: int) -> dict[str, float]:
    """Encode ``frames`` (I420 arrays) → median/p95 ms per frame, kbit/s, mean PSNR (dB)."""
    size = frames[0].shape[1]
    enc, dec = open_encoder(noise_sensitivity, cpu_used, size, bitrate), av.CodecContext.create("libvpx", "r")
    times, nbytes, psnr = [], 0, []
    for i, yuv in enumerate(frames):
        f = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        f.pts, f.time_base = round(i * 90000 / fps), VIDEO_TIME_BASE
        t0 = time.perf_counter()
        packets = enc.encode(f)
        times.append(time.perf_counter() - t0)
        for p in packets:
            nbytes += p.size
            for d in dec.decode(p):
                if i % 10 == 0:
                    mse = float(np.mean((d.to_ndarray(format="yuv420p").astype(np.float32) - yuv) ** 2))
                    psnr.append(10 * np.log10(255.0**2 / max(mse, 1e-6)))
    return {
        "median_ms": 1000 * statistics.median(times),
        "p95_ms": 1000 * float(np.percentile(times, 95)),
        "kbps": nbytes * 8 * fps / len(frames) / 1000,
        "psnr_db": float(np.mean(psnr)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--avatar", default="ava")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-used", type=int, default=DEFAULT_CPU_USED, help="ours (configs: video.vp8_cpu_used)")
    ap.add_argument("--kbps", type=int, nargs="+", default=[500, 1500],
                    help="target bitrates, kbit/s (aiortc starts at 500 and follows the receiver's REMB up to 1500)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # an empty data folder: built-ins and sprites only
        renderer = AvatarRegistry(Path(tmp)).create(args.avatar, (args.size, args.size))
    frames = [cv2.cvtColor(renderer.render(s), cv2.COLOR_RGBA2YUV_I420) for s in states(args.frames)]
    settings: dict[str, tuple[int, int, int]] = {}
    for kbps in args.kbps:
        settings[f"aiortc (denoiser 4, cpu-used -6) {kbps} kbit/s"] = (4, -6, kbps * 1000)
        settings[f"ours (denoiser off, cpu-used {args.cpu_used}) {kbps} kbit/s"] = (0, args.cpu_used, kbps * 1000)
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in settings}
    for _ in range(args.repeats):
        for name, (ns, cpu, rate) in settings.items():
            rows[name].append(run(frames, ns, cpu, 30.0, rate))
    print(f"{args.avatar} {args.size}x{args.size}, {args.frames} frames, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; best of {args.repeats} interleaved rounds")
    for name, rs in rows.items():
        best = min(rs, key=lambda r: r["median_ms"])
        print(f"  {name:52s} {best['median_ms']:.2f} ms/frame (p95 {best['p95_ms']:.2f}), "
              f"{best['kbps']:.0f} kbit/s, PSNR {best['psnr_db']:.1f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
