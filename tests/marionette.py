"""A minimal Marionette client: drives Debian's stock Firefox (``firefox-esr --marionette``).

Playwright can only drive its own patched Firefox builds, which cannot be downloaded here;
stock Firefox speaks Marionette, Mozilla's WebDriver-like protocol over TCP. Each message is
``<byte length>:<JSON>``; a command is ``[0, id, name, params]`` and its reply
``[1, id, error, result]``. Only what the browser tests need is implemented.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

FIREFOX = Path("/usr/bin/firefox-esr")

# Quiet, offline, headless-friendly defaults; the test adds its own (media, secure origins).
BASE_PREFS: dict[str, Any] = {
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "extensions.update.enabled": False,
    "media.autoplay.default": 0,  # allow audible autoplay and Web Audio without a gesture
    "media.autoplay.block-webaudio": False,
}


class MarionetteError(RuntimeError):
    """Firefox failed to start, or a command returned an error (its message is kept)."""


class NullAudio:
    """A private PulseAudio server with only a null sink, for browsers on a machine without sound.

    Firefox's AudioContext stays ``suspended`` (its clock never runs) when it can open no audio
    output; with this server (``PULSE_SERVER`` = :attr:`address`) Web Audio runs in real time.
    """

    def __init__(self, workdir: Path, timeout_s: float = 10.0) -> None:
        exe = shutil.which("pulseaudio")
        if exe is None:
            raise MarionetteError("pulseaudio is missing: install Debian's pulseaudio (make setup-test)")
        self.socket = workdir / "pulse-native"
        self.log_path = workdir / "pulseaudio.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [exe, "-n", "--daemonize=no", "--exit-idle-time=-1", "--disable-shm=yes", "--use-pid-file=no",
             "--system=false", "-L", "module-null-sink sink_name=null",
             "-L", f"module-native-protocol-unix socket={self.socket} auth-anonymous=1"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir,
            env={**os.environ, "HOME": str(workdir)},
        )
        deadline = time.monotonic() + timeout_s
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise MarionetteError(f"pulseaudio did not start: {self.log_path.read_text(errors='replace')[-1000:]}")
            time.sleep(0.05)
        self.address = f"unix:{self.socket}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            _reap(self.proc, 5.0)
        self._log.close()


def _reap(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for ``proc`` to exit, then kill it."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pref_line(name: str, value: Any) -> str:
    return f"user_pref({json.dumps(name)}, {json.dumps(value)});\n"


class Firefox:
    """A headless Firefox in a fresh profile under ``workdir``, and a Marionette session on it."""

    def __init__(self, workdir: Path, prefs: dict[str, Any], timeout_s: float = 60.0,
                 env: dict[str, str] | None = None) -> None:
        if not FIREFOX.exists():
            raise MarionetteError(f"{FIREFOX} is missing: install Debian's firefox-esr (make setup-test)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        self.profile = workdir / "ff-profile"
        self.profile.mkdir(parents=True, exist_ok=True)
        all_prefs = {**BASE_PREFS, **prefs, "marionette.port": port}
        (self.profile / "user.js").write_text("".join(_pref_line(k, v) for k, v in all_prefs.items()))
        self.log_path = workdir / "firefox.log"
        full_env = {**os.environ, "MOZ_HEADLESS": "1", "MOZ_CRASHREPORTER_DISABLE": "1", **(env or {})}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [str(FIREFOX), "--headless", "--marionette", "--no-remote", "--profile", str(self.profile)],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
        )
        self._sock: socket.socket | None = None
        self._buf = b""
        self._id = 0
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise MarionetteError(f"firefox did not open Marionette on port {port}: {self.log_tail()}") from None
                time.sleep(0.2)
        hello = self._read()
        if not isinstance(hello, dict) or hello.get("marionetteProtocol") != 3:
            self.close()
            raise MarionetteError(f"unexpected Marionette greeting: {hello!r}")
        self.command("WebDriver:NewSession", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": True}}})

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _read(self) -> Any:
        assert self._sock is not None
        while b":" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise MarionetteError(f"Marionette connection closed: {self.log_tail()}")
            self._buf += chunk
        head, _, rest = self._buf.partition(b":")
        size = int(head)
        while len(rest) < size:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise MarionetteError("Marionette connection closed mid-message")
            rest += chunk
        self._buf = rest[size:]
        return json.loads(rest[:size])

    def command(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """Send one command; returns its result, raises MarionetteError on an error reply."""
        if self._sock is None:
            raise MarionetteError("not connected")
        self._id += 1
        body = json.dumps([0, self._id, name, params or {}]).encode()
        self._sock.sendall(str(len(body)).encode() + b":" + body)
        while True:
            msg = self._read()
            if isinstance(msg, list) and len(msg) == 4 and msg[0] == 1 and msg[1] == self._id:
                break
        if msg[2] is not None:
            err = msg[2]
            raise MarionetteError(f"{name}: {err.get('error')}: {err.get('message')}")
        return msg[3]

    def navigate(self, url: str) -> None:
        self.command("WebDriver:Navigate", {"url": url})

    def js(self, body: str, *args: Any) -> Any:
        """Run ``body`` (a function body using ``arguments`` and ``return``) in the page."""
        return self.command("WebDriver:ExecuteScript", {"script": body, "args": list(args)}).get("value")

    def wait_for(self, body: str, timeout_s: float = 20.0, *args: Any) -> Any:
        """Poll ``body`` every 50 ms until it returns something truthy; returns it."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.js(body, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise MarionetteError(f"timed out after {timeout_s} s waiting for: {body}")
            time.sleep(0.05)

    def close(self) -> None:
        """Quit Firefox (politely, then by force) and remove the profile."""
        if self._sock is not None:
            try:
                self.command("Marionette:Quit", {"flags": ["eForceQuit"]})
            except (MarionetteError, OSError):
                pass
            self._sock.close()
            self._sock = None
        _reap(self.proc, 10.0)
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
