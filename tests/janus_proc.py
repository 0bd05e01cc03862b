"""Debian's Janus (1.1.x) for the tests: a private config, the VideoRoom plugin and the HTTP API.

``JanusProcess(host, workdir).start()`` writes a minimal configuration (only the videoroom
plugin and the HTTP transport, on a free port of ``host``), starts ``janus`` and waits until its
``info`` request answers. ``JanusApi`` is a small client of its HTTP API for the tests'
subscribers (the product's own publisher is ``server.stage.publish.JanusPublisher``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.server_proc import free_port, terminate

JANUS = shutil.which("janus") or "/usr/bin/janus"
LIBDIR = Path("/usr/lib/x86_64-linux-gnu/janus")


class JanusProcess:
    """``janus -C <workdir>/janus.jcfg -F <workdir>`` with its log in the work folder."""

    def __init__(self, host: str, workdir: Path) -> None:
        if not Path(JANUS).exists():
            pytest.fail("Janus is not installed: make test installs Debian's janus")
        self.host = host
        self.port = free_port(host)
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The HTTP API base, http://HOST:PORT/janus."""
        return f"http://{self.host}:{self.port}/janus"

    def _write_config(self) -> None:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        plugins = ",".join(p.name for p in (LIBDIR / "plugins").glob("libjanus_*.so") if p.name != "libjanus_videoroom.so")
        transports = ",".join(p.name for p in (LIBDIR / "transports").glob("libjanus_*.so") if p.name != "libjanus_http.so")
        (d / "janus.jcfg").write_text(f"""general: {{
  configs_folder = "{d}"
  plugins_folder = "{LIBDIR / 'plugins'}"
  transports_folder = "{LIBDIR / 'transports'}"
  events_folder = "{LIBDIR / 'events'}"
  loggers_folder = "{LIBDIR / 'loggers'}"
  debug_level = 4
  admin_secret = "{secrets.token_hex(8)}"
}}
media: {{ rtp_port_range = "40000-49999" }}
nat: {{ nice_debug = false ignore_mdns = true }}
plugins: {{ disable = "{plugins}" }}
transports: {{ disable = "{transports}" }}
events: {{ broadcast = false }}
""")
        (d / "janus.transport.http.jcfg").write_text(f"""general: {{
  json = "plain"
  base_path = "/janus"
  http = true
  port = {self.port}
  interface = "{self._iface()}"
  https = false
}}
admin: {{ admin_http = false }}
""")
        (d / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")

    def _iface(self) -> str:
        out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if f" {self.host}/" in line:
                return line.split()[1]
        return "lo"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start Janus and wait for its HTTP API."""
        self._write_config()
        log = open(self.dir / "janus.log", "wb")  # noqa: SIM115 - closed when the process ends
        self.proc = subprocess.Popen([JANUS, "-C", str(self.dir / "janus.jcfg"), "-F", str(self.dir)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        body = json.dumps({"janus": "info", "transaction": "t"}).encode()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"janus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    if json.loads(r.read()).get("janus") == "server_info":
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"janus did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        terminate(self.proc)

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines Janus printed."""
        try:
            return "\n".join((self.dir / "janus.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


class JanusApi:
    """The few Janus HTTP API calls a test subscriber needs (one session, one handle)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.session = 0
        self.handle = 0

    async def _post(self, path: str, msg: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(self.url + path, json={**msg, "transaction": secrets.token_hex(4)}) as r:
            data: dict[str, Any] = await r.json(content_type=None)
        assert data.get("janus") != "error", data
        return data

    async def attach(self) -> None:
        """A session and a videoroom handle."""
        self.session = int((await self._post("", {"janus": "create"}))["data"]["id"])
        self.handle = int((await self._post(f"/{self.session}", {"janus": "attach", "plugin": "janus.plugin.videoroom"}))["data"]["id"])

    async def message(self, body: dict[str, Any], jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        """A videoroom request: its synchronous answer, or (after an ack) its event."""
        msg: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            msg["jsep"] = jsep
        data = await self._post(f"/{self.session}/{self.handle}", msg)
        if data.get("janus") == "success":
            return data
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            async with self.http.get(f"{self.url}/{self.session}?maxev=1") as r:
                ev = await r.json(content_type=None)
            for e in ev if isinstance(ev, list) else [ev]:
                if e.get("janus") == "event":
                    return dict(e)
            await asyncio.sleep(0.05)
        raise AssertionError(f"no Janus event for {body}")

    async def destroy(self) -> None:
        """End the session."""
        if self.session:
            await self._post(f"/{self.session}", {"janus": "destroy"})
