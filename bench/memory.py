"""Does a finished call give its memory back? Worker RSS across many short calls.

    tests/netns_run.sh .venv/bin/python bench/memory.py --calls 30

Starts the real server with one session worker (so every call lands in the same process), then
makes ``--calls`` short calls one after another (the headless client, 2 s of speech each, with a
WHEP viewer watching for part of each), and reads the worker's resident memory (/proc) after the
first call and after each later one, once the server reports no session. Prints one JSON line:
the RSS after call 1, after the last, the growth in percent, and the series.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.latency import HOST, machine_desc, netns_reexec, speech_wav  # noqa: E402
from tests.server_proc import ServerProcess, get_json, model_args, wait_sessions  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid``, MB."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


async def one_call(base: str, wav: Path) -> None:
    from server.client import AvatarClient, load_audio
    from server.watch import WatchClient

    c = AvatarClient(base, load_audio(wav), duration=2.5)
    try:
        welcome = await c.connect()
        c.make_pc()
        await c.negotiate()
        v = WatchClient(f"{base}/watch/{welcome['stage']['id']}")
        try:
            await v.start()
            await asyncio.sleep(1.5)
        finally:
            await v.close()
        await asyncio.sleep(0.5)
    finally:
        await c.close()


async def run(args: argparse.Namespace, d: Path) -> dict[str, Any]:
    cfg = d / "one-worker.toml"
    cfg.write_text("[server]\nworkers = 1\n")
    srv = ServerProcess(HOST, d / "server.log", ["--config", str(cfg), "--data-dir", str(d / "data"), *model_args()])
    srv.start()
    try:
        wav = speech_wav(d / "speech.wav", 3.0)
        series: list[float] = []
        pid = int((await get_json(srv.url, "/stats"))["totals"]["worker_pids"][0])
        for _ in range(args.calls):
            await one_call(srv.url, wav)
            await wait_sessions(srv.url, 0)
            await asyncio.sleep(1.0)
            series.append(round(rss_mb(pid), 1))
    finally:
        srv.stop()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_desc(),
        "calls": args.calls,
        "rss_mb_after_first": series[0],
        "rss_mb_after_last": series[-1],
        "growth_pct": round(100.0 * (series[-1] - series[0]) / series[0], 1),
        "series_mb": series,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=30)
    args = p.parse_args()
    netns_reexec()
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as d:
        print(json.dumps(asyncio.run(run(args, Path(d)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
