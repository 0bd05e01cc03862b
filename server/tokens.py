"""Access tokens: roles in signed, expiring JWTs (PyJWT, HS256), like LiveKit's grants.

- ``presenter``: may start a stage (the page's Start), upload photo avatars, and use and remove
  the photo avatars registered under its own subject (``sub``);
- ``viewer``: may watch one named stage (``stage`` claim) or, without one, any stage;
- ``admin``: everything, plus ``/stats``, ``/metrics`` and minting tokens.

The signing secret is ``[server] token_secret`` or, when that is empty, a random one kept in the
data directory (``token_secret``, mode 0600), so tokens outlive a restart. Whether tokens are
required is ``[server] auth``: ``auto`` (the default) requires them whenever the server listens
on anything but loopback, so ``make serve`` on 127.0.0.1 stays frictionless.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from server.errors import AvatarError

ROLES = ("presenter", "viewer", "admin")
ISSUER = "avatar-server"
ALGORITHM = "HS256"
MAX_TTL_S = 366 * 24 * 3600  # s, the longest a token may live


class AccessError(AvatarError):
    """A request without the right token; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Grant:
    """What a verified token allows."""

    role: str
    stage: str | None  # a viewer's stage (None: any)
    subject: str  # who it was issued to (free text)
    expires: int  # Unix time, s

    def allows(self, need: str, stage: str | None = None) -> bool:
        """Whether this grant covers role ``need`` (on ``stage``, for viewers)."""
        if self.role == "admin":
            return True
        if need == "viewer":
            return self.role == "presenter" or (self.role == "viewer" and (self.stage is None or self.stage == stage))
        return self.role == need

    def owns(self, owner: str) -> bool:
        """Whether this grant may use and remove a photo avatar registered by ``owner``: its
        own (same subject), or any for an admin."""
        return self.role == "admin" or (bool(owner) and self.subject == owner)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address or name) is this machine only."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_secret(configured: str, data_dir: Path) -> bytes:
    """The signing secret: the configured one, or the data directory's (made on first use)."""
    if configured:
        if len(configured) < 32:
            raise AvatarError(f"[server] token_secret must be at least 32 characters, got {len(configured)}")
        return configured.encode()
    path = data_dir / "token_secret"
    if path.exists():
        return path.read_bytes().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(value)
    return value


class TokenIssuer:
    """Mints and verifies tokens with one secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def create(self, role: str, *, stage: str | None = None, ttl_s: float = 24 * 3600, subject: str = "") -> str:
        """A signed token for ``role`` (and ``stage`` for a viewer) valid ``ttl_s`` seconds."""
        if role not in ROLES:
            raise AvatarError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if not 1 <= ttl_s <= MAX_TTL_S:
            raise AvatarError(f"token lifetime must be 1 s..{MAX_TTL_S} s, got {ttl_s!r}")
        if stage is not None and role != "viewer":
            raise AvatarError(f"only viewer tokens name a stage (role {role!r})")
        now = int(time.time())
        # A token issued to nobody in particular is its own subject: two such presenters never
        # share the photo avatars each registered.
        sub = subject[:80] or f"{role}-{secrets.token_hex(6)}"
        claims: dict[str, object] = {"iss": ISSUER, "iat": now, "exp": now + int(ttl_s), "role": role, "sub": sub}
        if stage is not None:
            claims["stage"] = stage
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> Grant:
        """The grant of a valid token; :class:`AccessError` saying what is wrong otherwise."""
        if not token:
            raise AccessError("this server needs an access token (?token=... in the link, or Authorization: Bearer)")
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], issuer=ISSUER, options={"require": ["exp", "iat", "role"]})
        except jwt.ExpiredSignatureError as e:
            raise AccessError("the access token has expired; ask for a new link") from e
        except jwt.InvalidTokenError as e:
            raise AccessError(f"the access token is not valid here ({type(e).__name__})") from e
        role = claims.get("role")
        if role not in ROLES:
            raise AccessError(f"the access token has an unknown role {str(role)[:20]!r}")
        stage = claims.get("stage")
        return Grant(str(role), str(stage) if isinstance(stage, str) else None, str(claims.get("sub", "")), int(claims["exp"]))
