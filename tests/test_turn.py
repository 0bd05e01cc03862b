"""TURN: per-call credentials from a shared secret (coturn's use-auth-secret), and calls that
can only go through the relay.

The unit tests check the credential scheme, the config keys and the welcome message. The live
tests start Debian's coturn (``turnserver``) on 198.18.0.1:3478 inside the private network, the
real server with ``turn_secret``/``turn_urls`` and ``ice_transport_policy = "relay"``, and
Debian's chromium with the page: the call goes live through the relay (the selected ICE
candidate pair's local candidate is a relay candidate, coturn logged the allocation for the
call's username), and with a secret coturn does not share the page says it could not reach the
TURN relay, within seconds. Run inside the private network:
``tests/netns_run.sh .venv/bin/python -m pytest -q tests/test_turn.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.config import ServerConfig, load_config
from server.errors import ConfigError
from server.signaling import welcome
from server.turn import ice_servers, mint
from tests.server_proc import ServerProcess, model_args, terminate

ROOT = Path(__file__).resolve().parent.parent
TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
SECRET = "north-wind-and-the-sun-9f8e7d6c5b4a"
REALM = "avatar.test"
RELAY_PORTS = (49160, 49259)  # UDP ports coturn relays on (inside the private namespace)
LIVE_TIMEOUT_MS = 30_000
TURN_FAILED_BOUND_S = 10.0  # Start -> the page's turn_failed message (gathering gives up after 3 s)

# The candidate pair carrying the call: its state and both candidates' types (RTCStatsReport).
SELECTED_PAIR_JS = """async () => {
  const pc = window.avatarClient.pc;
  if (!pc) return null;
  const stats = await pc.getStats();
  let id = null;
  stats.forEach((r) => { if (r.type === 'transport' && r.selectedCandidatePairId) id = r.selectedCandidatePairId; });
  const pair = id ? stats.get(id) : null;
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
  return {state: pair.state, bytesReceived: pair.bytesReceived,
          local: local.candidateType, localAddress: local.address, relayProtocol: local.relayProtocol || null,
          remote: remote.candidateType, remoteAddress: remote.address};
}"""


# ------------------------------------------------------------------------------------- units


def test_mint_follows_coturn_rest_scheme() -> None:
    user, cred = mint("north-wind", "s1-abcdef", 3600, 1_700_000_000.7)
    assert user == "1700003600:s1-abcdef"
    # `printf %s 1700003600:s1-abcdef | openssl dgst -sha1 -hmac north-wind -binary | base64`
    assert cred == "5RSDmZMayGolXBR5Uk/vDgoLGa8="
    expect = base64.b64encode(hmac.new(b"north-wind", user.encode(), hashlib.sha1).digest()).decode()
    assert cred == expect
    assert mint("other-secret", "s1-abcdef", 3600, 1_700_000_000)[1] != cred
    assert mint("north-wind", "s2-abcdef", 3600, 1_700_000_000)[1] != cred


@pytest.mark.parametrize(("secret", "sid", "ttl", "needle"), [
    ("", "s1", 60, "secret"), ("x", "s1", 0, "> 0 s, got 0"), ("x", "a:b", 60, "':'"),
])
def test_mint_refuses_bad_input(secret: str, sid: str, ttl: int, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        mint(secret, sid, ttl, 0.0)


@pytest.mark.parametrize(("toml", "needle"), [
    ('turn_secret = "s"\n', "server.turn_urls must be at least one TURN URL"),
    ('turn_urls = ["turn:198.18.0.1:3478"]\n', "server.turn_secret must be set"),
    ('turn_secret = "s"\nturn_urls = ["stun:198.18.0.1:3478"]\n', "server.turn_urls must be a list of"),
    ('turn_secret = "s"\nturn_urls = "turn:a:3478"\nturn_ttl_s = 0\n', "server.turn_ttl_s must be an integer in 1..604800 s, got 0"),
    ('turn_urls = [3478]\n', "server.turn_urls must be a list of TURN URL strings"),
    ('ice_transport_policy = "relay"\n', "server.ice_transport_policy must be \"all\" unless a TURN server"),
    ('ice_transport_policy = "none"\n', "server.ice_transport_policy must be \"all\" or \"relay\", got 'none'"),
])
def test_turn_config_errors_name_the_key(tmp_path: Path, toml: str, needle: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[server]\n" + toml)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(p)


def test_default_config_has_turn_off() -> None:
    cfg = load_config().server
    assert (cfg.turn_secret, cfg.turn_urls, cfg.turn_ttl_s, cfg.ice_transport_policy) == ("", (), 3600, "all")
    assert ice_servers(cfg, "s1-x", 0.0) == ()


def test_welcome_carries_minted_credentials_and_policy(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[server]\nturn_secret = "k"\nturn_urls = ["turn:198.18.0.1:3478?transport=udp"]\n'
                 'turn_ttl_s = 600\nice_transport_policy = "relay"\n'
                 'ice_servers = [{urls = "stun:198.18.0.1:3478"}]\n')
    cfg = load_config(p)
    t0 = time.time()
    msg = welcome("s7-abc123", cfg, [])
    assert msg["ice_transport_policy"] == "relay"
    stun, turn = msg["ice_servers"]
    assert stun == {"urls": ["stun:198.18.0.1:3478"]}
    assert turn["urls"] == ["turn:198.18.0.1:3478?transport=udp"]
    expiry, user = turn["username"].split(":")
    assert user == "s7-abc123" and int(t0) + 600 <= int(expiry) <= int(time.time()) + 600
    assert turn["credential"] == mint("k", "s7-abc123", 600, int(expiry) - 600)[1]
    # the server's own side gets a user of its own
    own = ice_servers(cfg.server, "s7-abc123.server", t0)[-1]
    assert own.username is not None and own.username.endswith(":s7-abc123.server")
    assert welcome("s1-x", load_config(), [])["ice_transport_policy"] == "all"


def test_server_config_relay_accepts_a_static_turn_server() -> None:
    from server.config import IceServer

    ServerConfig(ice_servers=(IceServer(("turn:t.example:3478",), "u", "p"),), ice_transport_policy="relay")


# -------------------------------------------------------------------------------------- live


class Coturn:
    """Debian's ``turnserver`` on ``host``:``port`` with the TURN REST secret; log in ``log_path``."""

    def __init__(self, host: str, workdir: Path, secret: str) -> None:
        if not Path(TURNSERVER).exists():
            pytest.fail("coturn is not installed: make setup-test installs Debian's coturn")
        self.host = host
        self.port = 3478
        self.dir = workdir
        self.secret = secret
        self.log_path = workdir / "turnserver.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start it and wait until its log says it listens on UDP."""
        cmd = [
            "stdbuf", "-oL", TURNSERVER, "-n", "-v",  # -n: no configuration file, only these options; -v: log allocations
            f"--listening-ip={self.host}", f"--relay-ip={self.host}", f"--listening-port={self.port}",
            "--use-auth-secret", f"--static-auth-secret={self.secret}", f"--realm={REALM}",
            "--no-tls", "--no-dtls", "--no-cli", "--no-tcp-relay", "--fingerprint",
            f"--min-port={RELAY_PORTS[0]}", f"--max-port={RELAY_PORTS[1]}",
            # peers are the private test range; coturn only refuses ranges it is told to
            "--allowed-peer-ip=198.18.0.0-198.19.255.255",
            "--log-file=stdout", "--simple-log", f"--pidfile={self.dir / 'turnserver.pid'}",
            f"--userdb={self.dir / 'turndb'}",
        ]
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed when the process ends
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"turnserver exited with {self.proc.returncode}:\n{self.log()}")
            if re.search(r"IPv4\. UDP listener opened on\s*:\s*" + re.escape(self.host), self.log()):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"turnserver did not open its UDP listener within {timeout_s:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        terminate(self.proc)

    def log(self) -> str:
        """Everything it logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def allocations(self) -> list[str]:
        """Usernames with a successful ALLOCATE in the log."""
        return re.findall(r"user <([^>]*)>: incoming packet ALLOCATE processed, success", self.log())


@pytest.fixture
def coturn(netns: str, tmp_path: Path) -> Iterator[Coturn]:
    """coturn on the private test address with the test's secret."""
    d = tmp_path / "coturn"
    d.mkdir()
    t = Coturn(netns, d, SECRET)
    t.start()
    try:
        yield t
    finally:
        t.stop()


def relay_server(netns: str, d: Path, secret: str) -> ServerProcess:
    """The real server minting credentials with ``secret`` for coturn, clients relay-only."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "c.toml").write_text(
        f'[server]\nturn_secret = "{secret}"\nturn_urls = ["turn:{netns}:3478?transport=udp"]\n'
        'turn_ttl_s = 600\nice_transport_policy = "relay"\n')
    return ServerProcess(netns, d / "server.log", ["--config", str(d / "c.toml"), "--data-dir", str(d / "data"), *model_args()])


@pytest.mark.browser
async def test_call_through_turn_relay_only(netns: str, coturn: Coturn, speech_wav: Path, tmp_path: Path) -> None:
    from tests.test_browser import browser_page

    srv = relay_server(netns, tmp_path / "srv", SECRET)
    srv.start()
    try:
        async with browser_page(tmp_path, srv.url, speech_wav) as (page, errors):
            await page.goto(srv.url + "/")
            await page.wait_for_function("() => document.getElementById('avatar-select').value !== ''", timeout=10_000)
            await page.click("#btn-start")
            await page.wait_for_function("() => ['live', 'error'].includes(document.body.dataset.state)", timeout=LIVE_TIMEOUT_MS)
            state = await page.evaluate("document.body.dataset.state")
            msg = await page.inner_text("#message")
            assert state == "live", f"page did not go live: {msg!r}\n{srv.log_tail()}\n--- coturn:\n{coturn.log()[-3000:]}"
            sid = await page.evaluate("window.avatarClient.stats.session")
            # avatar video frames arrive, through the relay
            f0 = await page.evaluate("document.getElementById('avatar-video').currentTime")
            await asyncio.sleep(2.0)
            f1 = await page.evaluate("document.getElementById('avatar-video').currentTime")
            assert await page.evaluate("document.getElementById('avatar-video').videoWidth") > 0
            assert f1 - f0 > 1.0, f"video time advanced only {f1 - f0:.3f} s in 2 s"
            stats = (await page.evaluate("window.avatarClient"))["stats"]
            assert stats["framesDecoded"] > 30 and stats["visemeMessages"] > 10, stats
            pair: dict[str, Any] | None = await page.evaluate(SELECTED_PAIR_JS)
            print(f"\nselected candidate pair: {pair}; page timings (ms after Start): "
                  f"{(await page.evaluate('window.avatarClient'))['timings']}")
            assert pair is not None and pair["state"] == "succeeded", pair
            assert pair["local"] == "relay" and pair["localAddress"] == netns and pair["relayProtocol"] == "udp", pair
            assert pair["bytesReceived"] > 50_000, pair
            # coturn allocated for this call's minted usernames (the page's, and the server's own)
            users = coturn.allocations()
            print(f"coturn allocations: {users}")
            assert any(u.endswith(f":{sid}") for u in users), f"no allocation for {sid}: {users}\n{coturn.log()[-3000:]}"
            assert any(u.endswith(f":{sid}.server") for u in users), users
            await page.click("#btn-stop")
            assert errors == [], errors
    finally:
        srv.stop()


@pytest.mark.browser
async def test_wrong_turn_secret_shows_turn_failed(netns: str, coturn: Coturn, speech_wav: Path, tmp_path: Path) -> None:
    from tests.test_browser import browser_page

    srv = relay_server(netns, tmp_path / "srv", "not-the-relays-secret")
    srv.start()
    try:
        async with browser_page(tmp_path, srv.url, speech_wav) as (page, errors):
            await page.goto(srv.url + "/")
            await page.wait_for_function("() => document.getElementById('avatar-select').value !== ''", timeout=10_000)
            t0 = time.monotonic()
            await page.click("#btn-start")
            await page.wait_for_function("() => ['live', 'error'].includes(document.body.dataset.state)",
                                         timeout=TURN_FAILED_BOUND_S * 1000)
            took = time.monotonic() - t0
            print(f"\nturn_failed shown {took:.1f} s after Start")
            assert await page.evaluate("document.body.dataset.state") == "error"
            assert await page.evaluate("document.getElementById('message').dataset.code") == "turn_failed"
            text = await page.inner_text("#message")
            assert "TURN relay" in text and "401" in text, text  # coturn refused the credentials
            assert await page.evaluate("window.avatarClient.lastError.code") == "turn_failed"
            assert coturn.allocations() == [], coturn.allocations()
            assert "401" in coturn.log() or "Unauthorized" in coturn.log(), coturn.log()[-2000:]
            assert errors == [], errors
    finally:
        srv.stop()


async def test_avatar_client_relays_too(netns: str, coturn: Coturn, speech_wav: Path, tmp_path: Path) -> None:
    """``avatar client`` takes the welcome's TURN credentials and relay-only policy."""
    from server.client import AvatarClient, load_audio

    srv = relay_server(netns, tmp_path / "srv", SECRET)
    srv.start()
    try:
        client = AvatarClient(srv.url, load_audio(speech_wav), duration=3.0, timeout=20.0)
        try:
            await client.start()
            assert client.pc is not None and client.pc.localDescription is not None
            kinds = re.findall(r"a=candidate:\S+ \d+ udp \d+ \S+ \d+ typ (\w+)", client.pc.localDescription.sdp)
            assert kinds and set(kinds) == {"relay"}, f"the client offered {kinds}, not relay candidates only"
            await client.wait_done()
        finally:
            await client.close()
        frames = len(client.stats.frames)
        print(f"\navatar client through the relay: {frames} frames in 3 s of microphone")
        assert frames > 30, client.stats.to_json()
        sid = client.stats.session
        assert any(u.endswith(f":{sid}") for u in coturn.allocations()), coturn.allocations()
    finally:
        srv.stop()
