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

from aiohttp import WSMsgType, web

from server.access import ACCESS, Access, access_middleware
from server.avatars import AvatarRegistry
from server.clock import Clock, MonotonicClock
from server.config import ROOT, AppConfig
from server.errors import AvatarError, AvatarNotFound, ProtocolError
from server.metrics import Metrics
from server.pipeline.runner import SharedModels, load_models
from server.session import Session, sessions_summary
from server.signaling import PROTOCOL_VERSION, dispatch, error, parse_message, welcome
from server.stage.http import STAGES, add_routes
from server.tokens import TokenIssuer, is_loopback, load_secret
from server.workers import RemoteSession, WorkerPool


class LocalSession:
    """A session running in this process (``server.workers = 0``)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.sid = session.sid
        self.on_closed: Callable[[Any], Awaitable[None]] | None = None

        async def closed(s: Session) -> None:
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
SESSIONS = web.AppKey("sessions", dict[str, SessionHandle])
CLOCK = web.AppKey("clock", Clock)
COUNTER = web.AppKey("counter", Iterator[int])
METRICS = web.AppKey("metrics", Metrics)
CLIENT_DIR = ROOT / "client_web"
MAX_PHOTO_BYTES = 15 * 1024 * 1024


def build_app(cfg: AppConfig, *, clock: Clock | None = None, models: SharedModels | None = None) -> web.Application:
    """Create the application (models load at start-up unless given)."""
    access = make_access(cfg)
    app = web.Application(client_max_size=MAX_PHOTO_BYTES + 65536, middlewares=[access_middleware(access)])
    app[ACCESS] = access
    app[CONFIG] = cfg
    app[METRICS] = Metrics()
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
        yield
        sessions = list(app[SESSIONS].values())
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        if pool is not None:
            await pool.close()

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


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (admin)."""
    app = request.app
    pool = app.get(POOL)
    if pool is not None:
        parts = await pool.stats()
    else:
        parts = [sessions_summary([h.session for h in app[SESSIONS].values() if isinstance(h, LocalSession)])]
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
    if pool is not None:
        parts = await pool.stats()
    else:
        parts = [sessions_summary([h.session for h in app[SESSIONS].values() if isinstance(h, LocalSession)])]
    per = [s for p in parts for s in p["sessions"]]
    totals = {
        "sessions": len(app[SESSIONS]),
        "pcs": sum(p["pcs"] for p in parts),
        "tasks": sum(p["tasks"] for p in parts),
        "loop_tasks": len(asyncio.all_tasks()) + sum(p["loop_tasks"] for p in parts if pool is not None),
        "workers": len(parts) if pool is not None else 0,
        "worker_restarts": pool.restarts if pool is not None else 0,
        "worker_pids": [p["worker_pid"] for p in parts if "worker_pid" in p],
        "fps_mean": round(sum(p["fps"] for p in per) / len(per), 2) if per else None,
    }
    return web.json_response({"sessions": per, "totals": totals})


def _avatar_list(app: web.Application) -> list[dict[str, str]]:
    return [{"name": a.name, "kind": a.kind} for a in app[REGISTRY].list()]


async def avatars(request: web.Request) -> web.Response:
    """The avatars a session can use."""
    reg = request.app[REGISTRY]
    return web.json_response({"avatars": _avatar_list(request.app), "default": reg.default_name()})


async def add_photo(request: web.Request) -> web.Response:
    """Register a photo avatar: multipart ``image``, ``name``, ``consent_by``."""
    try:
        form = await request.post()
    except Exception as e:
        return web.json_response({"error": f"could not read the upload: {e}"}, status=400)
    image, name, consent = form.get("image"), form.get("name"), form.get("consent_by")
    if not isinstance(image, web.FileField):
        return web.json_response({"error": "no image file in the upload (field 'image')"}, status=400)
    if not isinstance(name, str) or not name.strip():
        return web.json_response({"error": "a name is required (field 'name')"}, status=400)
    consent_text = consent.strip() if isinstance(consent, str) else ""
    data = image.file.read(MAX_PHOTO_BYTES + 1)
    if len(data) > MAX_PHOTO_BYTES:
        return web.json_response({"error": f"image larger than {MAX_PHOTO_BYTES // (1 << 20)} MiB"}, status=400)
    reg = request.app[REGISTRY]
    suffix = Path(image.filename or "photo.jpg").suffix or ".jpg"

    def register() -> Any:
        with tempfile.NamedTemporaryFile(suffix=suffix) as f:
            f.write(data)
            f.flush()
            return reg.add_photo(Path(f.name), name.strip(), consent_text)

    try:
        info = await asyncio.get_running_loop().run_in_executor(None, register)
    except AvatarError as e:
        return web.json_response({"error": str(e)}, status=400)
    return web.json_response({"avatar": {"name": info.name, "kind": info.kind}})


async def remove_photo(request: web.Request) -> web.Response:
    """``DELETE /avatars/{name}``: withdraw a photo avatar (its files are deleted)."""
    name = request.match_info["name"]
    reg = request.app[REGISTRY]
    try:
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

    sessions = app[SESSIONS]
    if len(sessions) >= cfg.server.max_sessions:
        await send(error(ProtocolError("busy", f"server is full ({cfg.server.max_sessions} sessions)", fatal=True)))
        await ws.close()
        return ws
    counter: Iterator[int] = app[COUNTER]
    n = next(counter)
    sid = f"s{n}-{secrets.token_hex(3)}"
    stage_id = secrets.token_urlsafe(8)  # the watch link's secret part: unguessable
    pool = app.get(POOL)
    handle: SessionHandle
    if pool is not None:
        try:
            handle = await pool.open(sid, cfg.seed + n, send, stage_id)
        except ProtocolError as e:
            await send(error(e))
            await ws.close()
            return ws
    else:
        handle = LocalSession(Session(sid, cfg, app[MODELS], app[CLOCK], cfg.seed + n, send, stage_id))
    sessions[sid] = handle
    stages = app[STAGES]
    stages.add(stage_id, handle)

    async def closed(h: Any) -> None:
        sessions.pop(h.sid, None)
        stages.end(stage_id)
        if not ws.closed:
            await ws.close()

    handle.on_closed = closed
    try:
        access = app[ACCESS]
        viewer_token = access.issuer.create("viewer", stage=stage_id, ttl_s=12 * 3600) if access.required else None
        await send(welcome(sid, cfg, _avatar_list(app), stage_id, viewer_token))
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    reply = await handle.dispatch(parse_message(msg.data, limit))
                except ProtocolError as e:
                    await send(error(e))
                    if e.fatal:
                        break
                    continue
                except Exception as e:  # a bug must not take other sessions down
                    log.exception("session %s: internal error", sid)
                    await send(error(ProtocolError("internal", f"internal server error: {type(e).__name__}: {e}")))
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
    finally:
        await handle.close()
        sessions.pop(sid, None)
        stages.end(stage_id)
        if not ws.closed:
            await ws.close()
    return ws


__all__ = ["PROTOCOL_VERSION", "build_app"]
