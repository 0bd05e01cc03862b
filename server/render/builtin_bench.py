"""Time the built-in characters: ``python -m server.render.builtin_bench [--size 512x512] [--frames 300]``.

Renders ``frames`` varying states (every viseme and emotion, head motion, blinks, breathing,
gaze) per character on one thread and prints the median, p90 and max wall time per frame (ms)
and the median CPU time of the rendering thread (less sensitive to other processes).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import cv2
import numpy as np

from engines.spec import VISEMES
from server.pipeline.types import EMOTIONS, AnimationState
from server.render.builtin import BUILTIN_CHARACTERS
from server.render.poses import viseme_pose


def bench_states(n: int) -> list[AnimationState]:
    """``n`` deterministic, varied states (30 fps time base)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        t = i / 30.0
        blink = 0.0 if i % 40 < 3 else 1.0
        out.append(
            viseme_pose(
                VISEMES[i % len(VISEMES)],
                EMOTIONS[(i // 50) % len(EMOTIONS)],
                jaw_open=float(rng.uniform(0.0, 1.0)),
                head_yaw=0.2 * math.sin(t),
                head_pitch=0.1 * math.sin(1.3 * t),
                head_roll=0.08 * math.sin(0.7 * t),
                head_dx=0.02 * math.sin(0.5 * t),
                head_dy=0.01 * math.cos(0.4 * t),
                breath=0.5 + 0.5 * math.sin(t),
                gaze_x=0.5 * math.sin(2.0 * t),
                gaze_y=0.3 * math.cos(1.7 * t),
                eye_open_l=blink,
                eye_open_r=blink,
            )
        )
    return out


def bench(name: str, size: tuple[int, int], frames: int) -> dict[str, float]:
    """Timing of one character: wall median/p90/max and thread-CPU median, ms per frame."""
    r = BUILTIN_CHARACTERS[name](size)
    states = bench_states(frames)
    for s in states[:20]:
        r.render(s)
    wall, cpu = [], []
    for s in states:
        t0, c0 = time.perf_counter(), time.thread_time()
        r.render(s)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    w = np.array(wall) * 1e3
    return {
        "median_ms": float(np.median(w)),
        "p90_ms": float(np.percentile(w, 90)),
        "max_ms": float(w.max()),
        "cpu_median_ms": float(np.median(np.array(cpu) * 1e3)),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Print one line per character."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="512x512", help="WIDTHxHEIGHT in px")
    ap.add_argument("--frames", type=int, default=300)
    args = ap.parse_args(argv)
    try:
        w, h = (int(x) for x in args.size.lower().split("x"))
    except ValueError as e:
        raise SystemExit(f"--size must look like 512x512, got {args.size!r}") from e
    cv2.setNumThreads(1)
    for name in BUILTIN_CHARACTERS:
        r = bench(name, (w, h), args.frames)
        print(
            f"{name:6s} {w}x{h}: median {r['median_ms']:.2f} ms  p90 {r['p90_ms']:.2f}  "
            f"max {r['max_ms']:.2f}  (thread CPU median {r['cpu_median_ms']:.2f} ms)"
        )


if __name__ == "__main__":
    main()
