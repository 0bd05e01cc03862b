"""Origin checks (CSRF and cross-site WebSocket hijacking): an aiohttp middleware.

The signaling WebSocket and every state-changing request (POST, PUT, PATCH, DELETE) are
accepted only from the server's own origin (the ``Origin`` header's scheme, host and port
equal the request's, exactly) or one listed in ``[server] allowed_origins``. A request without
an ``Origin`` header is not from a browser page (``avatar client``, curl) and is allowed;
``Origin: null`` (sandboxed frames, ``file:`` pages) is refused unless ``"null"`` is listed.
A refusal is ``403`` with a body that names the origin.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from server.errors import ConfigError

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, default port dropped; ValueError if not an origin."""
    if origin == "null":
        return origin
    url = URL(origin)
    scheme = (url.scheme or "").lower()
    if scheme not in ("http", "https") or not url.host or url.path not in ("", "/") or url.query_string or url.fragment or url.user:
        raise ValueError(f"not an http(s) origin: {origin!r}")
    host = url.host.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = url.explicit_port
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != DEFAULT_PORTS[scheme] else "")


def parse_allowed(origins: Iterable[str]) -> frozenset[str]:
    """Validate and normalize ``[server] allowed_origins``; ConfigError names a bad entry."""
    out = set()
    for o in origins:
        try:
            out.add(normalize_origin(str(o)))
        except ValueError as e:
            raise ConfigError(f"server.allowed_origins: {e} (want e.g. \"https://example.org:8443\" or \"null\")") from e
    return frozenset(out)


def request_origin(request: web.BaseRequest) -> str:
    """The origin this request was addressed to (scheme and ``Host``), normalized."""
    try:
        return normalize_origin(f"{request.scheme}://{request.host}")
    except ValueError:
        return ""


def origin_allowed(request: web.BaseRequest, allowed: frozenset[str]) -> bool:
    """Whether ``request`` may proceed (see the module docstring)."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    try:
        norm = normalize_origin(origin.strip())
    except ValueError:
        return False
    return norm in allowed or (norm != "null" and norm == request_origin(request))


def origin_middleware(allowed: frozenset[str]) -> Middleware:
    """The middleware, guarding ``/ws`` upgrades and state-changing methods."""

    @web.middleware
    async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        # WHEP is meant for players on other origins; it carries no ambient authority (a viewer's
        # offer, and when tokens are required an explicit Bearer token), so it is not guarded
        guarded = (request.method in STATE_CHANGING and not request.path.startswith("/whep/")) or \
            request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
        if guarded and not origin_allowed(request, allowed):
            shown = request.headers.get(hdrs.ORIGIN, "")[:100]
            raise web.HTTPForbidden(
                text=f"origin {shown!r} is not allowed to use this server (same origin {request_origin(request)!r} "
                "or [server] allowed_origins only)\n"
            )
        return await handler(request)

    return check_origin
