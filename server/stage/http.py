"""HTTP endpoints of stages: WHEP for players, the watch page, the OBS page, stage info.

- ``POST /whep/{stage}``: an ``application/sdp`` offer → ``201 Created``, ``Location:
  /whep/{stage}/{viewer}`` and the answer (ICE candidates included: no trickle needed);
- ``DELETE /whep/{stage}/{viewer}``: leave; ``PATCH`` (trickle ICE) → 405, as RFC 9725 allows;
- ``GET /stages/{stage}``: live viewer count (404 unknown, 410 ended);
- ``GET /watch/{stage}``, ``GET /obs/{stage}``: the pages.

WHEP answers carry ``Access-Control-Allow-Origin: *`` (players on other origins use it; a
viewer's offer carries no ambient authority). The stage lives in a session worker; these
handlers find its session by stage id and forward the request there.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from server.errors import ProtocolError


class StageHost(Protocol):
    """What a session handle offers its stage's endpoints."""

    def stage_request(self, action: str, data: dict[str, Any]) -> Awaitable[dict[str, Any]]:
        """Run one request against the session's stage (raises :class:`ProtocolError`)."""
        ...


class PendingStage:
    """A stage id handed out in a welcome whose speaker has not started yet."""

    def __init__(self, stage_id: str) -> None:
        self.stage_id = stage_id

    async def stage_request(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        """Every request: "not live yet" (409)."""
        raise ProtocolError("stage_not_live", f"the stage {self.stage_id} has not started yet: the speaker has not started the call")


class StageDirectory:
    """Live stages by id (their sessions), and the ids of recently ended ones."""

    def __init__(self, remember_ended: int = 4096) -> None:
        self.live: dict[str, StageHost] = {}
        self._ended: deque[str] = deque(maxlen=remember_ended)
        self._ended_set: set[str] = set()

    def add(self, stage_id: str, host: StageHost) -> None:
        """A session with this stage id exists now."""
        self.live[stage_id] = host

    def end(self, stage_id: str) -> None:
        """The stage is over: later requests get 410 Gone."""
        if self.live.pop(stage_id, None) is None:
            return
        if len(self._ended) == self._ended.maxlen:
            self._ended_set.discard(self._ended[0])
        self._ended.append(stage_id)
        self._ended_set.add(stage_id)

    def find(self, stage_id: str) -> StageHost:
        """The stage's session; raises 404 (never existed) or 410 (ended) with a clear body."""
        host = self.live.get(stage_id)
        if host is not None:
            return host
        if stage_id in self._ended_set:
            raise _http(410, "stage_ended", f"the stage {stage_id} has ended")
        raise _http(404, "unknown_stage", f"there is no stage {stage_id[:40]!r} on this server")


STAGES = web.AppKey("stages", StageDirectory)
CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Location"}
STATUS = {  # ProtocolError code → HTTP status
    "bad_offer": 400, "bad_request": 400, "unknown_viewer": 404, "unknown_stage": 404,
    "stage_not_live": 409, "stage_ended": 410, "stage_full": 503, "busy": 503,
}


def _http(status: int, code: str, message: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 404: web.HTTPNotFound, 405: web.HTTPMethodNotAllowed, 409: web.HTTPConflict,
           410: web.HTTPGone, 415: web.HTTPUnsupportedMediaType, 503: web.HTTPServiceUnavailable}.get(status, web.HTTPInternalServerError)
    body = f'{{"error": {{"code": "{code}", "message": {_json_str(message)}}}}}'
    if cls is web.HTTPMethodNotAllowed:
        return web.HTTPMethodNotAllowed("PATCH", ["POST", "DELETE", "OPTIONS"], text=body, content_type="application/json", headers=CORS)
    return cls(text=body, content_type="application/json", headers=CORS)


def _json_str(s: str) -> str:
    return json.dumps(s)


def _from_protocol(e: ProtocolError) -> web.HTTPException:
    return _http(STATUS.get(e.code, 500), e.code, str(e))


async def whep_offer(request: web.Request) -> web.Response:
    """``POST /whep/{stage}``: subscribe a viewer."""
    stage_id = request.match_info["stage"]
    host = request.app[STAGES].find(stage_id)
    ctype = request.content_type
    if ctype != "application/sdp":
        raise _http(415, "bad_offer", f"the offer must be sent as application/sdp, got {ctype[:60]!r}")
    if request.content_length is not None and request.content_length > 64 * 1024:
        raise _http(400, "bad_offer", "the SDP offer is larger than 65536 bytes")
    body = await request.content.read(64 * 1024 + 1)
    if len(body) > 64 * 1024:
        raise _http(400, "bad_offer", "the SDP offer is larger than 65536 bytes")
    try:
        sdp = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _http(400, "bad_offer", "the SDP offer is not UTF-8 text") from e
    try:
        alpha = request.query.get("alpha") in ("1", "true")  # colour | matte, for the OBS page
        reply = await host.stage_request("whep_offer", {"sdp": sdp, "alpha": alpha})
    except ProtocolError as e:
        raise _from_protocol(e) from e
    location = f"/whep/{stage_id}/{reply['viewer']}"
    return web.Response(status=201, text=reply["sdp"], content_type="application/sdp", headers={**CORS, "Location": location})


async def whep_delete(request: web.Request) -> web.Response:
    """``DELETE /whep/{stage}/{viewer}``: the viewer leaves."""
    host = request.app[STAGES].find(request.match_info["stage"])
    try:
        await host.stage_request("whep_delete", {"viewer": request.match_info["viewer"]})
    except ProtocolError as e:
        raise _from_protocol(e) from e
    return web.Response(status=200, headers=CORS)


async def whep_patch(request: web.Request) -> web.Response:
    """Trickle ICE is not supported: the answer already holds every candidate."""
    raise _http(405, "bad_request", "trickle ICE is not supported: send the offer with its candidates")


async def whep_options(request: web.Request) -> web.Response:
    """CORS preflight for players on other origins."""
    return web.Response(status=204, headers={
        **CORS, "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type, Authorization",
    })


async def stage_info(request: web.Request) -> web.Response:
    """``GET /stages/{stage}``: whether it is live and how many watch."""
    stage_id = request.match_info["stage"]
    host = request.app[STAGES].find(stage_id)
    try:
        info = await host.stage_request("info", {})
    except ProtocolError as e:
        if e.code == "stage_not_live":
            return web.json_response({"stage": stage_id, "live": False, "viewers": 0}, headers=CORS)
        raise _from_protocol(e) from e
    return web.json_response({"stage": stage_id, "live": True, "viewers": info.get("viewers", 0)}, headers=CORS)


def page_handler(page: Path) -> Any:
    """A handler serving one page of client_web for any stage id."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    return handler


def add_routes(app: web.Application, client_dir: Path) -> None:
    """Register the stage endpoints and pages on ``app`` (sets ``app[STAGES]``)."""
    app[STAGES] = StageDirectory()
    app.router.add_post("/whep/{stage}", whep_offer)
    app.router.add_route("OPTIONS", "/whep/{stage}", whep_options)
    app.router.add_route("OPTIONS", "/whep/{stage}/{viewer}", whep_options)
    app.router.add_delete("/whep/{stage}/{viewer}", whep_delete)
    app.router.add_patch("/whep/{stage}/{viewer}", whep_patch)
    app.router.add_get("/stages/{stage}", stage_info)
    app.router.add_get("/watch/{stage}", page_handler(client_dir / "watch.html"))
    app.router.add_get("/obs/{stage}", page_handler(client_dir / "obs.html"))
