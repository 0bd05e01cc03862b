"""JSON logs: the formatter, and a real server whose every log line (server and worker) is JSON."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from server.client import run_client
from server.logs import JsonFormatter, setup_logging
from tests.server_proc import ServerProcess, model_args, wait_sessions

PRINTED = ("avatar server: open", "access tokens required", "TLS certificate")  # the start-up lines for people


def _record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    rec = logging.LogRecord("server.app", logging.WARNING, __file__, 1, msg, args, info)
    rec.__dict__.update(extra)
    return rec


def test_json_formatter_one_object_per_line() -> None:
    f = JsonFormatter("worker3")
    d = json.loads(f.format(_record("client %s sent %d bad messages", "198.18.0.2", 3, sid="s1-ab", cost=object())))
    assert d["level"] == "WARNING" and d["logger"] == "server.app" and d["process"] == "worker3"
    assert d["msg"] == "client 198.18.0.2 sent 3 bad messages" and d["sid"] == "s1-ab"
    assert d["ts"].endswith("Z") and "T" in d["ts"] and isinstance(d["cost"], str)
    line = f.format(_record("failed\nacross lines", exc=True))
    assert "\n" not in line  # a traceback stays inside one JSON line
    d = json.loads(line)
    assert d["msg"] == "failed\nacross lines" and "ValueError: boom" in d["exc"]


def test_setup_logging_names_a_bad_format() -> None:
    with pytest.raises(ValueError, match="'xml'"):
        setup_logging("xml")


async def test_server_and_worker_log_json(netns: str, speech_wav: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nworkers = 1\n")
    srv = ServerProcess(netns, tmp_path / "server.log",
                        ["--config", str(cfg), "--log-format", "json", "--data-dir", str(tmp_path / "d"), *model_args()])
    srv.start()
    try:
        st = await run_client(srv.url, speech_wav, None, None, duration=2.0)
        assert st.frames_received > 20
        assert await wait_sessions(srv.url, 0, timeout_s=20) == 0
    finally:
        srv.stop()
    records = []
    for line in (tmp_path / "server.log").read_text().splitlines():
        if not line.strip() or line.startswith(PRINTED):
            continue
        records.append(json.loads(line))  # anything else must be one JSON object
    processes = {r["process"] for r in records}
    assert {"server", "worker0"} <= processes, processes
    assert any(r["logger"] == "server.session" or "session" in r["msg"] for r in records if r["process"] == "worker0"), records
    assert all(r["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") for r in records)
