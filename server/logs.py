"""Log set-up for the server and its workers: plain text, or one JSON object per line.

JSON lines are for log collectors (journald's JSON export, Loki, Elasticsearch): every record
becomes ``{"ts", "level", "logger", "process", "msg"}`` plus ``"exc"`` (the traceback text) when
one is attached and any ``extra=`` fields given at the call. Built on the standard library's
``logging`` and ``json``: no extra dependency.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOG_FORMATS = ("text", "json")
# attributes every LogRecord has: anything else on a record came from ``extra=``
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``process`` names the emitting process ("server", "worker3")."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON (non-JSON extras as their ``str``)."""
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out: dict[str, Any] = {"ts": ts, "level": record.levelname, "logger": record.name, "process": self.process,
                               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(fmt: str = "text", *, verbose: bool = False, process: str = "server") -> None:
    """(Re)configure the root logger on stderr in ``fmt`` ("text" or "json"); aiortc/aioice at WARNING."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        name = "" if process == "server" else f"{process} "
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {name}%(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(True)  # Python warnings become records too (one line each in JSON)
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiortc").setLevel(logging.WARNING)
