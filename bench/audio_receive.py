"""Audio receive delay: RTP packet arrival → frame released to the decoder, aiortc's jitter
buffer (``[audio] jitter = "aiortc"``, a fixed 4-packet prefetch) against the adaptive one
(server/media/jitter.py), on a clean link and on an impaired one.

Every call goes through tests/udp_relay.py (the clean link too, so both see the same extra
hop); the impaired link gives the client → server RTP 2 % loss, 0..30 ms jitter and 2 % of
packets held 20 ms more (seeded per call). For each buffer, one server subprocess; per call,
the session's own ``/stats`` ``jitter`` entry at the end of the call (release delay
p50/p95/max over the last 500 packets, loss, concealment), the session's audio-in → frame-out
latency (which starts *after* the buffer), and the client-measured audio → visible-mouth lag
(cross-correlation, with ``--measure-mouth``).

Usage (re-executes itself under tests/netns_run.sh, which needs root)::

    .venv/bin/python bench/audio_receive.py [--seconds 10] [--repeats 2] [--measure-mouth] [--json out.json]
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

from bench.latency import machine_desc, netns_reexec, speech_wav  # noqa: E402
from server.client import load_audio  # noqa: E402
from tests.server_proc import ServerProcess, model_args, wait_sessions  # noqa: E402
from tests.udp_relay import Impairment, call_through_relay  # noqa: E402

HOST = "198.18.0.1"
CLIENT_IP = "198.18.0.2"
LINKS = {"clean": Impairment(), "impaired": Impairment(loss=0.02, jitter_ms=30.0, reorder=0.02, reorder_ms=20.0)}


async def one_call(url: str, wav: Path, link: str, seed: int, seconds: float, mouth: bool) -> dict[str, Any]:
    """One relayed call; the numbers of its last stats sample."""
    base = LINKS[link]
    imp = Impairment(base.loss, base.jitter_ms, base.reorder, base.reorder_ms, seed)
    st, samples, relay = await call_through_relay(url, load_audio(wav), imp, duration=seconds, client_ip=CLIENT_IP, measure_mouth=mouth)
    await wait_sessions(url, 0)
    if not samples:
        raise RuntimeError(f"no /stats sample with a jitter entry during the {link} call")
    last = samples[-1]
    jit = last["jitter"]
    return {
        "link": link,
        "seed": seed,
        "relay": relay.stats(),
        "delay_ms_p50": jit["delay_ms"]["p50"],
        "delay_ms_p95": jit["delay_ms"]["p95"],
        "delay_ms_max": jit["delay_ms_max"],
        "target_ms_max": max(s["jitter"]["target_ms"] for s in samples),
        "lost": jit.get("lost"),
        "concealed": jit.get("concealed"),
        "late": jit.get("late"),
        "audio_frames": last["audio_frames"],
        "audio_drops": last["audio_drops"],
        "mic_frames_sent": st.mic_frames_sent,
        "server_latency_ms_p50": last["latency_ms"]["p50"],
        "whole_path_ms_p50": (last.get("whole_path_ms") or {}).get("p50"),  # capture → frame received (/stats)
        "whole_path_ms_p95": (last.get("whole_path_ms") or {}).get("p95"),
        "mouth_lag_ms": None if st.mouth_lag_s is None else round(st.mouth_lag_s * 1000.0, 1),
        "mouth_corr": None if st.mouth_corr is None else round(st.mouth_corr, 3),
        "fps_mean": None if st.fps_mean is None else round(st.fps_mean, 1),
    }


async def run_mode(mode: str, d: Path, wav: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """All calls against one server with ``[audio] jitter = mode``."""
    cfg = d / f"{mode}.toml"
    cfg.write_text(f'[audio]\njitter = "{mode}"\n')
    srv = ServerProcess(HOST, d / f"server-{mode}.log", ["--config", str(cfg), "--data-dir", str(d / "data"), *model_args()])
    srv.start()
    rows = []
    try:
        for link in args.links:
            for r in range(args.repeats):
                row = await one_call(srv.url, wav, link, 100 + r, args.seconds, args.measure_mouth)
                row["mode"] = mode
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        srv.stop()
    return rows


def _med(xs: list[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return round(statistics.median(vals), 1) if vals else None


def print_table(rows: list[dict[str, Any]], modes: list[str]) -> None:
    """Medians over the repeats, one line per buffer and link."""
    cols = ["delay_ms_p50", "delay_ms_p95", "delay_ms_max", "target_ms_max", "lost", "concealed", "late",
            "audio_drops", "server_latency_ms_p50", "whole_path_ms_p50", "whole_path_ms_p95", "mouth_lag_ms", "fps_mean"]
    print("| buffer | link | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for mode in modes:
        for link in LINKS:
            sel = [r for r in rows if r["mode"] == mode and r["link"] == link]
            if sel:
                print(f"| {mode} | {link} | " + " | ".join(str(_med([r.get(c) for r in sel])) for c in cols) + " |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="s of microphone per call")
    p.add_argument("--repeats", type=int, default=2, help="calls per buffer and link (seeds 100, 101, ...)")
    p.add_argument("--measure-mouth", action="store_true", help="also measure the audio → mouth lag on the client")
    p.add_argument("--json", type=Path, default=None, help="write every call's numbers here")
    p.add_argument("--links", nargs="+", choices=list(LINKS), default=list(LINKS), help="links to call over")
    p.add_argument("--modes", nargs="+", choices=["aiortc", "adaptive"], default=["aiortc", "adaptive"], help="buffers to compare")
    args = p.parse_args()
    netns_reexec()
    t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        wav = speech_wav(d / "speech.wav", args.seconds)

        async def run() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            for mode in args.modes:
                rows += await run_mode(mode, d, wav, args)
            return rows

        rows = asyncio.run(run())
    print(f"\n{t0}, {machine_desc()}, {args.seconds:g} s calls, {args.repeats} per cell, medians:")
    print_table(rows, args.modes)
    if args.json is not None:
        args.json.write_text(json.dumps({"date": t0, "machine": machine_desc(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
