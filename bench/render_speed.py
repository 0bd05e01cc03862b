"""Per-frame render time of every avatar in the registry, on one thread.

Registers skimage's public-domain astronaut as a photo avatar in a temporary data folder (so a
photo portrait is always measured), then renders ``--frames`` frames (default 400, the first
``--warmup`` not counted) of a varied animation for each avatar (viseme changes every ~80 ms
with blended mouth parameters, head idle sway, blinks, gaze shifts, emotions) and prints
median / p95 / max ms per ``--size`` frame. Budget: 4 ms per 512x512 frame.

    .venv/bin/python bench/render_speed.py [--frames 400] [--size 512] [--only ava,leo] [--json out.json]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # one thread, set before numpy loads its BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from engines.spec import N_VISEMES, VISEMES  # noqa: E402
from server.avatars import AvatarRegistry  # noqa: E402
from server.pipeline.types import EMOTIONS, AnimationState  # noqa: E402
from server.render.poses import EMOTION_TARGETS, mouth_params  # noqa: E402

BUDGET_MS = 4.0


def states(n: int, seed: int = 0, fps: float = 30.0) -> list[AnimationState]:
    """``n`` deterministic, varied animation states (what a talking session produces)."""
    rng = np.random.default_rng(seed)
    out: list[AnimationState] = []
    w = np.eye(N_VISEMES, dtype=np.float32)[0]
    target = w.copy()
    next_blink = 2.0
    emotion = "neutral"
    for i in range(n):
        t = i / fps
        if i % 2 == 0:  # a new viseme every ~67 ms
            target = np.zeros(N_VISEMES, np.float32)
            target[rng.integers(N_VISEMES)] = 1.0
        w = (0.45 * w + 0.55 * target).astype(np.float32)
        if i % 90 == 0:
            emotion = EMOTIONS[int(rng.integers(len(EMOTIONS)))]
        e = EMOTION_TARGETS[emotion]
        blink = 0.0
        if t >= next_blink:
            phase = (t - next_blink) / 0.15
            blink = math.sin(math.pi * phase) if phase < 1 else 0.0
            if phase >= 1:
                next_blink = t + float(rng.uniform(1.5, 4.0))
        eye = float(e["eye_open"]) * (1.0 - blink)
        mp: dict[str, Any] = dict(mouth_params(w))  # float fields of AnimationState
        out.append(AnimationState(
            t=t, visemes=w.copy(), **mp,
            smile=float(e["smile"]), brow_raise=float(e["brow_raise"]) + 0.2 * math.sin(t * 1.3),
            brow_inner=float(e["brow_inner"]), eye_open_l=eye, eye_open_r=eye,
            gaze_x=float(e["gaze_x"]) + 0.3 * math.sin(t * 0.7), gaze_y=float(e["gaze_y"]),
            head_yaw=0.08 * math.sin(t * 0.9), head_pitch=0.05 * math.sin(t * 1.7),
            head_roll=0.06 * math.sin(t * 0.6), head_dx=0.005 * math.sin(t * 0.4),
            head_dy=0.004 * math.sin(t * 1.1), breath=0.5 + 0.5 * math.sin(t * 1.6),
            emotion=emotion, speaking=True,
        ))
    return out


def bench_one(reg: AvatarRegistry, name: str, seq: list[AnimationState], size: tuple[int, int], warmup: int) -> dict[str, Any]:
    """Time ``reg.create(name, size).render`` over ``seq``; returns the numbers in ms."""
    t0 = time.perf_counter()
    r = reg.create(name, size)
    setup_ms = (time.perf_counter() - t0) * 1000
    times = []
    for k, s in enumerate(seq):
        t = time.perf_counter()
        frame = r.render(s)
        dt = time.perf_counter() - t
        if k >= warmup:
            times.append(dt * 1000)
    assert frame.shape == (size[1], size[0], 4)
    a = np.array(times)
    return {
        "setup_ms": round(setup_ms, 1),
        "frames": len(a),
        "median_ms": round(float(np.median(a)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
        "max_ms": round(float(a.max()), 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if any avatar's median exceeds the budget."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=400, help="frames per avatar (>= 300 timed by default)")
    ap.add_argument("--warmup", type=int, default=30, help="first frames not timed")
    ap.add_argument("--size", type=int, default=512, help="frame side in px")
    ap.add_argument("--only", default=None, help="comma-separated avatar names (default: all)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    size = (args.size, args.size)
    seq = states(args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        reg = AvatarRegistry(Path(tmp))
        only = set(args.only.split(",")) if args.only else None
        if only is None or "astronaut" in only:
            try:
                import skimage.data

                img = Path(tmp) / "astronaut.png"
                cv2.imwrite(str(img), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
                reg.add_photo(img, "astronaut", "skimage public-domain test image (NASA)")
            except ImportError as e:
                print(f"photo avatar skipped: {e}", file=sys.stderr)
        names = [i.name for i in reg.list()]
        kinds = {i.name: i.kind for i in reg.list()}
        if only is not None:
            names = [n for n in names if n in only]
        results: dict[str, dict[str, Any]] = {}
        print(f"{'avatar':<12} {'kind':<9} {'setup ms':>9} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}  ({args.frames - args.warmup} frames, {size[0]}x{size[1]}, 1 thread)")
        for n in names:
            res = bench_one(reg, n, seq, size, args.warmup)
            res["kind"] = kinds[n]
            results[n] = res
            flag = "" if res["median_ms"] <= BUDGET_MS else "  OVER BUDGET"
            print(f"{n:<12} {kinds[n]:<9} {res['setup_ms']:>9.1f} {res['median_ms']:>10.2f} {res['p95_ms']:>8.2f} {res['max_ms']:>8.2f}{flag}")
    if args.json:
        meta = {"size": list(size), "frames": args.frames - args.warmup, "threads": 1, "budget_ms": BUDGET_MS,
                "machine": platform.machine(), "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "visemes": list(VISEMES)}
        args.json.write_text(json.dumps({"meta": meta, "avatars": results}, indent=1))
    return 0 if all(r["median_ms"] <= BUDGET_MS for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
