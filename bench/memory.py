"""Does a finished call give its memory back? Worker RSS across many short calls.

    tests/netns_run.sh .venv/bin/python bench/memory.py --calls 30

Starts the real server with one session worker (so every call lands in the same process), then
makes ``--calls`` short calls one after another. Each call is a separate ``avatar client``
process (2.5 s of speech) with a WHEP viewer watching it for 1.5 s; with ``--end kill`` (the
default) the client is then killed with SIGKILL (a vanished client: no ``bye``, no DTLS close),
with ``--end close`` it says goodbye. Once the server reports no session and has had
``--settle`` seconds to release the call's memory, the worker's resident memory is read from
/proc. Prints one JSON line: the RSS after call 1, after the last, the growth in percent, and
the series.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.latency import HOST, machine_desc, netns_reexec, speech_wav  # noqa: E402
from tests.server_proc import ServerProcess, get_json, model_args, wait_sessions  # noqa: E402

WATCH_RE = re.compile(r"watch it at (\S+/watch/\S+)")


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid``, MB."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


async def one_call(base: str, wav: Path, end: str) -> None:
    """One call by a separate client process, watched for a while, then killed or closed."""
    from server.client import ClientError
    from server.watch import WatchClient

    duration = "20" if end == "kill" else "3.5"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "client", "--url", base, "--audio", str(wav), "--duration", duration,
        "--no-measure-mouth", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.stdout is not None
    try:
        watch = None
        while watch is None:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not line:
                raise RuntimeError("avatar client ended before its stage was announced")
            m = WATCH_RE.search(line.decode(errors="replace"))
            watch = m.group(1) if m else None
        for _ in range(100):  # the stage is announced before the call is live
            v = WatchClient(watch)
            try:
                await v.start()
                await asyncio.sleep(1.5)
                break
            except ClientError as e:
                if e.code != "409":
                    raise
                await asyncio.sleep(0.1)
            finally:
                await v.close()
        await asyncio.sleep(1.0)
        if end == "kill":
            proc.send_signal(signal.SIGKILL)
        drain = asyncio.ensure_future(proc.stdout.read())
        await asyncio.wait_for(proc.wait(), 60)
        await drain
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run(args: argparse.Namespace, d: Path) -> dict[str, Any]:
    cfg = d / "one-worker.toml"
    cfg.write_text("[server]\nworkers = 1\n")
    srv = ServerProcess(HOST, d / "server.log", ["--config", str(cfg), "--data-dir", str(d / "data"), *model_args()])
    srv.start()
    try:
        wav = speech_wav(d / "speech.wav", 3.0)
        series: list[float] = []
        pid = int((await get_json(srv.url, "/stats"))["totals"]["worker_pids"][0])
        start_mb = rss_mb(pid)
        for _ in range(args.calls):
            await one_call(srv.url, wav, args.end)
            await wait_sessions(srv.url, 0, timeout_s=30.0)
            await asyncio.sleep(args.settle)
            series.append(round(rss_mb(pid), 1))
    finally:
        srv.stop()
        if args.keep_log:
            import shutil

            shutil.copy(d / "server.log", args.keep_log)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_desc(),
        "calls": args.calls,
        "end": args.end,
        "rss_mb_idle_worker": round(start_mb, 1),
        "rss_mb_after_first": series[0],
        "rss_mb_after_last": series[-1],
        "growth_pct": round(100.0 * (series[-1] - series[0]) / series[0], 1),
        "series_mb": series,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--end", choices=["kill", "close"], default="kill", help="how each call ends (default: SIGKILL the client)")
    p.add_argument("--settle", type=float, default=3.0, help="s after the session ends before reading the RSS (default 3)")
    p.add_argument("--keep-log", type=Path, default=None, help="copy the server's log here")
    args = p.parse_args()
    netns_reexec()
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as d:
        print(json.dumps(asyncio.run(run(args, Path(d)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
