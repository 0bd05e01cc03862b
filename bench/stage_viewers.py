"""One stage, many viewers: the rate every viewer is sent, the server's cost per viewer, joins.

    tests/netns_run.sh .venv/bin/python bench/stage_viewers.py --viewers 50 --seconds 20

Starts the real server (its session workers) on the private test address, makes one call with
the headless client playing real speech, then measures over ``--seconds``:

1. the server's CPU with the speaker alone (no viewer);
2. the server's CPU with ``--viewers`` WHEP viewers of that stage, and the frames the server
   sent each viewer (``/stats``: per-viewer ``video_sent``) → the slowest viewer's rate;
3. each viewer's first frame after its WHEP POST.

The viewers run in a separate process whose receivers do not decode (a placeholder decoder
hands the track an empty frame per received frame), so their own receiving cost stays small;
it still shares this machine's two cores with the server, so the server figures are an upper
bound of what a viewer costs. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.latency import HOST, machine_desc, netns_reexec, speech_wav  # noqa: E402
from tests.server_proc import ServerProcess, get_json, model_args, proc_cpu_s  # noqa: E402


class _NoDecode:
    """A decoder that decodes nothing: one tiny placeholder frame per received frame."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def decode(self, encoded: Any) -> list[Any]:
        import av

        if self.kind == "video":
            frame: Any = av.VideoFrame(16, 16, "yuv420p")
        else:
            frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
            frame.sample_rate = 48_000
        frame.pts = encoded.timestamp
        return [frame]


def _viewer_process(url: str, n: int, seconds: float, out: Any) -> None:
    import aiortc.rtcrtpreceiver as receiver

    def no_decoder(codec: Any) -> Any:
        return _NoDecode(codec.mimeType.split("/")[0].lower())

    receiver.get_decoder = no_decoder
    from server.watch import WatchClient

    async def run() -> list[dict[str, Any]]:
        clients = [WatchClient(url) for _ in range(n)]
        try:
            for c in clients:  # joins one after another, as a class arrives
                await c.start()
            await asyncio.sleep(seconds)
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        return [c.stats.summary() for c in clients]

    out.put(asyncio.run(run()))


async def _cpu_over(pid: int, seconds: float) -> float:
    """Share of one core (%) the process tree used over ``seconds``."""
    c0, t0 = proc_cpu_s(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return 100.0 * (proc_cpu_s(pid) - c0) / (time.monotonic() - t0)


def _stage_stats(stats: dict[str, Any], stage: str) -> dict[str, Any]:
    for s in stats["sessions"]:
        if s.get("stage") == stage:
            return dict(s)
    raise RuntimeError(f"stage {stage} not in /stats")


async def measure(args: argparse.Namespace, d: Path) -> dict[str, Any]:
    from server.client import AvatarClient, load_audio

    srv = ServerProcess(HOST, d / "server.log", ["--data-dir", str(d / "data"), *model_args()])
    srv.start()
    try:
        wav = speech_wav(d / "speech.wav", args.seconds * 3 + 30)
        speaker = AvatarClient(srv.url, load_audio(wav), duration=args.seconds * 3 + 30)
        welcome = await speaker.connect()
        speaker.make_pc()
        await speaker.negotiate()
        stage = welcome["stage"]["id"]
        await asyncio.sleep(2.0)
        alone = await _cpu_over(srv.pid, args.seconds)
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        join_s = args.viewers * 0.15 + 5.0
        proc = ctx.Process(target=_viewer_process, args=(f"{srv.url}/watch/{stage}", args.viewers, join_s + args.seconds + 2.0, q))
        proc.start()
        deadline = time.monotonic() + join_s + 30
        while time.monotonic() < deadline:
            st = _stage_stats(await get_json(srv.url, "/stats"), stage)
            if st["viewers"] >= args.viewers and all(p["video_sent"] > 0 for p in st["program"]["per_viewer"]):
                break
            await asyncio.sleep(0.5)
        before = _stage_stats(await get_json(srv.url, "/stats"), stage)
        t0 = time.monotonic()
        watched = await _cpu_over(srv.pid, args.seconds)
        after = _stage_stats(await get_json(srv.url, "/stats"), stage)
        span = time.monotonic() - t0
        viewers = await asyncio.to_thread(q.get, True, 120)
        await asyncio.to_thread(proc.join, 30)
        await speaker.close()
    finally:
        srv.stop()
    sent0 = {p["viewer"]: p["video_sent"] for p in before["program"]["per_viewer"]}
    rates = sorted((p["video_sent"] - sent0.get(p["viewer"], 0)) / span for p in after["program"]["per_viewer"] if p["viewer"] in sent0)
    firsts = sorted(v["first_frame_s"] for v in viewers if v["first_frame_s"] is not None)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_desc(),
        "viewers": args.viewers,
        "seconds": args.seconds,
        "server_cpu_alone_pct": round(alone, 1),
        "server_cpu_watched_pct": round(watched, 1),
        "extra_cpu_per_viewer_pct": round((watched - alone) / args.viewers, 2),
        "sent_fps_min": round(rates[0], 2) if rates else None,
        "sent_fps_median": round(rates[len(rates) // 2], 2) if rates else None,
        "speaker_fps": after["fps"],
        "encoded_frames": after["program"]["video"]["frames"] - before["program"]["video"]["frames"],
        "keyframes": after["program"]["video"]["keyframes"],
        "encode_ms": after["program"]["video"]["encode_ms"],
        "first_frame_s_median": firsts[len(firsts) // 2] if firsts else None,
        "first_frame_s_max": firsts[-1] if firsts else None,
        "viewer_fps_min": min(v["fps"] for v in viewers) if viewers else None,
        "viewer_dropped": sum(p["video_dropped"] for p in after["program"]["per_viewer"]),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--viewers", type=int, default=50, help="viewers of the one stage")
    p.add_argument("--seconds", type=float, default=20.0, help="s of each measurement window")
    args = p.parse_args()
    if args.viewers < 1:
        p.error(f"--viewers must be >= 1, got {args.viewers}")
    netns_reexec()
    with tempfile.TemporaryDirectory(prefix="stage-bench-") as d:
        print(json.dumps(asyncio.run(measure(args, Path(d)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
