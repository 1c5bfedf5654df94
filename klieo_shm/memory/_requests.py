"""Request/reply in a memory world.

``serve`` registers a server on the serving bus's event loop. ``request``
picks one live server of the subject (round robin), records the call as in
flight at that server and starts the handler as a task on the server's loop;
the requester sleeps on a :class:`~._core.Waiter` until the call has an
outcome or its timeout passes. Outcomes are set once, under the world lock:
the reply, ``HandlerError`` from the handler, or ``Closed`` when the serving
bus closes mid-request (its handler tasks are cancelled). ``Service.stop``
only stops new requests: calls already taken still get their reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from dataclasses import dataclass, field

from .._errors import Closed, HandlerError, InvalidArgument, NotFound, Timeout
from .._handles import Service
from .._interfaces import Handler, RequestReply
from .._names import validate_subject
from .._values import check_duration
from ._core import Session, Waiter, wait_for_wake
from ._world import World, check_open

__all__ = ["MemoryRequestReply", "RequestsState"]


@dataclass(slots=True, eq=False)
class _Call:
    subject: str
    payload: bytes
    waiter: Waiter
    outcome: bytes | BaseException | None = None
    abandoned: bool = False


@dataclass(slots=True, eq=False)
class _Server:
    subject: str
    handler: Handler
    session: Session
    stopped: bool = False
    inflight: set[_Call] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class RequestsState:
    """Servers by subject and their calls in flight (guarded by ``world.lock``)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.servers: dict[str, list[_Server]] = {}
        self.by_session: dict[Session, set[_Server]] = {}
        self._turn: dict[str, int] = {}

    def pick(self, subject: str) -> _Server:
        servers = self.servers.get(subject)
        if not servers:
            raise NotFound("server for subject", subject)
        turn = self._turn.get(subject, 0)
        self._turn[subject] = turn + 1
        return servers[turn % len(servers)]

    def settle(self, server: _Server | None, call: _Call, outcome: bytes | BaseException) -> None:
        """Give ``call`` its outcome, unless it already has one or was abandoned."""
        if call.outcome is not None or call.abandoned:
            return
        call.outcome = outcome
        if server is not None:
            server.inflight.discard(call)
        call.waiter.wake()

    def stop(self, server: _Server) -> None:
        if server.stopped:
            return
        server.stopped = True
        servers = self.servers.get(server.subject, [])
        if server in servers:
            servers.remove(server)
        if not servers:
            self.servers.pop(server.subject, None)
            self._turn.pop(server.subject, None)

    def drop_session(self, session: Session) -> list[asyncio.Task[None]]:
        """Stop the session's servers and fail their calls in flight; returns
        the handler tasks to cancel (on the session's loop)."""
        tasks: list[asyncio.Task[None]] = []
        for server in self.by_session.pop(session, ()):
            self.stop(server)
            for call in list(server.inflight):
                gone = Closed(f"server for {server.subject!r}", "its bus closed mid-request")
                self.settle(server, call, gone)
            tasks.extend(server.tasks)
        return tasks

    async def cancel_tasks(self, tasks: list[asyncio.Task[None]]) -> None:
        """Cancel handler tasks; wait for those on the running loop to finish."""
        if not tasks:
            return
        loop = asyncio.get_running_loop()
        here = [t for t in tasks if t.get_loop() is loop]
        for task in tasks:
            if task in here:
                task.cancel()
            else:
                with contextlib.suppress(RuntimeError):
                    task.get_loop().call_soon_threadsafe(task.cancel)
        if here:
            await asyncio.gather(*here, return_exceptions=True)

    async def run(self, server: _Server, call: _Call) -> None:
        """Run the handler for ``call`` (a task on the server's loop)."""
        outcome: bytes | BaseException
        try:
            result = server.handler(call.payload)
            if inspect.isawaitable(result):
                result = await result
            outcome = self.world.check_payload(result, "reply")
        except Exception as exc:
            outcome = HandlerError(call.subject, type(exc).__name__, str(exc))
        with self.world.lock:
            self.settle(server, call, outcome)

    def start(self, server: _Server, call: _Call) -> None:
        """Start ``run`` on the server's loop (called there)."""
        with self.world.lock:
            if call.outcome is not None or call.abandoned:
                return
        task = asyncio.get_running_loop().create_task(self.run(server, call))
        server.tasks.add(task)
        task.add_done_callback(server.tasks.discard)


class _ServiceImpl:
    __slots__ = ("_server", "_state")

    def __init__(self, state: RequestsState, server: _Server) -> None:
        self._state = state
        self._server = server

    async def stop(self) -> None:
        with self._state.world.lock:
            self._state.stop(self._server)


class MemoryRequestReply(RequestReply):
    """``RequestReply`` of one bus on a memory world."""

    def __init__(self, world: World, session: Session) -> None:
        self._world = world
        self._state = world.requests
        self._session = session

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        validate_subject(subject)
        data = self._world.check_payload(payload)
        timeout = check_duration("timeout", timeout)
        deadline = time.monotonic() + timeout
        state = self._state
        with self._world.lock:
            check_open(self._session)
            server = state.pick(subject)
            call = _Call(subject, data, Waiter())
            server.inflight.add(call)
            self._session.waiters.add(call.waiter)
            try:
                server.session.loop.call_soon_threadsafe(state.start, server, call)
            except RuntimeError:
                gone = Closed(f"server for {subject!r}", "its event loop is closed")
                state.settle(server, call, gone)
        try:
            await wait_for_wake(call.waiter, deadline)
        finally:
            with self._world.lock:
                self._session.waiters.discard(call.waiter)
                outcome = call.outcome
                if outcome is None:
                    call.abandoned = True
                    server.inflight.discard(call)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is not None:
            return outcome
        check_open(self._session)
        raise Timeout(f"request on {subject!r}", timeout)

    async def serve(self, subject: str, handler: Handler) -> Service:
        validate_subject(subject)
        if not callable(handler):
            raise InvalidArgument("handler", handler, "must be callable")
        with self._world.lock:
            check_open(self._session)
            server = _Server(subject, handler, self._session)
            self._state.servers.setdefault(subject, []).append(server)
            self._state.by_session.setdefault(self._session, set()).add(server)
        return Service(subject, _ServiceImpl(self._state, server))
