"""Limits that hold under abuse: per-client-address counters, a rate-limited log, disk usage.

One :class:`Limits` lives on the app (``server.app.LIMITS``). Each resource (``socket``: open
signaling sockets, ``pending``: sockets without an accepted offer, ``session``: accepted
offers, ``upload``: photo uploads in progress) has a cap per client address and, for some, a
total cap. :meth:`Limits.take` answers None (taken) or a sentence saying which cap is full.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from server.config import ServerConfig


@dataclass
class Limits:
    """Counts per resource and client address, and the caps (``None``: no cap)."""

    per_client: dict[str, int | None]
    total: dict[str, int | None]
    counts: dict[str, Counter[str]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: ServerConfig) -> Limits:
        """The caps of ``[server]``."""
        return cls(
            per_client={
                "socket": cfg.max_sockets_per_client,
                "pending": None,
                "session": cfg.max_sessions_per_client,
                "upload": cfg.max_uploads_per_client,
            },
            total={"socket": None, "pending": cfg.max_pending_sockets, "session": cfg.max_sessions, "upload": cfg.max_uploads},
        )

    def count(self, what: str, client: str | None = None) -> int:
        """How many ``what`` are held (by ``client``, or by all)."""
        c = self.counts.get(what, Counter())
        return c[client] if client is not None else sum(c.values())

    def take(self, what: str, client: str) -> str | None:
        """Take one ``what`` for ``client``; None if taken, else why not (nothing taken)."""
        per, total = self.per_client.get(what), self.total.get(what)
        if per is not None and self.count(what, client) >= per:
            return f"client {client} already holds {per} {what}s (the most per client address)"
        if total is not None and self.count(what) >= total:
            return f"server holds {total} {what}s (the most it takes)"
        self.counts.setdefault(what, Counter())[client] += 1
        return None

    def give(self, what: str, client: str) -> None:
        """Give back one ``what`` that ``client`` took."""
        c = self.counts.setdefault(what, Counter())
        c[client] -= 1
        if c[client] <= 0:
            del c[client]


class RateLimitedLog:
    """At most ``per_s`` lines a second on ``logger`` (one line per client error, no traceback);
    the lines dropped are counted in the next one logged."""

    def __init__(self, logger: logging.Logger, per_s: float = 5.0) -> None:
        self.logger = logger
        self.interval = 1.0 / per_s
        self.next_t = 0.0
        self.dropped = 0

    def info(self, fmt: str, *args: object) -> None:
        """Log ``fmt % args`` at INFO unless over the rate."""
        now = time.monotonic()
        if now < self.next_t:
            self.dropped += 1
            return
        self.next_t = now + self.interval
        if self.dropped:
            fmt += f" ({self.dropped} similar lines suppressed)"
            self.dropped = 0
        self.logger.info(fmt, *args)


def dir_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 if it does not exist); links not followed."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            total += st.st_size
    return total
