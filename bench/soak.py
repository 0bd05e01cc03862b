"""Does a long run stay flat? Memory and latency of persistent sessions over an hour.

    tests/netns_run.sh .venv/bin/python bench/soak.py --sessions 4 --minutes 60

Starts the real server (default config: session workers, CPU model), then ``--sessions`` calls
by ``avatar client`` (in this process, one event loop) that speak real speech (the dev-speech
recordings, tiled) for ``--minutes``. Every ``--every`` seconds it samples the resident memory of
the server and of each session worker (from /proc, pids from ``/stats``), and each session's
server latency (p50/p95 over its last samples) and frame rate from ``/stats``. Prints one JSON
line: the series, RSS growth from the first sample after ``--warm`` minutes to the last, and the
mean latency of the first vs the last five samples (drift).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.latency import HOST, machine_desc, netns_reexec, speech_wav  # noqa: E402
from bench.memory import rss_mb  # noqa: E402
from tests.server_proc import ServerProcess, get_json, model_args, wait_sessions  # noqa: E402


def _mean(xs: list[float]) -> float | None:
    return round(statistics.fmean(xs), 1) if xs else None


async def sample(srv: ServerProcess, t0: float) -> dict[str, Any]:
    """One sample: minutes since start, RSS (MB) of the server and each worker, per-session figures."""
    snap = await get_json(srv.url, "/stats")
    pids = [int(p) for p in snap["totals"]["worker_pids"]]
    per = snap["sessions"]
    p50 = [s["latency_ms"]["p50"] for s in per if s.get("latency_ms", {}).get("p50") is not None]
    p95 = [s["latency_ms"]["p95"] for s in per if s.get("latency_ms", {}).get("p95") is not None]
    return {
        "min": round((time.monotonic() - t0) / 60.0, 2),
        "sessions": len(per),
        "rss_server_mb": round(rss_mb(srv.pid), 1),
        "rss_workers_mb": [round(rss_mb(p), 1) for p in pids],
        "latency_p50_ms": _mean(p50),
        "latency_p95_ms": _mean(p95),
        "fps_min": min((float(s["fps"]) for s in per), default=None),
    }


async def run(args: argparse.Namespace, d: Path) -> dict[str, Any]:
    from server.client import MIC_RATE, AvatarClient, load_audio

    srv = ServerProcess(HOST, d / "server.log", ["--data-dir", str(d / "data"), *model_args()])
    srv.start()
    clients: list[AvatarClient] = []
    series: list[dict[str, Any]] = []
    try:
        wav = speech_wav(d / "speech.wav", 180.0)
        once = load_audio(wav)
        seconds = args.minutes * 60.0 + 30.0
        audio = np.tile(once, int(np.ceil(seconds * MIC_RATE / once.size)))  # shared by every call
        for _ in range(args.sessions):
            c = AvatarClient(srv.url, audio, duration=seconds)
            await c.start()
            clients.append(c)
        if await wait_sessions(srv.url, args.sessions, timeout_s=30.0) != args.sessions:
            raise RuntimeError(f"expected {args.sessions} sessions:\n{srv.log_tail()}")
        t0 = time.monotonic()
        end = t0 + args.minutes * 60.0
        while time.monotonic() < end:
            await asyncio.sleep(min(args.every, max(0.0, end - time.monotonic())))
            failed = [f for f in (c.failure() for c in clients) if f is not None]
            if failed:
                raise RuntimeError(f"a call failed: {failed[0]}")
            s = await sample(srv, t0)
            series.append(s)
            print(json.dumps(s), file=sys.stderr, flush=True)
        frames = [len(c.stats.frames) for c in clients]
    finally:
        for c in clients:
            await c.close()
        srv.stop()
    warm = [s for s in series if s["min"] >= args.warm] or series
    first, last = warm[0], series[-1]

    def total(s: dict[str, Any]) -> float:
        return float(sum(s["rss_workers_mb"]))

    lat = [s for s in series if s["latency_p50_ms"] is not None]
    head, tail = lat[:5], lat[-5:]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_desc(),
        "sessions": args.sessions,
        "minutes": args.minutes,
        "client_frames": frames,
        "rss_workers_mb_first": total(first),
        "rss_workers_mb_last": total(last),
        "rss_workers_growth_pct": round(100.0 * (total(last) - total(first)) / total(first), 1),
        "rss_server_mb_first": first["rss_server_mb"],
        "rss_server_mb_last": last["rss_server_mb"],
        "latency_p50_ms_first5": _mean([s["latency_p50_ms"] for s in head]),
        "latency_p50_ms_last5": _mean([s["latency_p50_ms"] for s in tail]),
        "latency_p95_ms_first5": _mean([s["latency_p95_ms"] for s in head if s["latency_p95_ms"] is not None]),
        "latency_p95_ms_last5": _mean([s["latency_p95_ms"] for s in tail if s["latency_p95_ms"] is not None]),
        "fps_min": min((s["fps_min"] for s in series if s["fps_min"] is not None), default=None),
        "series": series,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--every", type=float, default=60.0, help="s between samples (default 60)")
    p.add_argument("--warm", type=float, default=2.0, help="minutes before the RSS baseline sample (default 2)")
    args = p.parse_args()
    netns_reexec()
    with tempfile.TemporaryDirectory(prefix="soak-bench-") as d:
        print(json.dumps(asyncio.run(run(args, Path(d)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
