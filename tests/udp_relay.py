"""An impairing UDP relay between an aiortc client and the server (there is no tc netem here).

The relay owns two sockets: the client sends to ``client_side`` believing it is the server,
the server sends to ``server_side`` believing it is the client. :class:`RelayClient` rewrites
the ICE candidates of the offer and the answer so that each side sees only the relay's
address, and makes its own peer connection gather a single host candidate, so every packet
of the call (STUN, DTLS, SRTP, SCTP) goes through the relay. Impairments (loss, jitter,
reordering) apply to the client → server RTP/RTCP only (first byte 128..191, RFC 7983), so
the microphone sees them while ICE, DTLS and the returned video do not.

Used by tests/test_jitter_e2e.py and bench/audio_receive.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import aioice.ice

from server.client import AvatarClient, ClientStats
from tests.server_proc import get_json

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Impairment:
    """What the relay does to client → server RTP: ``loss`` (fraction dropped), ``jitter_ms``
    (each packet delayed uniformly by 0..jitter_ms, which reorders packets closer than
    that), ``reorder`` (fraction held back ``reorder_ms`` more, behind the next packets)."""

    loss: float = 0.0
    jitter_ms: float = 0.0
    reorder: float = 0.0
    reorder_ms: float = 20.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0.0 <= self.loss < 1.0 and 0.0 <= self.reorder < 1.0):
            raise ValueError(f"loss {self.loss!r} and reorder {self.reorder!r} must be fractions in 0..1")
        if not (0.0 <= self.jitter_ms <= 1000.0 and 0.0 <= self.reorder_ms <= 1000.0):
            raise ValueError(f"jitter_ms {self.jitter_ms!r} and reorder_ms {self.reorder_ms!r} must be in 0..1000 ms")


class _Side(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, name: str) -> None:
        self.relay, self.name = relay, name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.relay._received(self.name, data, addr)


class UdpRelay:
    """Forward UDP between one client and one server address, impairing client → server RTP."""

    def __init__(self, host: str, impairment: Impairment | None = None) -> None:
        self.host = host
        self.imp = impairment or Impairment()
        self._rng = random.Random(self.imp.seed)
        self._sides: dict[str, _Side] = {}
        self.client_addr: Addr | None = None  # learned from the first packet the client sends
        self.server_addr: Addr | None = None  # from the answer's candidates
        self._timers: set[asyncio.TimerHandle] = set()
        self.rtp_up = 0  # client → server RTP/RTCP packets seen
        self.dropped = 0
        self.delayed = 0
        self.reordered = 0

    async def start(self) -> None:
        """Bind both sockets on ``host`` (ephemeral ports)."""
        loop = asyncio.get_running_loop()
        for name in ("client_side", "server_side"):
            _, proto = await loop.create_datagram_endpoint(lambda n=name: _Side(self, n), local_addr=(self.host, 0))  # type: ignore[misc]
            self._sides[name] = proto

    def address(self, side: str) -> Addr:
        """(host, port) of ``client_side`` or ``server_side``."""
        t = self._sides[side].transport
        assert t is not None, "relay not started"
        host, port = t.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def _received(self, side: str, data: bytes, addr: Addr) -> None:
        if side == "client_side":
            self.client_addr = addr
            if self.server_addr is None:
                return
            dest, out = self.server_addr, self._sides["server_side"]
            if data and 128 <= data[0] <= 191:  # SRTP / SRTCP: impair
                self.rtp_up += 1
                if self._rng.random() < self.imp.loss:
                    self.dropped += 1
                    return
                delay = self._rng.uniform(0.0, self.imp.jitter_ms) / 1000.0
                if self._rng.random() < self.imp.reorder:
                    delay += self.imp.reorder_ms / 1000.0
                    self.reordered += 1
                if delay > 0.0:
                    self.delayed += 1
                    self._later(delay, out, data, dest)
                    return
        else:
            if self.client_addr is None:
                return
            dest, out = self.client_addr, self._sides["client_side"]
        if out.transport is not None:
            out.transport.sendto(data, dest)

    def _later(self, delay: float, out: _Side, data: bytes, dest: Addr) -> None:
        def send() -> None:
            self._timers.discard(handle)
            if out.transport is not None:
                out.transport.sendto(data, dest)

        handle = asyncio.get_running_loop().call_later(delay, send)
        self._timers.add(handle)

    def close(self) -> None:
        """Cancel pending sends and close both sockets."""
        for h in self._timers:
            h.cancel()
        self._timers.clear()
        for s in self._sides.values():
            if s.transport is not None:
                s.transport.close()

    def stats(self) -> dict[str, int]:
        """Counts of the impaired direction."""
        return {"rtp_up": self.rtp_up, "dropped": self.dropped, "delayed": self.delayed, "reordered": self.reordered}


_CANDIDATE = re.compile(r"^a=candidate:\S+ (\d) (\S+) \d+ (\S+) (\d+) typ (\S+)")


def host_candidates(sdp: str) -> list[tuple[str, str, int]]:
    """(protocol, ip, port) of the UDP host candidates of ``sdp``'s first media section."""
    out = []
    for line in sdp.split("m=", 2)[1].splitlines() if "m=" in sdp else []:
        m = _CANDIDATE.match(line.strip())
        if m and m.group(2).lower() == "udp" and m.group(5) == "host" and m.group(1) == "1":
            out.append(("udp", m.group(3), int(m.group(4))))
    return out


def rewrite_candidates(sdp: str, addr: Addr) -> str:
    """``sdp`` with every media section's candidates replaced by one host candidate at ``addr``."""
    lines, out = sdp.splitlines(), []
    for line in lines:
        if line.startswith(("a=candidate:", "a=end-of-candidates")):
            continue
        if line.startswith("c=IN IP4 "):
            line = f"c=IN IP4 {addr[0]}"
        out.append(line)
        if line.startswith("a=ice-pwd:"):  # aiortc puts candidates after the ICE credentials
            out.append(f"a=candidate:1 1 udp 2130706431 {addr[0]} {addr[1]} typ host")
            out.append("a=end-of-candidates")
    return "\r\n".join(out) + "\r\n"


class RelayClient(AvatarClient):
    """The headless client with its call forced through ``relay``."""

    def __init__(self, url: str, audio: Any, relay: UdpRelay, **kw: Any) -> None:
        super().__init__(url, audio, **kw)
        self.relay = relay

    async def connect(self) -> dict[str, Any]:
        """Connect, then rewrite the SDP in the offer sent and the answer received."""
        welcome = await super().connect()
        assert self.sig is not None
        sig, relay = self.sig, self.relay
        send, receive = sig.send, sig.receive

        async def send_rewritten(type_: str, **fields: Any) -> None:
            if type_ == "offer":
                fields["sdp"] = rewrite_candidates(fields["sdp"], relay.address("server_side"))
            await send(type_, **fields)

        async def receive_rewritten(wait_s: float) -> dict[str, Any] | None:
            msg = await receive(wait_s)
            if msg is not None and msg.get("type") == "answer" and isinstance(msg.get("sdp"), str):
                cands = host_candidates(msg["sdp"])
                if not cands:
                    raise RuntimeError(f"the answer has no UDP host candidate to relay to:\n{msg['sdp']}")
                host = urlhost(self.url)
                _, ip, port = next((c for c in cands if c[1] == host), cands[0])
                relay.server_addr = (ip, port)
                msg = {**msg, "sdp": rewrite_candidates(msg["sdp"], relay.address("client_side"))}
            return msg

        sig.send = send_rewritten  # type: ignore[method-assign]
        sig.receive = receive_rewritten  # type: ignore[method-assign]
        return welcome


def urlhost(url: str) -> str:
    """The host of an http URL."""
    return url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]



@contextlib.contextmanager
def single_host(ip: str) -> Iterator[None]:
    """Peer connections created meanwhile in this process gather one host candidate, ``ip``
    (so the relay sees the client at one address)."""
    original = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [ip]
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


async def call_through_relay(
    url: str, audio: Any, imp: Impairment, *, duration: float, client_ip: str, measure_mouth: bool = False
) -> tuple[ClientStats, list[dict[str, Any]], UdpRelay]:
    """One call to the server at ``url`` playing ``audio`` (int16 48 kHz samples) for
    ``duration`` s from ``client_ip`` through a relay with ``imp``. Returns the client's
    stats, the session's ``/stats`` entry sampled every 0.25 s while the call ran (those
    with a ``jitter`` entry), and the relay (with its counts)."""
    from server.client import load_mouth_measure

    relay = UdpRelay(client_ip, imp)
    await relay.start()
    samples: list[dict[str, Any]] = []

    async def sample() -> None:
        while True:
            sessions = (await get_json(url, "/stats"))["sessions"]
            if sessions and sessions[0].get("jitter"):
                samples.append(sessions[0])
            await asyncio.sleep(0.25)

    mouth = load_mouth_measure() if measure_mouth else None
    client = RelayClient(url, audio, relay, duration=duration, measure_mouth=mouth)
    sampler = asyncio.get_running_loop().create_task(sample())
    try:
        with single_host(client_ip):
            await client.start()
        await client.wait_done()
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await client.close()
        relay.close()
    return client.stats, samples, relay
