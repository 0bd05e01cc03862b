"""Whole-path latency benchmark: what a person sees, by segment, over real WebRTC.

It starts the server on the private test address and N headless clients (``avatar client``,
aiortc) at once, each speaking real speech in real time. Every client stamps the frames it
receives and reports them back (control ``frame_times``); after ``--seconds`` the server's
``/stats`` says, per session, the whole path (a microphone frame captured → the client
receiving the avatar frame that reflects it) and its segments (server/media/timing.py
``SEGMENTS``). The client's own figure (its microphone frame leaving its track → that frame
arriving, on its clock alone) is printed beside it as a cross-check. aiortc presents nothing,
so its ``client`` segment is 0 and its ``downlink`` includes the client's jitter buffer and
VP8 decode; a browser's are in tests/test_browser.py.

Prints JSON: per session and, over the sessions, the mean of their p50s and p95s, ms.

``--onset`` checks the figure independently, from the video itself: one call of real
utterances each after 1.2 s of silence, the client measuring the mouth's openness in every
frame it receives; per utterance the mouth's onset minus the speech's onset in the sent
microphone audio (server/sync.py), minus the same offset in ``avatar render`` of the same
audio (in sync by construction: the onset detector's own bias cancels). The median of those
delays is what a person sees the mouth lag by; it is printed beside the product's whole path.

Usage (re-executes itself under tests/netns_run.sh, which needs root)::

    .venv/bin/python bench/whole_path.py [--sessions 1] [--seconds 20] [--json out.json]
    .venv/bin/python bench/whole_path.py --onset [--seconds 120]
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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.latency import HOST, machine_desc, netns_reexec, speech_wav  # noqa: E402
from server.client import AvatarClient, load_audio  # noqa: E402
from server.media.timing import SEGMENTS, WHOLE_PATH  # noqa: E402
from tests.server_proc import ServerProcess, get_json, model_args, wait_sessions  # noqa: E402

SETTLE_S = 2.0  # s of each call not waited for before /stats is read (the last reports in flight)


async def one_call(base: str, wav: Path, seconds: float) -> tuple[AvatarClient, dict[str, Any]]:
    """One call of ``seconds``; returns the client (closed) and its session's /stats entry,
    read shortly before the end of the call."""
    client = AvatarClient(base, load_audio(wav), duration=seconds)
    try:
        await client.start()
        await asyncio.sleep(max(1.0, seconds - SETTLE_S))
        stats = await get_json(base, "/stats")
        await client.wait_done()
    finally:
        await client.close()
    mine = [s for s in stats["sessions"] if s["session"] == client.stats.session]
    if not mine:
        raise SystemExit(f"session {client.stats.session} is missing from /stats: {stats}")
    return client, mine[0]


def _mean(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return round(statistics.fmean(v), 1) if v else None


def session_row(client: AvatarClient, s: dict[str, Any]) -> dict[str, Any]:
    """What one session measured, ms."""
    st = client.stats
    segs = s.get("whole_path_segments_ms") or {}
    return {
        "session": s["session"],
        "whole_path_ms": {k: s["whole_path_ms"].get(k) for k in ("p50", "p95", "n")},
        "segments_ms": {name: {k: segs.get(name, {}).get(k) for k in ("p50", "p95")} for name in SEGMENTS},
        "server_latency_ms": {k: s["latency_ms"].get(k) for k in ("p50", "p95")},
        "client_whole_path_ms": {"p50": None if st.whole_path_ms_p50 is None else round(st.whole_path_ms_p50, 1),
                                 "p95": None if st.whole_path_ms_p95 is None else round(st.whole_path_ms_p95, 1),
                                 "n": st.whole_path_n},
        "clock_offset_ms": None if st.clock_offset_ms is None else round(st.clock_offset_ms, 2),
        "fps": s.get("fps"),
    }


def overall(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the sessions: the mean of their p50s and of their p95s, per figure."""
    def pair(get: Any) -> dict[str, float | None]:
        return {"p50": _mean([get(r)["p50"] for r in rows]), "p95": _mean([get(r)["p95"] for r in rows])}

    return {
        "whole_path_ms": pair(lambda r: r["whole_path_ms"]),
        "segments_ms": {name: pair(lambda r, n=name: r["segments_ms"][n]) for name in SEGMENTS},
        "server_latency_ms": pair(lambda r: r["server_latency_ms"]),
        "client_whole_path_ms": pair(lambda r: r["client_whole_path_ms"]),
    }


async def run(sessions: int, seconds: float) -> dict[str, Any]:
    """One round of ``sessions`` concurrent calls; the report."""
    with tempfile.TemporaryDirectory(prefix="whole-path-") as d:
        tmp = Path(d)
        wav = speech_wav(tmp / "speech.wav", seconds)
        cfg = tmp / "bench.toml"
        cfg.write_text(f"[server]\nmax_sessions = {max(16, sessions)}\nmax_sessions_per_client = {max(8, sessions)}\n")
        srv = ServerProcess(HOST, tmp / "server.log", ["--config", str(cfg), "--data-dir", str(tmp / "data"), *model_args()])
        srv.start()
        try:
            results = await asyncio.gather(*(one_call(srv.url, wav, seconds) for _ in range(sessions)))
            await wait_sessions(srv.url, 0)
        finally:
            srv.stop()
    rows = [session_row(c, s) for c, s in results]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_desc(),
        "sessions": sessions,
        "seconds": seconds,
        "spans": {"whole_path": WHOLE_PATH, **SEGMENTS,
                  "client_whole_path": "the client's own figure: its microphone frame leaving its track → the frame arriving (its clock only)"},
        "overall": overall(rows),
        "per_session": rows,
    }


async def onset_check(seconds: float) -> dict[str, Any]:
    """One call of separated utterances: the mouth-onset delay per utterance against the whole path."""
    import numpy as np

    from bench.stage_sync import compare, render_offsets, utterance_wav
    from server.client import MIC_RATE, load_mouth_measure
    from server.sync import av_offsets

    with tempfile.TemporaryDirectory(prefix="whole-path-onset-") as d:
        tmp = Path(d)
        wav = utterance_wav(tmp / "utterances.wav", seconds / 60.0)
        srv = ServerProcess(HOST, tmp / "server.log", ["--data-dir", str(tmp / "data"), *model_args()])
        srv.start()
        try:
            samples = load_audio(wav)
            client = AvatarClient(srv.url, samples, duration=samples.size / MIC_RATE + 1.0, measure_mouth=load_mouth_measure())
            try:
                await client.start()
                await asyncio.sleep(max(1.0, samples.size / MIC_RATE - SETTLE_S))
                stats = await get_json(srv.url, "/stats")
                await client.wait_done()
            finally:
                await client.close()
        finally:
            srv.stop()
        times, mouth = client.stats.mouth_series()  # arrival s since the first sample sent
        stream = av_offsets(samples.astype(np.float64) / 32768.0, MIC_RATE, 0.0, times, mouth)
        ref = render_offsets(wav, tmp)
    delays = [1e3 * x for _, x in compare(stream, ref)]
    sess = next(s for s in stats["sessions"] if s["session"] == client.stats.session)
    whole = sess["whole_path_ms"].get("p50")
    onset = round(statistics.median(delays), 1) if delays else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_desc(),
        "utterances": len(stream),
        "paired_with_render": len(delays),
        "mouth_onset_delay_ms": {"p50": onset, "p25": round(float(np.percentile(delays, 25)), 1) if delays else None,
                                 "p75": round(float(np.percentile(delays, 75)), 1) if delays else None},
        "whole_path_ms": {k: sess["whole_path_ms"].get(k) for k in ("p50", "p95", "n")},
        "client_whole_path_ms_p50": None if client.stats.whole_path_ms_p50 is None else round(client.stats.whole_path_ms_p50, 1),
        "agree_within_one_frame": None if onset is None or whole is None else abs(onset - float(whole)) <= 1000.0 / 30.0,
    }


def main() -> None:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=1, help="concurrent calls")
    p.add_argument("--seconds", type=float, default=20.0, help="s of microphone per call")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.add_argument("--onset", action="store_true", help="check against the mouth onsets in the received video (one call)")
    args = p.parse_args()
    if args.sessions < 1 or args.seconds < 5:
        raise SystemExit(f"--sessions must be >= 1 and --seconds >= 5, got {args.sessions}, {args.seconds}")
    netns_reexec()
    report = asyncio.run(onset_check(args.seconds) if args.onset else run(args.sessions, args.seconds))
    text = json.dumps(report, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
