"""Who may do what: the route policy and the middleware that applies it.

Tokens come from ``Authorization: Bearer <token>`` or a ``token`` query parameter (WebSockets
and links cannot carry headers). Pages and static files are public (they hold nothing); every
endpoint that starts, watches, lists or changes something needs a role
(:mod:`server.tokens`). When access is not required (``[server] auth = "off"``, or ``auto``
on a loopback address) every request passes as ``admin``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from server.avatars import OPERATOR
from server.tokens import AccessError, Grant, TokenIssuer

log = logging.getLogger(__name__)

OPEN_GRANT = Grant("admin", None, OPERATOR, 2**62)  # what every request is when access is not required
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Access:
    """The application's access settings."""

    issuer: TokenIssuer
    required: bool


ACCESS = web.AppKey("access", Access)
GRANT = "avatar_grant"  # request key of the verified grant


def need(method: str, path: str) -> tuple[str, str | None] | None:
    """(role, stage) a request needs, or None for a public one."""
    parts = [p for p in path.split("/") if p]
    head = parts[0] if parts else ""
    if method == "OPTIONS" or head in ("", "static", "watch", "obs", "healthz") or path == "/favicon.ico":
        return None
    if head in ("whep", "stages") and len(parts) >= 2:
        return "viewer", parts[1]
    if head in ("stats", "metrics", "tokens"):
        return "admin", None
    return "presenter", None  # /ws, /avatars, /avatars/photo, and anything new


def grant_of(request: web.Request) -> Grant:
    """The request's verified grant (:data:`OPEN_GRANT` when access is not required)."""
    grant = request.get(GRANT)
    return grant if isinstance(grant, Grant) else OPEN_GRANT


def token_of(request: web.Request) -> str:
    """The request's token ('' when none)."""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query.get("token", "")


def access_middleware(access: Access) -> Middleware:
    """An aiohttp middleware refusing requests without the role their route needs: 401 for
    no or a bad token, 403 for a token of another role or stage, each with a JSON reason."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not access.required:
            request[GRANT] = OPEN_GRANT
            return await handler(request)
        wanted = need(request.method, request.path)
        if wanted is None:
            return await handler(request)
        role, stage = wanted
        try:
            grant = access.issuer.verify(token_of(request))
            if not grant.allows(role, stage):
                what = f"stage {stage}" if role == "viewer" and stage else role
                raise AccessError(f"this token ({grant.role}) does not allow {request.method} {request.path.split('?')[0][:60]}: it needs {what}", status=403)
        except AccessError as e:
            log.info("refused %s %s from %s: %s", request.method, request.path[:60], request.remote, e)
            headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else {}
            if request.path.startswith("/whep"):
                headers["Access-Control-Allow-Origin"] = "*"
            return web.json_response({"error": {"code": "unauthorized" if e.status == 401 else "forbidden", "message": str(e)}},
                                     status=e.status, headers=headers)
        request[GRANT] = grant
        return await handler(request)

    return middleware
