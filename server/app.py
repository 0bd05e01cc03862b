"""The aiohttp application: page, signaling WebSocket, health, stats, avatars.

No module globals: configuration, shared models and sessions live on typed ``AppKey``s, set
up and torn down in one ``cleanup_ctx``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from server.access import ACCESS, Access, access_middleware, grant_of
from server.avatars import OPERATOR, AvatarInfo, AvatarRegistry
from server.clock import Clock, MonotonicClock
from server.config import ROOT, AppConfig
from server.errors import AvatarError, AvatarNotFound, ProtocolError
from server.heap import HeapTrimmer
from server.limits import Limits, RateLimitedLog, dir_size
from server.metrics import Metrics
from server.pipeline.runner import SharedModels, load_models
from server.security import origin_middleware, parse_allowed
from server.session import Session, sessions_summary
from server.signaling import (
    PROTOCOL_VERSION,
    dispatch,
    dispatch_pending,
    error,
    parse_message,
    welcome,
)
from server.stage.http import STAGES, PendingStage, add_routes
from server.tokens import Grant, TokenIssuer, is_loopback, load_secret
from server.uploads import UploadError, read_photo_upload
from server.workers import RemoteSession, WorkerPool


class LocalSession:
    """A session running in this process (``server.workers = 0``); ``trimmer`` gives its memory
    back once it has ended (:mod:`server.heap`)."""

    def __init__(self, session: Session, trimmer: HeapTrimmer | None = None) -> None:
        self.session = session
        self.sid = session.sid
        self.on_closed: Callable[[Any], Awaitable[None]] | None = None

        async def closed(s: Session) -> None:
            if trimmer is not None:
                trimmer.soon()
            if self.on_closed is not None:
                await self.on_closed(self)

        session.on_closed = closed

    async def dispatch(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """Handle one validated message."""
        return await dispatch(self.session, msg)

    async def close(self) -> None:
        """Close the session."""
        await self.session.close()

    async def stage_request(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        """A request for the session's stage."""
        return await self.session.stage_request(action, data)


SessionHandle = LocalSession | RemoteSession

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", AppConfig)
MODELS = web.AppKey("models", SharedModels)
REGISTRY = web.AppKey("registry", AvatarRegistry)
POOL = web.AppKey("pool", WorkerPool)
TRIMMER = web.AppKey("trimmer", HeapTrimmer)  # in-process sessions only (workers trim their own heap)
SESSIONS = web.AppKey("sessions", dict[str, SessionHandle])
CLOCK = web.AppKey("clock", Clock)
COUNTER = web.AppKey("counter", Iterator[int])
METRICS = web.AppKey("metrics", Metrics)
LIMITS = web.AppKey("limits", Limits)
CLIENT_LOG = web.AppKey("client_log", RateLimitedLog)  # client errors: one line each, rate-limited
CLIENT_DIR = ROOT / "client_web"


def build_app(cfg: AppConfig, *, clock: Clock | None = None, models: SharedModels | None = None) -> web.Application:
    """Create the application (models load at start-up unless given)."""
    # request bodies: max_request_bytes everywhere; the photo upload streams its own (larger) cap
    access = make_access(cfg)
    middlewares = [access_middleware(access), origin_middleware(parse_allowed(cfg.server.allowed_origins))]
    app = web.Application(client_max_size=cfg.server.max_request_bytes, middlewares=middlewares)
    app[ACCESS] = access
    app[CONFIG] = cfg
    app[METRICS] = Metrics()
    app[LIMITS] = Limits.from_config(cfg.server)
    app[CLIENT_LOG] = RateLimitedLog(log)
    app[CLOCK] = clock or MonotonicClock()
    app[SESSIONS] = {}
    app[COUNTER] = itertools.count()
    given = models

    async def resources(app: web.Application) -> AsyncIterator[None]:
        n_workers = cfg.server.worker_count() if given is None else 0
        pool: WorkerPool | None = None
        if n_workers > 0:
            pool = WorkerPool(cfg, n_workers)
            app[POOL] = pool
            app[REGISTRY] = AvatarRegistry(cfg.avatars.data_dir)
            await pool.start()
            log.info("%d session worker processes ready", n_workers)
        else:
            loaded: SharedModels = given if given is not None else await asyncio.get_running_loop().run_in_executor(None, load_models, cfg)
            app[MODELS] = loaded
            app[REGISTRY] = loaded.registry
            app[TRIMMER] = HeapTrimmer()
        yield
        sessions = list(app[SESSIONS].values())
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        if pool is not None:
            await pool.close()
        if TRIMMER in app:
            await app[TRIMMER].close()

    app.cleanup_ctx.append(resources)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/tokens", mint_token)
    app.router.add_get("/avatars", avatars)
    app.router.add_post("/avatars/photo", add_photo)
    app.router.add_delete("/avatars/{name}", remove_photo)
    app.router.add_get("/ws", websocket)
    add_routes(app, CLIENT_DIR)
    if CLIENT_DIR.is_dir():
        app.router.add_static("/static/", CLIENT_DIR, follow_symlinks=False)
    return app


async def index(request: web.Request) -> web.StreamResponse:
    """The web page."""
    page = CLIENT_DIR / "index.html"
    if not page.exists():
        raise web.HTTPNotFound(text="client_web/index.html is missing")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: ``{"ok": true, "sessions": N}``."""
    return web.json_response({"ok": True, "sessions": len(request.app[SESSIONS])})


def make_access(cfg: AppConfig) -> Access:
    """Whether tokens are required here, and the issuer that signs and checks them."""
    required = cfg.server.auth == "required" or (cfg.server.auth == "auto" and not is_loopback(cfg.server.host))
    return Access(TokenIssuer(load_secret(cfg.server.token_secret, cfg.avatars.data_dir)), required)


async def _stats_parts(app: web.Application) -> list[dict[str, Any]]:
    """Each worker's ``sessions_summary`` (or this process's, without workers)."""
    pool = app.get(POOL)
    if pool is not None:
        return await pool.stats()
    return [sessions_summary([h.session for h in app[SESSIONS].values() if isinstance(h, LocalSession)])]


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (admin)."""
    app = request.app
    pool = app.get(POOL)
    parts = await _stats_parts(app)
    m = app[METRICS]
    m.update(parts, pool.restarts if pool is not None else 0)
    return web.Response(body=m.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def mint_token(request: web.Request) -> web.Response:
    """``POST /tokens`` (admin): ``{"role", "stage"?, "ttl_s"?, "subject"?}`` → ``{"token"}``."""
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        stage = body.get("stage")
        token = request.app[ACCESS].issuer.create(
            str(body.get("role", "")), stage=str(stage) if stage is not None else None,
            ttl_s=float(body.get("ttl_s", 24 * 3600)), subject=str(body.get("subject", ""))[:80])
    except (ValueError, TypeError, AvatarError) as e:
        return web.json_response({"error": str(e)[:200]}, status=400)
    return web.json_response({"token": token})


async def stats(request: web.Request) -> web.Response:
    """Per-session statistics and totals (incl. open peer connections and session tasks)."""
    app = request.app
    pool = app.get(POOL)
    parts = await _stats_parts(app)
    per = [s for p in parts for s in p["sessions"]]
    totals = {
        "sessions": len(app[SESSIONS]),
        "pcs": sum(p["pcs"] for p in parts),
        "tasks": sum(p["tasks"] for p in parts),
        "loop_tasks": len(asyncio.all_tasks()) + sum(p["loop_tasks"] for p in parts if pool is not None),
        "workers": len(parts) if pool is not None else 0,
        "worker_restarts": pool.restarts if pool is not None else 0,
        "worker_recycles": pool.recycled if pool is not None else 0,
        "worker_pids": [p["worker_pid"] for p in parts if "worker_pid" in p],
        "fps_mean": round(sum(p["fps"] for p in per) / len(per), 2) if per else None,
    }
    return web.json_response({"sessions": per, "totals": totals})


def _usable(info: AvatarInfo, grant: Grant) -> bool:
    """Whether ``grant`` may use avatar ``info``: a photo avatar only by its owner (or an admin)."""
    return info.kind != "photo" or grant.owns(str(info.meta.get("owner", OPERATOR)))


def _avatar_list(app: web.Application, grant: Grant) -> list[dict[str, str]]:
    """The avatars ``grant`` may use, as ``{"name", "kind"}``."""
    return [{"name": a.name, "kind": a.kind} for a in app[REGISTRY].list() if _usable(a, grant)]


def check_avatar(app: web.Application, grant: Grant, msg: dict[str, Any]) -> None:
    """Refuse an offer or ``set_avatar`` naming a photo avatar ``grant`` does not own with the
    same ``unknown_avatar`` as a missing one (listing only the usable avatars): someone else's
    likeness is neither animated nor confirmed to exist."""
    if not (msg["type"] == "offer" or (msg["type"] == "control" and msg.get("action") == "set_avatar")):
        return
    name = msg.get("avatar")
    if not name:
        return  # the configured default
    infos = app[REGISTRY].list()
    if any(i.name == name and _usable(i, grant) for i in infos):
        return
    available = ", ".join(i.name for i in infos if _usable(i, grant))
    raise ProtocolError("unknown_avatar", f"unknown avatar {name!r}; available: {available}")


async def avatars(request: web.Request) -> web.Response:
    """The avatars this token may use (built-ins, sprite packs, its own photo avatars)."""
    reg = request.app[REGISTRY]
    return web.json_response({"avatars": _avatar_list(request.app, grant_of(request)), "default": reg.default_name()})


async def add_photo(request: web.Request) -> web.Response:
    """Register a photo avatar: multipart ``image``, ``name``, ``consent_by`` (server/uploads.py)."""
    app, client = request.app, request.remote or "?"
    cfg, limits = app[CONFIG], app[LIMITS]
    full = limits.take("upload", client)
    if full is not None:
        return web.json_response({"error": f"too many uploads at once: {full}; try again shortly"}, status=429)
    try:
        try:
            upload = await read_photo_upload(request, cfg)
        except UploadError as e:
            app[CLIENT_LOG].info("photo upload from %s refused: %s", client, e)
            return web.json_response({"error": str(e)}, status=e.status)
        reg = app[REGISTRY]
        owner = grant_of(request).subject  # the photo belongs to whoever registered it
        quota = int(cfg.avatars.max_store_mb * (1 << 20))
        loop = asyncio.get_running_loop()
        used = await loop.run_in_executor(None, dir_size, reg.photo_dir)
        if used + len(upload.data) > quota:
            return web.json_response({"error": f"the photo store is full ({used >> 20} of {quota >> 20} MiB used); remove avatars or raise avatars.max_store_mb"}, status=507)

        def register() -> Any:
            with tempfile.TemporaryDirectory(prefix="upload-") as d:
                path = Path(d) / f"upload{upload.header.suffix}"  # suffix from the detected format only
                path.write_bytes(upload.data)
                try:
                    return reg.add_photo(path, upload.name, upload.consent_by, owner=owner)
                except AvatarError as e:  # no server paths in what the client reads
                    raise AvatarError(str(e).replace(str(path), "the upload").replace(str(reg.photo_dir), "the photo store")) from None

        try:
            info = await loop.run_in_executor(None, register)
        except AvatarError as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"avatar": {"name": info.name, "kind": info.kind}})
    finally:
        limits.give("upload", client)


async def remove_photo(request: web.Request) -> web.Response:
    """``DELETE /avatars/{name}``: withdraw a photo avatar (its files are deleted)."""
    name = request.match_info["name"]
    reg = request.app[REGISTRY]
    grant = grant_of(request)
    try:
        info = reg.get(name)
        if not _usable(info, grant):  # someone else's likeness: not even its existence is confirmed
            raise AvatarNotFound(name)
        await asyncio.get_running_loop().run_in_executor(None, reg.remove_photo, name)
    except AvatarNotFound:
        return web.json_response({"error": f"there is no avatar {name[:40]!r}"}, status=404)
    except AvatarError as e:
        return web.json_response({"error": str(e).replace(str(reg.photo_dir), "the photo store")}, status=400)
    return web.json_response({"removed": name})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Signaling for one session (docs/protocol.md)."""
    app = request.app
    cfg = app[CONFIG]
    limit = cfg.server.max_message_bytes
    # aiohttp closes with 1009 above max_msg_size; below it we answer `too_large` ourselves.
    ws = web.WebSocketResponse(max_msg_size=4 * limit, heartbeat=20.0)
    await ws.prepare(request)
    lock = asyncio.Lock()

    async def send(msg: dict[str, Any]) -> None:
        if ws.closed:
            return
        async with lock:
            try:
                await ws.send_str(json.dumps(msg))
            except (ConnectionError, RuntimeError) as e:
                log.debug("send failed: %s", e)

    sessions, limits, client_log = app[SESSIONS], app[LIMITS], app[CLIENT_LOG]
    client = request.remote or "?"
    held: list[str] = []  # what this socket holds of LIMITS; given back at the end
    for what in ("socket", "pending"):
        full = limits.take(what, client)
        if full is not None:
            for h in held:
                limits.give(h, client)
            client_log.info("socket from %s refused: %s", client, full)
            await send(error(ProtocolError("busy", f"server busy: {full}", fatal=True)))
            await ws.close()
            return ws
        held.append(what)
    counter: Iterator[int] = app[COUNTER]
    n = next(counter)
    sid = f"s{n}-{secrets.token_hex(3)}"
    stage_id = secrets.token_urlsafe(8)  # the watch link's secret part: unguessable
    stages = app[STAGES]
    pool = app.get(POOL)
    handle: SessionHandle | None = None  # set by the first offer; kept once one is accepted
    accepted = False

    async def open_session() -> SessionHandle:
        """A session for an offer: takes a session slot (given back if the offer fails)."""
        full = limits.take("session", client)
        if full is not None:
            raise ProtocolError("busy", f"server busy: {full}", fatal=True)
        held.append("session")
        try:
            if pool is not None:
                h: SessionHandle = await pool.open(sid, cfg.seed + n, send, stage_id)
            else:
                h = LocalSession(Session(sid, cfg, app[MODELS], app[CLOCK], cfg.seed + n, send, stage_id), app.get(TRIMMER))
        except BaseException:
            held.remove("session")
            limits.give("session", client)
            raise
        sessions[sid] = h
        stages.add(stage_id, h)
        return h

    async def drop_session(h: SessionHandle) -> None:
        """Close a session whose offer failed; the socket is pending again."""
        await h.close()
        sessions.pop(sid, None)
        stages.add(stage_id, PendingStage(stage_id))
        held.remove("session")
        limits.give("session", client)

    async def closed(h: Any) -> None:
        sessions.pop(h.sid, None)
        stages.end(stage_id)
        if not ws.closed:
            await ws.close()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg.server.offer_timeout_s
    try:
        access = app[ACCESS]
        viewer_token = access.issuer.create("viewer", stage=stage_id, ttl_s=12 * 3600) if access.required else None
        stages.add(stage_id, PendingStage(stage_id))  # watch links answer "not started yet" until the offer
        grant = grant_of(request)
        await send(welcome(sid, cfg, _avatar_list(app, grant), stage_id, viewer_token))
        while True:
            try:
                msg = await ws.receive(timeout=None if accepted else max(deadline - loop.time(), 0.0))
            except TimeoutError:
                client_log.info("session %s (%s): offer_timeout", sid, client)
                await send(error(ProtocolError("offer_timeout", f"no accepted offer within {cfg.server.offer_timeout_s:g} s of connecting; closing", fatal=True)))
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"offer_timeout")
                break
            if msg.type == WSMsgType.TEXT:
                reply: dict[str, Any] | None = None
                try:
                    parsed = parse_message(msg.data, limit)
                    check_avatar(app, grant, parsed)
                    if not accepted and parsed["type"] == "offer":
                        handle = await open_session()
                        try:
                            reply = await handle.dispatch(parsed)
                        except BaseException:
                            await drop_session(handle)
                            handle = None
                            raise
                        accepted = True
                        held.remove("pending")
                        limits.give("pending", client)
                        handle.on_closed = closed
                    elif handle is None:
                        reply = dispatch_pending(parsed, app[CLOCK].now())
                    else:
                        reply = await handle.dispatch(parsed)
                except ProtocolError as e:
                    client_log.info("session %s (%s): %s: %s", sid, client, e.code, e)
                    await send(error(e))
                    if e.fatal:
                        break
                    continue
                except Exception:  # a bug must not take other sessions down
                    log.exception("session %s: internal error", sid)
                    await send(error(ProtocolError("internal", "internal server error; the server log has the details")))
                    continue
                if reply is not None:
                    await send(reply)
                    if reply.get("name") == "session_closed":
                        break
            elif msg.type == WSMsgType.BINARY:
                await send(error(ProtocolError("bad_json", "binary messages are not part of the protocol; send JSON text")))
            elif msg.type == WSMsgType.ERROR:
                log.info("session %s: websocket error %s", sid, ws.exception())
                break
            else:  # CLOSE, CLOSING, CLOSED
                break
    finally:
        if handle is not None:
            await handle.close()
        sessions.pop(sid, None)
        stages.end(stage_id)
        for what in held:
            limits.give(what, client)
        if not ws.closed:
            await ws.close()
    return ws


__all__ = ["PROTOCOL_VERSION", "build_app"]
