"""Publishing a stage's program once to an SFU, which fans it out to any number of viewers.

- :class:`JanusPublisher`: a publisher in a Janus VideoRoom over Janus's HTTP API (session,
  videoroom handle, ``join`` as publisher, ``publish`` with our offer, long-poll for events,
  keep-alive, ``leave`` and ``destroy`` on stop). The room is created when it does not exist
  (with the configured room ``secret``); ``token`` and ``api_secret`` are sent when set.
- :class:`WhipPublisher`: RFC 9725 WHIP: ``POST`` the offer as ``application/sdp`` (with
  ``Authorization: Bearer``), ``201 Created`` + ``Location`` + answer, ``DELETE`` on stop. For
  LiveKit Ingress, Cloudflare Stream, mediamtx, SRS and any other WHIP endpoint.

Either sends the shared VP8 and Opus packets through a peer output of the stage, exactly like a
viewer (its PLI/FIR asks the shared encoder for a keyframe; its REMB lowers the shared rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import aiohttp

from server.config import PublishConfig
from server.errors import AvatarError

if TYPE_CHECKING:
    from server.stage.stage import Stage
    from server.stage.viewer import Viewer

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 10.0  # s for one API request
POLL_S = 25  # s a Janus long-poll waits for events (Janus's session timeout is 60 s)


class PublishError(AvatarError):
    """An SFU refused or broke a publication; the message names the endpoint and reason."""


class _Publication:
    """What both publishers share: the peer output, the task, stats."""

    kind = "publish"

    def __init__(self, stage: Stage, target: str) -> None:
        self.stage = stage
        self.target = target  # where it publishes, for logs and stats (no secrets)
        self.id = f"pub-{secrets.token_hex(4)}"
        self.peer: Viewer | None = None
        self.state = "starting"
        self.error: str | None = None
        self.started = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._http: aiohttp.ClientSession | None = None

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _new_peer(self) -> Viewer:
        self.peer = self.stage.peer_output(self.id, role="publish")
        return self.peer

    async def start(self) -> None:
        """Publish; raises :class:`PublishError`."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop publishing and release everything. Idempotent."""
        raise NotImplementedError

    async def _close_common(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.peer is not None:
            await self.peer.close()
        if self._http is not None:
            await self._http.close()

    def stats(self) -> dict[str, Any]:
        """JSON-able state of the publication."""
        peer = self.peer
        return {
            "target": self.target,
            "state": self.state,
            "error": self.error,
            "connection": peer.pc.connectionState if peer is not None else None,
            "video_sent": peer.video.delivered if peer is not None else 0,
            "audio_sent": peer.audio.delivered if peer is not None else 0,
        }


class JanusPublisher(_Publication):
    """The stage as one publisher in a Janus VideoRoom (Janus HTTP API)."""

    def __init__(self, stage: Stage, cfg: PublishConfig) -> None:
        super().__init__(stage, f"janus {cfg.janus_url} room {cfg.room}")
        self.cfg = cfg
        self.url = cfg.janus_url.rstrip("/")
        self.session: int | None = None
        self.handle: int | None = None
        self.publisher_id: int | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def _request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        tx = secrets.token_hex(6)
        msg = {**body, "transaction": tx}
        if self.cfg.token:
            msg["token"] = self.cfg.token
        if self.cfg.api_secret:
            msg["apisecret"] = self.cfg.api_secret
        try:
            async with self._http.post(self.url + path, json=msg, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as r:
                data: dict[str, Any] = await r.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            raise PublishError(f"Janus at {self.url} did not answer {body.get('janus')!r}: {type(e).__name__}: {e}") from e
        if data.get("janus") == "error":
            err = data.get("error", {})
            raise PublishError(f"Janus refused {body.get('janus')!r}: {err.get('code')} {err.get('reason')}")
        return data

    async def _message(self, body: dict[str, Any], jsep: dict[str, Any] | None = None, timeout_s: float = 15.0) -> dict[str, Any]:
        """A videoroom request; waits for its asynchronous event when Janus only acks it."""
        assert self.session is not None and self.handle is not None and self._http is not None
        tx = secrets.token_hex(6)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[tx] = fut
        msg: dict[str, Any] = {"janus": "message", "body": body, "transaction": tx}
        if jsep is not None:
            msg["jsep"] = jsep
        if self.cfg.token:
            msg["token"] = self.cfg.token
        if self.cfg.api_secret:
            msg["apisecret"] = self.cfg.api_secret
        try:
            async with self._http.post(f"{self.url}/{self.session}/{self.handle}", json=msg,
                                       timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as r:
                data: dict[str, Any] = await r.json(content_type=None)
            if data.get("janus") == "success":  # synchronous request (exists, create)
                return data
            if data.get("janus") == "error":
                err = data.get("error", {})
                raise PublishError(f"Janus refused {body.get('request')!r}: {err.get('code')} {err.get('reason')}")
            event = await asyncio.wait_for(fut, timeout_s)
        except (aiohttp.ClientError, OSError, ValueError) as e:
            raise PublishError(f"Janus at {self.url} failed on {body.get('request')!r}: {type(e).__name__}: {e}") from e
        except TimeoutError as e:
            raise PublishError(f"Janus at {self.url} sent no event for {body.get('request')!r} within {timeout_s:.0f} s") from e
        finally:
            self._waiting.pop(tx, None)
        plugin = event.get("plugindata", {}).get("data", {})
        if "error" in plugin:
            raise PublishError(f"Janus VideoRoom refused {body.get('request')!r}: {plugin.get('error_code')} {plugin['error']}")
        return event

    async def _poll(self) -> None:
        """Janus's long-poll: resolves waiting requests; the requests also keep the session alive."""
        assert self._http is not None and self.session is not None
        params: dict[str, str] = {"maxev": "10", **({"token": self.cfg.token} if self.cfg.token else {}),
                                  **({"apisecret": self.cfg.api_secret} if self.cfg.api_secret else {})}
        while True:
            try:
                async with self._http.get(f"{self.url}/{self.session}", params=params,
                                          timeout=aiohttp.ClientTimeout(total=POLL_S + 10)) as r:
                    data = await r.json(content_type=None)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                log.warning("stage %s: Janus long-poll failed: %s", self.stage.id, e)
                await asyncio.sleep(1.0)
                continue
            for event in data if isinstance(data, list) else [data]:
                if not isinstance(event, dict):
                    continue
                fut = self._waiting.get(str(event.get("transaction")))
                if fut is not None and not fut.done() and event.get("janus") == "event":
                    fut.set_result(event)
                elif event.get("janus") in ("hangup", "detached"):
                    self.state = "disconnected"
                    self.error = str(event.get("reason", event.get("janus")))

    async def start(self) -> None:
        """Join the room as a publisher and publish; raises :class:`PublishError`."""
        self._http = aiohttp.ClientSession()
        self.session = int((await self._request("", {"janus": "create"}))["data"]["id"])
        self.handle = int((await self._request(f"/{self.session}", {"janus": "attach", "plugin": "janus.plugin.videoroom"}))["data"]["id"])
        self._spawn(self._poll(), "janus-poll")
        room = self.cfg.room
        exists = await self._message({"request": "exists", "room": room})
        if not exists.get("plugindata", {}).get("data", {}).get("exists"):
            create: dict[str, Any] = {"request": "create", "room": room, "publishers": 16, "videocodec": "vp8", "audiocodec": "opus",
                                      "description": f"avatar stage {self.stage.id}"}
            if self.cfg.room_secret:
                create["secret"] = self.cfg.room_secret
            await self._message(create)
        join: dict[str, Any] = {"request": "join", "ptype": "publisher", "room": room, "display": self.cfg.display or f"avatar {self.stage.id}"}
        if self.cfg.room_pin:
            join["pin"] = self.cfg.room_pin
        joined = await self._message(join)
        self.publisher_id = joined.get("plugindata", {}).get("data", {}).get("id")
        peer = self._new_peer()
        offer = await peer.offer(audio=True)
        event = await self._message({"request": "publish", "audio": True, "video": True}, {"type": "offer", "sdp": offer})
        jsep = event.get("jsep") or {}
        if jsep.get("type") != "answer" or not isinstance(jsep.get("sdp"), str):
            raise PublishError(f"Janus answered publish without an SDP answer: {str(event)[:200]}")
        await peer.accept(jsep["sdp"])
        self.state = "published"
        log.info("stage %s: published to %s as publisher %s", self.stage.id, self.target, self.publisher_id)

    async def stop(self) -> None:
        """Leave the room, destroy the Janus session, close the peer. Idempotent."""
        if self.state == "stopped":
            return
        if self.session is not None and self.handle is not None and self._http is not None:
            with contextlib.suppress(PublishError):
                await self._message({"request": "leave"}, timeout_s=2.0)
            with contextlib.suppress(PublishError):
                await self._request(f"/{self.session}", {"janus": "destroy"})
        self.state = "stopped"
        await self._close_common()


class WhipPublisher(_Publication):
    """The stage published to a WHIP endpoint (RFC 9725)."""

    def __init__(self, stage: Stage, cfg: PublishConfig) -> None:
        super().__init__(stage, f"whip {cfg.whip_url}")
        self.cfg = cfg
        self.location: str | None = None

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = dict(extra or {})
        if self.cfg.whip_token:
            h["Authorization"] = f"Bearer {self.cfg.whip_token}"
        return h

    async def start(self) -> None:
        """POST our offer, apply the answer; raises :class:`PublishError`."""
        self._http = aiohttp.ClientSession()
        peer = self._new_peer()
        offer = await peer.offer(audio=True)
        try:
            async with self._http.post(self.cfg.whip_url, data=offer, headers=self._headers({"Content-Type": "application/sdp"}),
                                       timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as r:
                body = await r.text()
                if r.status != 201:
                    raise PublishError(f"WHIP endpoint {self.cfg.whip_url} refused the offer: HTTP {r.status} {body[:200]!r}")
                if r.content_type != "application/sdp":
                    raise PublishError(f"WHIP endpoint {self.cfg.whip_url} answered {r.content_type!r}, not application/sdp")
                location = r.headers.get("Location")
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise PublishError(f"WHIP endpoint {self.cfg.whip_url} unreachable: {type(e).__name__}: {e}") from e
        if not location:
            raise PublishError(f"WHIP endpoint {self.cfg.whip_url} sent no Location for the session")
        self.location = urljoin(self.cfg.whip_url, location)
        await peer.accept(body)
        self.state = "published"
        log.info("stage %s: published to %s (session %s)", self.stage.id, self.target, self.location)

    async def stop(self) -> None:
        """DELETE the WHIP session, close the peer. Idempotent."""
        if self.state == "stopped":
            return
        if self.location is not None and self._http is not None:
            try:
                async with self._http.delete(self.location, headers=self._headers(), timeout=aiohttp.ClientTimeout(total=5)):
                    pass
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                log.info("stage %s: WHIP DELETE %s failed: %s", self.stage.id, self.location, e)
        self.state = "stopped"
        await self._close_common()


async def start_publications(stage: Stage, cfg: PublishConfig) -> None:
    """Publish ``stage`` to every configured target; a target that fails is logged and kept in
    the stage's stats with its error (the stage goes on for its other outputs)."""
    pubs: list[_Publication] = []
    if cfg.janus_url:
        pubs.append(JanusPublisher(stage, cfg))
    if cfg.whip_url:
        pubs.append(WhipPublisher(stage, cfg))
    for pub in pubs:
        stage.publishers[pub.id] = pub
        try:
            await pub.start()
        except (PublishError, AvatarError) as e:
            pub.state, pub.error = "failed", str(e)
            log.warning("stage %s: publishing to %s failed: %s", stage.id, pub.target, e)
            await pub.stop()
            pub.state = "failed"
