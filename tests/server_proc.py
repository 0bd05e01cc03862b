"""Run ``python -m server serve`` as a subprocess for end-to-end tests and the benchmark.

Used by tests/test_e2e.py, tests/test_bad_input.py and bench/latency.py. The process runs in
the caller's network namespace (tests/netns_run.sh gives 198.18.0.1).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(host: str) -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2 :].split()  # fields after "pid (comm) "


def proc_cpu_s(pid: int) -> float:
    """CPU time (user + system, s) of process ``pid`` and its live descendants (the session
    worker processes), from /proc/<pid>/stat (all threads)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))  # field 4: ppid
            except (OSError, ValueError, IndexError):
                continue
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = _stat(p)
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)
        todo.extend(children.get(p, []))
    return total


def terminate(proc: subprocess.Popen[bytes] | None, wait_s: float = 5.0) -> None:
    """Stop a helper server process (coturn, Janus): SIGTERM, then SIGKILL after ``wait_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def model_args() -> list[str]:
    """``[]`` (the trained default model) when its weights exist, else ``--model energy``.

    Lets the WebRTC tests run on a checkout whose model is not trained yet; the energy model
    still drives the mouth from the audio.
    """
    if (ROOT / "engines" / "weights" / "visemes.onnx").exists():
        return []
    print("note: engines/weights/visemes.onnx missing, the server runs --model energy")
    return ["--model", "energy"]


class ServerProcess:
    """``python -m server serve --host HOST --port PORT [args]``; log kept in ``log_path``."""

    def __init__(self, host: str, log_path: Path, args: list[str] | None = None) -> None:
        self.host = host
        self.port = free_port(host)
        self.log_path = log_path
        self.args = list(args or [])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """http://HOST:PORT (https:// when the server was given TLS)"""
        tls = "--self-signed" in self.args or "--tls-cert" in self.args
        return f"{'https' if tls else 'http'}://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self, timeout_s: float = 90.0) -> None:
        """Start it and wait until ``/healthz`` answers; RuntimeError (with the log) otherwise."""
        cmd = [sys.executable, "-m", "server", "serve", "--host", self.host, "--port", str(self.port)]
        if "--auth" not in self.args:  # tests of other things run without tokens (tests/test_access_server.py has them)
            cmd += ["--auth", "off"]
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed when the process ends
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([*cmd, *self.args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                unverified = ssl._create_unverified_context()  # a test server's self-signed certificate
                with urllib.request.urlopen(self.url + "/healthz", timeout=2, context=unverified) as r:
                    if json.loads(r.read()).get("ok"):
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not answer /healthz within {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGINT (aiohttp's graceful shutdown), then SIGKILL after 10 s; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def log_tail(self, n: int = 60) -> str:
        """The last ``n`` lines the server printed."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


async def get_json(base: str, path: str) -> Any:
    """GET ``base + path`` and parse the JSON body."""
    async with aiohttp.ClientSession() as http, http.get(base + path, timeout=aiohttp.ClientTimeout(total=10)) as r:
        r.raise_for_status()
        return await r.json()


async def wait_sessions(base: str, n: int, timeout_s: float = 10.0) -> int:
    """Poll ``/healthz`` until it reports ``n`` sessions; returns the last count seen."""
    deadline = time.monotonic() + timeout_s
    seen = -1
    while True:
        seen = int((await get_json(base, "/healthz"))["sessions"])
        if seen == n or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.1)


class DataDirServer(ServerProcess):
    """The real server on ``host``, its avatar data (photo uploads) and log under ``workdir``."""

    def __init__(self, host: str, workdir: Path) -> None:
        super().__init__(host, workdir / "server.log", ["--data-dir", str(workdir / "data")])
