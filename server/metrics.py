"""Prometheus metrics (prometheus-client) for ``GET /metrics`` (admin only).

Gauges are refreshed from the workers' stats at each scrape (sessions, stages, viewers, frame
rates, the server-side, whole-path and whole-stage latencies, drops, worker memory and CPU); counters count
what the server process itself sees (sessions started, errors by code).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _proc(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, resident bytes) of process ``pid`` from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            rss_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, float(rss_pages * PAGE)


class Metrics:
    """One registry per application (no module globals)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.sessions = Gauge("avatar_sessions", "live calls (accepted offers)", registry=r)
        self.stages = Gauge("avatar_stages", "live stages", registry=r)
        self.viewers = Gauge("avatar_viewers", "viewers of all stages", registry=r)
        self.fps_min = Gauge("avatar_session_fps_min", "lowest video frame rate among live calls, frames/s", registry=r)
        self.latency = Gauge("avatar_latency_ms", "server latency: mic frame arrival to the frame reflecting it, ms (worst call)",
                             ["quantile"], registry=r)
        self.whole_path = Gauge("avatar_whole_path_ms", "whole path: mic capture to the client presenting the frame reflecting it, ms (worst call)",
                                ["quantile"], registry=r)
        self.audio_delay = Gauge("avatar_stage_audio_delay_ms", "viewers' audio delay (the video's latency), ms (largest)", registry=r)
        self.audio_drops = Gauge("avatar_audio_drops", "mic frames dropped by full buffers, all live calls", registry=r)
        self.viewer_drops = Gauge("avatar_viewer_video_drops", "video packets dropped by slow viewers, all live stages", registry=r)
        self.worker_rss = Gauge("avatar_worker_rss_bytes", "resident memory of a session worker", ["worker"], registry=r)
        self.worker_cpu = Gauge("avatar_worker_cpu_seconds", "CPU time used by a session worker", ["worker"], registry=r)
        self.worker_restarts = Gauge("avatar_worker_restarts", "session workers restarted after a crash", registry=r)
        self.started = Counter("avatar_sessions_started", "calls accepted since start", registry=r)
        self.errors = Counter("avatar_errors", "errors sent to clients, by code", ["code"], registry=r)

    def update(self, parts: list[dict[str, Any]], restarts: int) -> None:
        """Refresh the gauges from the workers' stats (``sessions_summary`` dicts)."""
        sessions = [s for p in parts for s in p.get("sessions", [])]
        live = [s for s in sessions if s.get("program") is not None]
        self.sessions.set(len(live))
        self.stages.set(len(live))
        self.viewers.set(sum(int(s.get("viewers", 0)) for s in live))
        self.fps_min.set(min((float(s.get("fps", 0.0)) for s in live), default=0.0))
        for q in ("p50", "p95"):
            vals = [s["latency_ms"][q] for s in live if isinstance(s.get("latency_ms"), dict) and s["latency_ms"].get(q) is not None]
            self.latency.labels(quantile="0.5" if q == "p50" else "0.95").set(max(vals, default=0.0))
            whole = [s["whole_path_ms"][q] for s in live if isinstance(s.get("whole_path_ms"), dict) and s["whole_path_ms"].get(q) is not None]
            self.whole_path.labels(quantile="0.5" if q == "p50" else "0.95").set(max(whole, default=0.0))
        self.audio_delay.set(max((float(s["program"].get("audio_delay_ms", 0.0)) for s in live), default=0.0))
        self.audio_drops.set(sum(int(s.get("audio_drops", 0)) for s in sessions))
        self.viewer_drops.set(sum(int(v.get("video_dropped", 0)) for s in live for v in s["program"].get("per_viewer", [])))
        self.worker_restarts.set(restarts)
        for p in parts:
            pid, index = p.get("worker_pid"), p.get("worker")
            if isinstance(pid, int):
                got = _proc(pid)
                if got is not None:
                    self.worker_cpu.labels(worker=str(index)).set(got[0])
                    self.worker_rss.labels(worker=str(index)).set(got[1])

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
