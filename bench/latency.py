"""Latency / load benchmark: one server, N concurrent headless clients speaking real speech.

For each N (default 1, 2, 4, 8) it starts N calls at once against a server subprocess on the
private test address, each playing the same speech WAV in real time, and prints per-session
numbers: server-reported audio-in -> frame-out latency p50/p95, received fps (mean, min over
1 s windows), the fps each session's server track sent (from /stats), first-frame time, audio -> visible-mouth lag (client-measured, with
``--measure-mouth``), and CPU per session (server process CPU time from /proc/<pid>/stat over
the round's wall time, divided by N; the clients' CPU likewise).

Usage (re-executes itself under tests/netns_run.sh, which needs root)::

    .venv/bin/python bench/latency.py [--counts 1,2,4,8] [--seconds 10] [--json out.json]
                                      [--cpu-hog 0.5]  # a noisy neighbour busy 50 % of one core
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
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

from server.client import ClientError, ClientStats, run_client  # noqa: E402
from server.config import load_config  # noqa: E402
from tests.server_proc import ServerProcess, get_json, model_args, proc_cpu_s, wait_sessions  # noqa: E402

HOST = "198.18.0.1"
DEV_SPEECH = ROOT.parent / "shared" / "data" / "dev-speech" / "audio"
ESPEAK_TEXT = (
    "The quick brown fox jumps over the lazy dog. Peter Piper picked a peck of pickled peppers. "
    "She sells sea shells by the sea shore. How much wood would a woodchuck chuck. "
    "Around the rugged rocks the ragged rascal ran. Unique New York, you know you need unique New York."
)


def netns_reexec() -> None:
    """Re-run the running script (``sys.argv[0]``, whichever bench script imported this) inside
    tests/netns_run.sh unless already in the private namespace."""
    if os.environ.get("AVATAR_NETNS") == "1":
        return
    runner = ROOT / "tests" / "netns_run.sh"
    os.execv(str(runner), [str(runner), sys.executable, str(Path(sys.argv[0]).resolve()), *sys.argv[1:]])


def speech_wav(out: Path, seconds: float) -> Path:
    """About ``seconds`` of real speech (dev-speech utterances, 0.3 s apart) as 16 kHz mono WAV.

    Falls back to espeak-ng when the shared recordings are absent. Written to ``out`` (a temp
    file: the recordings are never copied into the repository).
    """
    import soundfile as sf

    from engines.audio import decode_audio

    files = sorted(DEV_SPEECH.glob("*.wav"))
    parts: list[np.ndarray] = []
    if files:
        gap = np.zeros(int(0.3 * 16000), np.float32)
        total = 0
        while total < seconds * 16000:
            for f in files:
                x, sr = sf.read(str(f), dtype="float32", always_2d=True)
                if sr != 16000:
                    raise ValueError(f"{f} is {sr} Hz, expected 16000")
                parts += [x[:, 0], gap]
                total += x.shape[0] + gap.size
                if total >= seconds * 16000:
                    break
    else:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise SystemExit(f"no speech: {DEV_SPEECH} is missing and espeak-ng is not installed")
        tmp = out.with_suffix(".espeak.wav")
        subprocess.run([exe, "-v", "en-us", "-w", str(tmp), ESPEAK_TEXT], check=True)
        parts.append(decode_audio(tmp))
        tmp.unlink()
    audio = np.concatenate(parts)[: int(seconds * 16000)]
    sf.write(str(out), audio, 16000, subtype="PCM_16")
    return out


def _med(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return statistics.median(v) if v else None


def _max(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return max(v) if v else None


def _min(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return min(v) if v else None


async def poll_stats(base: str, out: list[dict[str, Any]], stop: asyncio.Event) -> None:
    """Sample the server's /stats once a second into ``out`` until ``stop``."""
    while not stop.is_set():
        try:
            snap = await get_json(base, "/stats")
            snap["_t"] = time.monotonic()  # when this sample was taken (s, this process's clock)
            out.append(snap)
        except Exception as e:  # the round goes on; the sample is just missing
            out.append({"error": str(e)})
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass


def server_sent_fps(samples: list[dict[str, Any]], min_span_s: float = 3.0) -> dict[str, float]:
    """Per session id: the frames its server track sent per second, from the /stats samples
    (``frames`` at the first and the last sample that show the session connected and sending,
    over the time between them). What the server delivered, whatever the co-located clients
    manage to receive. Sessions seen over less than ``min_span_s`` are left out."""
    seen: dict[str, list[tuple[float, int]]] = {}
    for snap in samples:
        t = snap.get("_t")
        if t is None:
            continue
        for s in snap.get("sessions", []):
            if s.get("state") == "connected" and int(s.get("frames", 0)) > 0:
                seen.setdefault(str(s["session"]), []).append((float(t), int(s["frames"])))
    out = {}
    for sid, pts in seen.items():
        (t0, f0), (t1, f1) = pts[0], pts[-1]
        if t1 - t0 >= min_span_s:
            out[sid] = (f1 - f0) / (t1 - t0)
    return out


async def run_round(srv: ServerProcess, wav: Path, n: int, measure_mouth: bool, full_size: str) -> dict[str, Any]:
    """N concurrent calls; returns per-session stats and CPU numbers. ``full_size`` ("WxH"): the
    configured video size, against which frames sent smaller under overload are counted."""
    base = srv.url
    if await wait_sessions(base, 0, timeout_s=15.0) != 0:
        raise RuntimeError("sessions from the previous round are still open")
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    poller = asyncio.create_task(poll_stats(base, samples, stop))
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = proc_cpu_s(srv.pid), time.monotonic()
    results = await asyncio.gather(
        *(run_client(base, wav, None, None, measure_mouth=measure_mouth) for _ in range(n)),
        return_exceptions=True,
    )
    cpu1, wall1 = proc_cpu_s(srv.pid), time.monotonic()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    stop.set()
    await poller
    client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    wall = wall1 - wall0
    ok = [r for r in results if isinstance(r, ClientStats)]
    failed = [f"{type(r).__name__}: {r}" for r in results if not isinstance(r, ClientStats)]
    server_sessions = [s for snap in samples for s in snap.get("sessions", [])]
    sent_fps = server_sent_fps(samples)
    return {
        "n": n,
        "wall_s": wall,
        "server_cpu_s": cpu1 - cpu0,
        "server_cpu_per_session": (cpu1 - cpu0) / wall / n,  # fraction of one core
        "client_cpu_per_session": client_cpu / wall / n,
        "failed": failed,
        "latency_ms_p50": _med([r.server_latency_ms_p50 for r in ok]),
        "latency_ms_p95": _max([r.server_latency_ms_p95 for r in ok]),
        "fps_mean": statistics.mean([r.fps_mean for r in ok if r.fps_mean is not None] or [0.0]),
        "fps_min_session": _min([r.fps_mean for r in ok]),  # the slowest session's mean fps
        "fps_min_1s": _min([r.fps_min_1s for r in ok]),
        # the slowest session's frame rate as its server track sent it (from /stats), against
        # which "slowest" shows what the clients, on the same cores, managed to receive
        "server_fps_min_session": _min(list(sent_fps.values())),
        "server_fps": sent_fps,
        # the lowest share of a session's frames received at the configured size (the rest were
        # rendered smaller while the server was overloaded: video.adapt)
        "full_size_share": _min([r.frame_sizes.get(full_size, 0) / r.frames_received for r in ok if r.frames_received]),
        "first_frame_s": _max([r.first_frame_after_audio_s for r in ok]),
        "connect_s": _max([r.connect_s for r in ok]),
        "offer_to_first_frame_s": _max([r.offer_to_first_frame_s for r in ok]),
        "mouth_lag_s": _med([r.mouth_lag_s for r in ok]),
        "loadavg_1m": os.getloadavg()[0],  # whole machine, at the round's end
        "audio_drops": max([int(s.get("audio_drops", 0)) for s in server_sessions] or [0]),
        "skipped_ticks": max([int(s.get("skipped_ticks", 0)) for s in server_sessions] or [0]),
        # per session: the summary plus every frame's arrival time (s after its first audio),
        # to see where frames went missing (start-up, mid-call)
        "sessions": [{**r.summary(), "frame_t": [round(f.t, 4) for f in r.frames]} for r in ok],
        "server_stats": samples,
    }


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(rounds: list[dict[str, Any]], machine: str, client_nice: int) -> None:
    print(f"\nmachine: {machine}; clients at nice +{client_nice}")
    head = (
        "  N | lat p50 ms | lat p95 ms | fps mean | slowest | sent slowest | fps min 1s | first frame s | offer->frame s | "
        "mouth lag s | full size | srv CPU/sess | cli CPU/sess | skipped | load | failed"
    )
    print(head)
    print("-" * len(head))
    for r in rounds:
        print(
            f"{r['n']:>3} | {fmt(r['latency_ms_p50'], '10.1f')} | {fmt(r['latency_ms_p95'], '10.1f')} | "
            f"{fmt(r['fps_mean'], '8.1f')} | {fmt(r['fps_min_session'], '7.1f')} | {fmt(r.get('server_fps_min_session'), '12.1f')} | "
            f"{fmt(r['fps_min_1s'], '10.1f')} | {fmt(r['first_frame_s'], '13.2f')} | "
            f"{fmt(r['offer_to_first_frame_s'], '14.2f')} | "
            f"{fmt(r['mouth_lag_s'], '11.2f'):>11} | {fmt(_pct(r.get('full_size_share')), '7.0f')} % | "
            f"{r['server_cpu_per_session'] * 100:10.0f} % | "
            f"{r['client_cpu_per_session'] * 100:10.0f} % | {r['skipped_ticks']:7d} | {r['loadavg_1m']:4.1f} | "
            f"{len(r['failed'])}"
        )
    print(
        "lat: server-reported audio-in -> frame-out (p50: median over sessions, p95: worst session); "
        "fps mean: over sessions; slowest: the lowest session's mean fps as received; "
        "sent slowest: the lowest session's fps as its server track sent it (/stats); fps min 1s: worst 1 s window of any session; first frame: worst session, after its first audio sample; "
        "offer->frame: worst session, offer sent to first video frame; "
        "full size: the lowest share of a session's frames at the configured size (the rest rendered smaller under overload); "
        "CPU: % of one core per session; skipped: most render ticks one session's server track skipped; "
        "load: the machine's 1-min load average (other work included)"
    )


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def machine_desc() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}"


HOG_PERIOD_S = 0.05  # s, one busy + sleep cycle of the --cpu-hog process


def start_cpu_hog(duty: float) -> subprocess.Popen[bytes]:
    """A process that keeps one core busy for ``duty`` (0..1) of every 50 ms at normal priority:
    a reproducible noisy neighbour (this VM's slow stretches), started before the server."""
    if not 0.0 < duty <= 1.0:
        raise ValueError(f"--cpu-hog {duty!r} outside (0, 1]")
    code = (
        "import time\n"
        f"busy, idle = {duty * HOG_PERIOD_S!r}, {(1.0 - duty) * HOG_PERIOD_S!r}\n"
        "while True:\n"
        "    t = time.perf_counter()\n"
        "    while time.perf_counter() - t < busy:\n"
        "        pass\n"
        "    if idle > 0:\n"
        "        time.sleep(idle)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


async def run_rounds(args: argparse.Namespace, d: Path, wav: Path) -> list[dict[str, Any]]:
    """Start the server, run every round, stop it. RuntimeError/ClientError abort."""
    hog = start_cpu_hog(args.cpu_hog) if args.cpu_hog else None
    try:
        return await _run_rounds(args, d, wav)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


async def _run_rounds(args: argparse.Namespace, d: Path, wav: Path) -> list[dict[str, Any]]:
    srv_args = ["--data-dir", str(d / "data")]
    if args.config:
        srv_args += ["--config", str(args.config)]
    srv_args += ["--model", args.model] if args.model else model_args()
    srv = ServerProcess(HOST, d / "server.log", srv_args)
    srv.start()
    if args.client_nice:
        # the server (already started) keeps its priority; the callers, which in real use run on
        # their own machines, only get the CPU the server leaves over
        os.nice(args.client_nice)
    video = load_config(args.config).video
    full_size = f"{video.width}x{video.height}"
    rounds = []
    try:
        for n in [int(x) for x in args.counts.split(",") if x.strip()]:
            print(f"round: {n} concurrent session(s) ...", flush=True)
            r = await run_round(srv, wav, n, args.measure_mouth, full_size)
            rounds.append(r)
            for f in r["failed"]:
                print(f"  failed: {f}", flush=True)
    except (ClientError, RuntimeError) as e:
        raise RuntimeError(f"{e}\n--- server log ---\n{srv.log_tail()}") from e
    finally:
        srv.stop()
    return rounds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="1,2,4,8", help="comma-separated session counts")
    p.add_argument("--seconds", type=float, default=10.0, help="s of speech per call")
    p.add_argument("--audio", type=Path, default=None, help="use this audio file instead")
    p.add_argument("--config", type=Path, default=None, help="server config TOML")
    p.add_argument("--model", default=None, help="server --model (default, energy, path)")
    p.add_argument("--measure-mouth", action=argparse.BooleanOptionalAction, default=False,
                   help="measure mouth openness per frame (client CPU) to report the mouth lag")
    p.add_argument("--client-nice", type=int, default=10,
                   help="niceness added to the clients (this process) after the server starts; 0: equal priority")
    p.add_argument("--cpu-hog", type=float, default=0.0,
                   help="also run a process keeping one core busy this fraction of the time (0..1), "
                   "to reproduce a noisy neighbour; 0: none")
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    args = p.parse_args()
    netns_reexec()
    with tempfile.TemporaryDirectory(prefix="avatar-bench-") as tmp:
        d = Path(tmp)
        wav = args.audio or speech_wav(d / "speech.wav", args.seconds)
        try:
            rounds = asyncio.run(run_rounds(args, d, wav))
        except RuntimeError as e:
            print(f"benchmark aborted: {e}")
            return 1
        machine = machine_desc()
        if args.cpu_hog:
            machine += f"; a CPU hog busy {args.cpu_hog:.0%} of one core"
        print_table(rounds, machine, args.client_nice)
        if args.json:
            out = {"machine": machine, "client_nice": args.client_nice, "cpu_hog": args.cpu_hog, "audio": str(args.audio or "dev-speech"), "seconds": args.seconds, "rounds": rounds}
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=1))
            print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
