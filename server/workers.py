"""Session worker processes: WebRTC media for many sessions without one GIL.

The server process keeps HTTP and signaling; each session's peer connection, pipeline and
rendering live in one of N worker processes (spawned, each loading the shared models once).
Signaling messages, already validated, are forwarded over a pipe; replies, events and
"session closed" notices come back. A worker that dies takes only its own sessions down:
their clients get a fatal ``internal`` error, and a fresh worker replaces it.

Messages on the pipe are dicts with an ``op``:

main → worker: ``open`` (sid, seed), ``dispatch`` (id, sid, msg), ``close`` (sid),
``stats`` (id), ``shutdown``.
worker → main: ``ready``, ``reply`` (id, reply | error), ``event`` (sid, msg), ``closed`` (sid),
``stats`` (id, data).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import multiprocessing as mp
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from server.config import AppConfig
from server.errors import ProtocolError
from server.heap import HeapTrimmer

log = logging.getLogger(__name__)

SendJson = Callable[[dict[str, Any]], Awaitable[None]]


# ------------------------------------------------------------------------------- worker side


def worker_main(cfg: AppConfig, conn: Connection, index: int) -> None:
    """Entry point of a worker process."""
    from server.logs import setup_logging

    setup_logging(cfg.server.log_format, process=f"worker{index}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_Worker(cfg, conn, index).run())


async def warm_up(cfg: AppConfig, models: Any) -> None:
    """Pay the first-session costs up front (lazy imports, codec and renderer set-up, aiortc's
    first offer/answer), so the first caller's avatar appears as fast as later ones'."""
    import av
    from aiortc import RTCConfiguration, RTCPeerConnection

    from server.media.vp8 import RenderedVp8Encoder
    from server.pipeline.runner import AvatarPipeline

    loop = asyncio.get_running_loop()
    size = (cfg.video.width, cfg.video.height)

    def frame_path() -> None:
        renderer = models.registry.create(models.registry.default_name(), size)
        yuv, _, _ = AvatarPipeline(models, cfg, 0, renderer).produce(0.0)
        RenderedVp8Encoder(cfg.video.vp8_cpu_used, cfg.video.max_bitrate_kbps * 1000).encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p"))

    await loop.run_in_executor(None, frame_path)
    a, b = RTCPeerConnection(RTCConfiguration(iceServers=[])), RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        a.addTransceiver("audio", direction="sendonly")
        a.addTransceiver("video", direction="recvonly")
        a.createDataChannel("visemes")
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
    finally:
        await a.close()
        await b.close()


class _Worker:
    def __init__(self, cfg: AppConfig, conn: Connection, index: int) -> None:
        self.cfg = cfg
        self.conn = conn
        self.index = index
        self.sessions: dict[str, Any] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.trimmer = HeapTrimmer()  # a finished session's memory goes back to the OS

    def send(self, msg: dict[str, Any]) -> None:
        try:
            self.conn.send(msg)
        except (BrokenPipeError, OSError):  # the server is gone; we are shutting down
            pass

    def _readable(self) -> None:
        try:
            self.inbox.put_nowait(self.conn.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            self.inbox.put_nowait(None)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        from server.clock import MonotonicClock
        from server.pipeline.runner import load_models

        loop = asyncio.get_running_loop()
        models = await loop.run_in_executor(None, load_models, self.cfg)
        await warm_up(self.cfg, models)
        gc.collect()
        gc.freeze()  # what start-up made lives as long as the worker: later full collections skip it
        clock = MonotonicClock()
        loop.add_reader(self.conn.fileno(), self._readable)
        self.send({"op": "ready", "pid": os.getpid()})
        try:
            while True:
                msg = await self.inbox.get()
                if msg is None or msg["op"] == "shutdown":
                    break
                op = msg["op"]
                if op == "open":
                    self._open(msg["sid"], int(msg["seed"]), models, clock, msg.get("stage"))
                elif op == "dispatch":
                    self.spawn(self._dispatch(msg))
                elif op == "stage":
                    self.spawn(self._stage_request(msg))
                elif op == "close":
                    session = self.sessions.get(msg["sid"])
                    if session is not None:
                        self.spawn(session.close())
                elif op == "stats":
                    self.send({"op": "stats", "id": msg["id"], "data": self._stats()})
        finally:
            await asyncio.gather(*(s.close() for s in list(self.sessions.values())), return_exceptions=True)
            for t in list(self.tasks):
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.trimmer.close()

    def _open(self, sid: str, seed: int, models: Any, clock: Any, stage_id: str | None = None) -> None:
        from server.session import Session

        async def send_event(msg: dict[str, Any]) -> None:
            self.send({"op": "event", "sid": sid, "msg": msg})

        session = Session(sid, self.cfg, models, clock, seed, send_event, stage_id)

        async def closed(s: Session) -> None:
            self.sessions.pop(s.sid, None)
            self.locks.pop(s.sid, None)
            self.send({"op": "closed", "sid": s.sid})
            self.trimmer.soon()

        session.on_closed = closed
        self.sessions[sid] = session
        self.locks[sid] = asyncio.Lock()

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        from server.signaling import dispatch

        sid, rid = msg["sid"], msg["id"]
        session, lock = self.sessions.get(sid), self.locks.get(sid)
        if session is None or lock is None:
            self.send({"op": "reply", "id": rid, "error": {"code": "state", "message": f"session {sid} is closed", "fatal": True}})
            return
        async with lock:  # one session's messages run in order
            await self._reply(rid, sid, dispatch(session, msg["msg"]))

    async def _reply(self, rid: int, sid: str, work: Awaitable[dict[str, Any] | None]) -> None:
        """Await ``work`` and send its reply, or its error (an unexpected one as ``internal``)."""
        try:
            reply = await work
        except ProtocolError as e:
            self.send({"op": "reply", "id": rid, "error": {"code": e.code, "message": str(e), "fatal": e.fatal}})
            return
        except Exception:
            log.exception("session %s: internal error", sid)
            self.send({"op": "reply", "id": rid, "error": {"code": "internal", "message": "internal server error; the server log has the details", "fatal": False}})
            return
        self.send({"op": "reply", "id": rid, "reply": reply})

    async def _stage_request(self, msg: dict[str, Any]) -> None:
        """A request for a session's stage (viewers join and leave without the session's lock)."""
        sid, rid = msg["sid"], msg["id"]
        session = self.sessions.get(sid)
        if session is None:
            self.send({"op": "reply", "id": rid, "error": {"code": "stage_ended", "message": "the stage has ended", "fatal": True}})
            return
        await self._reply(rid, sid, session.stage_request(msg["action"], msg.get("data", {})))

    def _stats(self) -> dict[str, Any]:
        from server.session import sessions_summary

        summary = sessions_summary(list(self.sessions.values()), worker=self.index, worker_pid=os.getpid())
        return {**summary, "worker": self.index, "worker_pid": os.getpid()}


# ------------------------------------------------------------------------------- server side


@dataclass
class _WorkerHandle:
    index: int
    proc: Any  # multiprocessing.Process (spawn context)
    conn: Connection
    ready: asyncio.Future[None]
    sessions: dict[str, RemoteSession] = field(default_factory=dict)
    alive: bool = True
    served: int = 0  # sessions opened on this worker so far
    draining: bool = False  # being recycled: no new sessions while a replacement is ready; retired when empty
    replacement: _WorkerHandle | None = None


class RemoteSession:
    """The server-side proxy of a session running in a worker process."""

    def __init__(self, pool: WorkerPool, worker: _WorkerHandle, sid: str, send: SendJson) -> None:
        self.pool = pool
        self.worker = worker
        self.sid = sid
        self.send = send
        self.closed = asyncio.Event()
        self.on_closed: Callable[[RemoteSession], Awaitable[None]] | None = None

    async def dispatch(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """Run a validated message in the worker; raises :class:`ProtocolError` on errors."""
        result = await self.pool.request(self.worker, {"op": "dispatch", "sid": self.sid, "msg": msg})
        err = result.get("error")
        if err is not None:
            raise ProtocolError(err["code"], err["message"], fatal=bool(err.get("fatal")))
        reply: dict[str, Any] | None = result.get("reply")
        return reply

    async def stage_request(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        """Run a stage request in the worker; raises :class:`ProtocolError` on errors."""
        result = await self.pool.request(self.worker, {"op": "stage", "sid": self.sid, "action": action, "data": data})
        err = result.get("error")
        if err is not None:
            raise ProtocolError(err["code"], err["message"], fatal=bool(err.get("fatal")))
        reply: dict[str, Any] = result.get("reply") or {}
        return reply

    async def close(self) -> None:
        """Close the session in its worker and wait (bounded) until it is gone."""
        if self.worker.alive and not self.closed.is_set():
            self.pool.post(self.worker, {"op": "close", "sid": self.sid})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), timeout=10.0)
        self.worker.sessions.pop(self.sid, None)


class WorkerPool:
    """N session worker processes; sessions go to the least loaded one.

    With ``[server] worker_recycle_sessions`` = N > 0, a worker that has been given N sessions is
    recycled gracefully: a replacement starts at once and takes the new sessions as soon as it is
    ready, the old worker keeps its live sessions to their end and is then shut down (no call is
    interrupted). A safety net for memory a finished session leaves in the process that
    :mod:`server.heap` cannot give back (native libraries' caches and fragmentation).
    """

    def __init__(self, cfg: AppConfig, n: int) -> None:
        if n < 1:
            raise ValueError(f"worker count must be >= 1, got {n}")
        self.cfg = cfg
        self.n = n
        self.workers: list[_WorkerHandle] = []
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ctx = mp.get_context("spawn")
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.restarts = 0
        self.recycled = 0  # workers retired after worker_recycle_sessions sessions
        self.recycle_after = cfg.server.worker_recycle_sessions
        self._next_index = itertools.count(n)  # indexes (log names) of replacement workers

    async def start(self, timeout_s: float = 120.0) -> None:
        """Spawn the workers and wait until each has loaded its models."""
        for i in range(self.n):
            self.workers.append(self._spawn(i))
        await asyncio.wait_for(asyncio.gather(*(w.ready for w in self.workers)), timeout_s)

    def _spawn(self, index: int) -> _WorkerHandle:
        loop = asyncio.get_running_loop()
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=worker_main, args=(self.cfg, child, index), name=f"avatar-worker-{index}", daemon=True)
        proc.start()
        child.close()
        w = _WorkerHandle(index, proc, parent, loop.create_future())
        loop.add_reader(parent.fileno(), self._readable, w)
        return w

    def _readable(self, w: _WorkerHandle) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(w.conn.fileno())
            self._worker_died(w)
            return
        op = msg.get("op")
        if op == "ready":
            if not w.ready.done():
                w.ready.set_result(None)
        elif op in ("reply", "stats"):
            fut = self._pending.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif op == "event":
            s = w.sessions.get(msg["sid"])
            if s is not None:
                self._spawn_task(s.send(msg["msg"]))
        elif op == "closed":
            s = w.sessions.pop(msg["sid"], None)
            if s is not None:
                s.closed.set()
                if s.on_closed is not None:
                    self._spawn_task(s.on_closed(s))
            if w.draining and not w.sessions:
                self._spawn_task(self._retire(w))

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _worker_died(self, w: _WorkerHandle) -> None:
        if not w.alive:
            return
        w.alive = False
        if not w.ready.done():
            w.ready.set_exception(RuntimeError(f"session worker {w.index} exited during start-up (exit code {w.proc.exitcode})"))
        for fut in list(self._pending.values()):
            if not fut.done():
                fut.set_result({"error": {"code": "internal", "message": "the session worker stopped", "fatal": True}})
        sessions = list(w.sessions.values())
        w.sessions.clear()
        for s in sessions:
            s.closed.set()
            self._spawn_task(s.send({"v": 1, "type": "error", "code": "internal", "message": "the session's worker process stopped; please reconnect", "fatal": True}))
            if s.on_closed is not None:
                self._spawn_task(s.on_closed(s))
        if self._closing:
            return
        if w.draining:  # it was being recycled: its replacement is already there
            log.error("session worker %d died while being recycled (exit code %s)", w.index, w.proc.exitcode)
            self.workers.remove(w)
            return
        log.error("session worker %d died (exit code %s); starting a new one", w.index, w.proc.exitcode)
        self.restarts += 1
        self.workers[self.workers.index(w)] = self._spawn(w.index)

    def post(self, w: _WorkerHandle, msg: dict[str, Any]) -> None:
        """Send without waiting for an answer."""
        try:
            w.conn.send(msg)
        except (BrokenPipeError, OSError):
            self._worker_died(w)

    async def request(self, w: _WorkerHandle, msg: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        """Send and await the matching reply."""
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self.post(w, {**msg, "id": rid})
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            return {"error": {"code": "internal", "message": f"session worker did not answer within {timeout_s:.0f} s", "fatal": False}}
        finally:
            self._pending.pop(rid, None)

    def _ready(self) -> list[_WorkerHandle]:
        """Live workers that have loaded their models, those not being recycled first."""
        live = [w for w in self.workers if w.alive and w.ready.done() and w.ready.exception() is None]
        fresh = [w for w in live if not w.draining]
        return fresh or live  # a draining worker serves only while its replacement is still starting

    async def open(self, sid: str, seed: int, send: SendJson, stage_id: str | None = None) -> RemoteSession:
        """Create a session on the least loaded live worker (not one being recycled, if any other is ready)."""
        live = self._ready()
        if not live:
            await asyncio.gather(*(w.ready for w in self.workers if w.alive), return_exceptions=True)
            live = self._ready()
        if not live:
            raise ProtocolError("internal", "no session worker is running", fatal=True)
        w = min(live, key=lambda x: len(x.sessions))
        s = RemoteSession(self, w, sid, send)
        w.sessions[sid] = s
        w.served += 1
        self.post(w, {"op": "open", "sid": sid, "seed": seed, "stage": stage_id})
        if self.recycle_after and w.served >= self.recycle_after and not w.draining and not self._closing:
            w.draining = True
            w.replacement = self._spawn(next(self._next_index))
            self.workers.append(w.replacement)
            log.info("session worker %d has served %d sessions: recycling it once its %d live session(s) end (worker %d starting)",
                     w.index, w.served, len(w.sessions), w.replacement.index)
        return s

    async def _retire(self, w: _WorkerHandle) -> None:
        """Shut down a drained worker once its replacement is ready (or has failed to start)."""
        if w.replacement is not None:
            await asyncio.gather(w.replacement.ready, return_exceptions=True)
        if not w.alive or w.sessions or self._closing:
            return  # died meanwhile, took a session while the replacement was starting, or the pool is closing
        w.alive = False
        if w in self.workers:
            self.workers.remove(w)
        self.post(w, {"op": "shutdown"})
        await self._reap(w)
        self.recycled += 1
        log.info("session worker %d retired after %d sessions (exit code %s)", w.index, w.served, w.proc.exitcode)

    @staticmethod
    async def _reap(w: _WorkerHandle) -> None:
        """Wait for a worker told to shut down to exit (killed after 10 s), then drop its pipe."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, w.proc.join, 10.0)
        if w.proc.is_alive():
            w.proc.kill()
            await loop.run_in_executor(None, w.proc.join, 5.0)
        with contextlib.suppress(Exception):
            loop.remove_reader(w.conn.fileno())
        w.conn.close()

    async def stats(self) -> list[dict[str, Any]]:
        """Each live worker's session stats."""
        live = [w for w in self.workers if w.alive and w.ready.done()]
        results = await asyncio.gather(*(self.request(w, {"op": "stats"}, timeout_s=5.0) for w in live))
        return [r["data"] for r in results if "data" in r]

    async def close(self) -> None:
        """Shut every worker down (sessions closed cleanly), then reap the processes."""
        self._closing = True
        for w in self.workers:
            if w.alive:
                self.post(w, {"op": "shutdown"})
        for w in self.workers:
            await self._reap(w)
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
