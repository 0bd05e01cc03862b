"""Time-limited TURN credentials from a shared secret (coturn's ``use-auth-secret``, the
"TURN REST API" scheme of draft-uberti-behave-turn-rest-00).

The username is ``"<unix expiry>:<user>"``, the password ``base64(HMAC-SHA1(secret, username))``.
coturn, given the same ``static-auth-secret``, recomputes the password and refuses allocations
once the expiry has passed; nothing is stored or shared per call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from server.config import IceServer, ServerConfig

SERVER_SUFFIX = ".server"  # the server's own peer connection's TURN user: "<call id>.server"


def mint(secret: str, sid: str, ttl_s: int, now: float) -> tuple[str, str]:
    """(username, credential) for user ``sid``, valid ``ttl_s`` seconds after ``now`` (Unix time, s)."""
    if not secret:
        raise ValueError("TURN secret must not be empty")
    if ttl_s <= 0:
        raise ValueError(f"TURN credential lifetime must be > 0 s, got {ttl_s!r}")
    if ":" in sid:
        raise ValueError(f"TURN user must not contain ':' (coturn's separator), got {sid!r}")
    username = f"{int(now) + int(ttl_s)}:{sid}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers(cfg: ServerConfig, user: str, now: float) -> tuple[IceServer, ...]:
    """The configured ``ice_servers``, plus ``turn_urls`` with credentials minted for ``user``
    (when ``turn_secret`` is set). ``now``: Unix time, s."""
    if not cfg.turn_secret:
        return cfg.ice_servers
    username, credential = mint(cfg.turn_secret, user, cfg.turn_ttl_s, now)
    return (*cfg.ice_servers, IceServer(cfg.turn_urls, username, credential))


def ice_server_dicts(servers: tuple[IceServer, ...]) -> list[dict[str, object]]:
    """``RTCIceServer`` dictionaries for the browser (no empty username/credential keys)."""
    return [
        {"urls": list(s.urls), **({"username": s.username} if s.username else {}), **({"credential": s.credential} if s.credential else {})}
        for s in servers
    ]
