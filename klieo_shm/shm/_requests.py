"""``RequestReply`` over the broker, on top of ``ShmClient``.

Requests go on direct links to the serving client when the broker names
one for every server of the subject (see ``_direct``), else through the
broker; both ways the payloads travel inline in control frames (one copy
each way through a socket). ``direct=False`` (``?direct=0`` in the URL)
keeps this client off direct links both ways: its services are served
through the broker, its requests go through the broker.

Every running service is registered again on a new connection (see
``_client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Final

from .._errors import BusError, Closed, NotFound, PayloadTooLarge, Timeout
from .._handles import Service
from .._interfaces import Handler, RequestReply
from .._names import validate_subject
from .._values import NEEDS_ROUND_TRIP, _NeedsRoundTrip, as_bytes, check_duration
from ..layout import SERVICES_WORD
from ..protocol import Incoming, Request, Respond
from ._client import ShmClient, _forks
from ._direct import DirectLinks, DirectServer, ServeLink
from ._thread_links import ThreadLinks

__all__ = ["ShmRequestReply"]

log: Final = logging.getLogger("klieo_shm.shm")

Answer = Callable[[bytes, str], None]
"""Sends a handler's outcome: (reply, "") or (error message, error type name)."""


class _Svc:
    def __init__(self, owner: ShmRequestReply, svc_id: int) -> None:
        self._owner = owner
        self.svc_id = svc_id

    async def stop(self) -> None:
        await self._owner._unserve(self.svc_id)


class ShmRequestReply(RequestReply):
    """Request/reply over one ``ShmClient``, on direct links where it can
    (see the module docstring)."""

    def __init__(self, client: ShmClient, direct: bool = True) -> None:
        self._client = client
        self._handlers: dict[int, Handler] = {}
        self._subjects: dict[int, str] = {}  # svc_id -> subject, to serve again
        self._serving: dict[str, list[int]] = {}  # subject -> its svc_ids here
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._valid: set[str] = set()  # subjects already validated
        self._direct = direct
        self._listener = DirectServer(self._on_direct)
        self._links = DirectLinks()
        self._thread_links = ThreadLinks()
        self._fork = _forks[0]
        # where the servers of a subject are: direct addresses, or None
        # (through the broker); good while the services epoch and the
        # connection stay what they were when the broker said so
        self._routes: dict[str, list[str] | None] = {}
        self._epoch = -1
        self._gen = -1
        self._rr = 0  # round robin over a route's servers
        self._rr_serve = 0  # round robin over this client's services of a subject
        self._uid = os.getuid()
        client.on_incoming = self._on_incoming
        client.also_awaiting = self._awaiting

    def _awaiting(self) -> bool:
        if self._fork != _forks[0]:
            return False  # the parent's requests and services, not ours
        return self._links.pending > 0 or time.perf_counter() < self._listener.hot_until

    def _check_fork(self) -> None:
        if self._fork != _forks[0]:  # a forked child: the parent's links are not ours
            self._fork = _forks[0]
            self._listener.forget()
            self._links.forget()
            self._thread_links = ThreadLinks()  # its lock may have been held at the fork
            self._routes.clear()

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        if subject not in self._valid:
            validate_subject(subject)
            if len(self._valid) >= 10000:
                self._valid.clear()
            self._valid.add(subject)
        data = payload if type(payload) is bytes else as_bytes(payload)
        timeout = check_duration("timeout", timeout)
        client = self._client
        if not client.connected:
            await client.ensure()
        if len(data) > client.max_payload:
            raise PayloadTooLarge(len(data), client.max_payload)
        try:
            if self._direct:
                loop = client.loop()
                deadline = loop.time() + timeout
                value = await self._request_direct(subject, data, loop, deadline)
                if value is not None:
                    return value
                # the rest of the time goes through the broker
                value = await client.request(subject, data, _left(loop, deadline))
            else:
                value = await client.request(subject, data, timeout)
        except TimeoutError:
            raise Timeout(f"request on {subject!r}", timeout) from None
        if not isinstance(value, bytes):  # a Result, not a Reply, answered it
            raise BusError(f"malformed reply to request on {subject!r}")
        return value

    def request_local(
        self, subject: str, payload: bytes, timeout: float, spin_us: float = 0.0
    ) -> bytes | _NeedsRoundTrip:
        """``request`` from any thread, without the event loop, on a direct
        route this bus already knows (polling for up to ``spin_us`` before
        it blocks); ``NEEDS_ROUND_TRIP``, with nothing run, when only the
        loop can do it (no route known or still good, a link that cannot be
        opened, a server that stopped serving the subject...). Only reads
        what the loop keeps: routes are looked up and kept on the loop."""
        client = self._client
        if (
            not self._direct
            or type(subject) is not str
            or type(payload) is not bytes
            or subject not in self._valid
            or self._fork != _forks[0]
            or not client.connected
            or client.gen != self._gen
            or client.store_words[SERVICES_WORD] != self._epoch
            or len(payload) > client.max_payload
        ):
            return NEEDS_ROUND_TRIP
        route = self._routes.get(subject)
        if not route:
            return NEEDS_ROUND_TRIP
        timeout = check_duration("timeout", timeout)
        self._rr += 1
        address = route[self._rr % len(route)]
        try:
            value = self._thread_links.request(
                address, subject, payload, timeout, client.max_frame, spin_us
            )
        except TimeoutError:
            raise Timeout(f"request on {subject!r}", timeout) from None
        if value is NEEDS_ROUND_TRIP:
            self._routes.pop(subject, None)  # not there any more: ask the broker
        return value

    async def _request_direct(
        self, subject: str, data: bytes, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> bytes | None:
        """The reply over a direct link, or ``None`` when the request is to
        go through the broker (nothing ran). ``TimeoutError`` at ``deadline``
        (``loop`` time), asking the broker for the route included."""
        client = self._client
        epoch = client.store_words[SERVICES_WORD]
        if epoch != self._epoch or client.gen != self._gen or self._fork != _forks[0]:
            self._check_fork()
            self._routes.clear()
            self._epoch, self._gen = epoch, client.gen
        route = self._routes.get(subject, _UNKNOWN)
        if route is _UNKNOWN:
            route = await self._route(subject, _left(loop, deadline))
        if not route:
            return None
        self._rr += 1
        address = route[self._rr % len(route)]
        value = await self._links.request(
            address, subject, data, _left(loop, deadline), client.max_frame
        )
        if value is None:  # not there any more: ask the broker next time
            self._routes.pop(subject, None)
        return value

    async def _route(self, subject: str, timeout: float) -> list[str] | None:
        """Ask the broker where the servers of ``subject`` are (``NotFound``
        when nobody serves it; ``TimeoutError`` after ``timeout`` seconds),
        and keep the answer while it holds."""
        gen = self._client.gen
        answer = await self._client.call("route", {"subject": subject}, timeout)
        epoch, direct = answer["epoch"], answer["direct"]
        route: list[str] | None = None
        if direct and all(uid == self._uid for _, uid in direct):
            route = [address for address, _ in direct]
        if gen == self._gen == self._client.gen and epoch >= self._epoch:
            if epoch > self._epoch:  # what else was kept is older than this
                self._routes.clear()
                self._epoch = epoch
            self._routes[subject] = route
        return route

    async def serve(self, subject: str, handler: Handler) -> Service:
        validate_subject(subject)
        if not callable(handler):
            raise TypeError("handler must be callable")
        await self._client.ensure()
        svc_id = next(self._ids)
        self._handlers[svc_id] = handler
        self._subjects[svc_id] = subject
        self._serving.setdefault(subject, []).append(svc_id)
        try:
            await self._client.call("serve", await self._serve_args(svc_id, subject))
        except BaseException:
            self._forget(svc_id)
            raise
        return Service(subject, _Svc(self, svc_id))

    async def _serve_args(self, svc_id: int, subject: str) -> dict[str, Any]:
        args: dict[str, Any] = {"subject": subject, "svc_id": svc_id}
        if self._direct:
            self._check_fork()
            args["direct"] = await self._listener.start(self._client.max_frame)
        return args

    def _forget(self, svc_id: int) -> Handler | None:
        subject = self._subjects.pop(svc_id, None)
        if subject is not None:
            ids = self._serving.get(subject, [])
            if svc_id in ids:
                ids.remove(svc_id)
            if not ids:
                self._serving.pop(subject, None)
        return self._handlers.pop(svc_id, None)

    async def _unserve(self, svc_id: int) -> None:
        if self._forget(svc_id) is None:
            return
        if self._client.connected:
            with contextlib.suppress(Closed, BusError):
                await self._client.call("unserve", {"svc_id": svc_id})

    # --- answering -----------------------------------------------------------------
    def _on_incoming(self, ev: Incoming) -> None:
        """A request that came through the broker."""
        gen, req_id = self._client.gen, ev.req_id

        def answer(payload: bytes, error_type: str) -> None:
            self._reply(gen, Respond(req_id, payload, error_type))

        handler = self._handlers.get(ev.svc_id)
        if handler is None:
            answer(b"service stopped", "Closed")
        else:
            self._run(handler, ev.payload, answer)

    def _on_direct(self, link: ServeLink, ev: Request) -> None:
        """A request that came on a direct link."""
        ids = self._serving.get(ev.subject)
        if not ids:  # stopped meanwhile: its requester asks the broker
            link.fail(ev.call_id, NotFound("server for subject", ev.subject))
            return
        self._rr_serve += 1
        handler = self._handlers[ids[self._rr_serve % len(ids)]]
        call_id, subject = ev.call_id, ev.subject
        self._run(handler, ev.payload, lambda p, e: link.answer(call_id, subject, p, e))

    def _run(self, handler: Handler, payload: bytes, answer: Answer) -> None:
        try:
            out = handler(payload)
        except Exception as exc:
            answer(str(exc).encode(), type(exc).__name__)
            return
        if inspect.isawaitable(out):
            task = asyncio.ensure_future(self._finish(out, answer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._outcome(out, answer)

    async def _finish(self, out: Any, answer: Answer) -> None:
        try:
            value = await out
        except Exception as exc:
            answer(str(exc).encode(), type(exc).__name__)
            return
        self._outcome(value, answer)

    def _outcome(self, value: object, answer: Answer) -> None:
        try:
            data = as_bytes(value, "reply")
            if len(data) > self._client.max_payload:
                raise PayloadTooLarge(len(data), self._client.max_payload)
        except BusError as exc:
            answer(str(exc).encode(), type(exc).__name__)
            return
        answer(data, "")

    def _reply(self, gen: int, resp: Respond) -> None:
        """Answer on the connection the request came on (``gen``: its
        generation); a reply for a lost connection goes nowhere (the broker
        failed the request when the connection went)."""
        client = self._client
        if client.current(gen):
            with contextlib.suppress(BusError):
                client.send(resp)

    # --- the connection's life ----------------------------------------------------
    async def restore(self) -> None:
        """On a new connection: serve every running service's subject again."""
        items = list(self._subjects.items())
        args = {svc_id: await self._serve_args(svc_id, subject) for svc_id, subject in items}
        kept = await self._client.register_again(
            items,
            lambda svc: ("serve", args[svc[0]]),
            lambda svc: ("unserve", {"svc_id": svc[0]}),
            lambda svc: svc[0] in self._subjects,
        )
        for (svc_id, subject), answer in kept:
            if isinstance(answer, BaseException):
                log.warning("service on %r could not be registered again: %s", subject, answer)
                self._forget(svc_id)

    def end_all(self) -> None:
        """Stop serving: the bus closed or gave up reconnecting. Handlers
        still running are cancelled; their replies could not go out. Direct
        links close: requests in flight on them fail with ``Closed``."""
        self._handlers.clear()
        self._subjects.clear()
        self._serving.clear()
        self._check_fork()
        self._listener.close()
        self._links.close()
        self._thread_links.close()
        self._routes.clear()
        for task in list(self._tasks):
            task.cancel()


_UNKNOWN: Final[Any] = object()


def _left(loop: asyncio.AbstractEventLoop, deadline: float) -> float:
    """Seconds to ``deadline``; ``TimeoutError`` once it passed."""
    left = deadline - loop.time()
    if left <= 0:
        raise TimeoutError
    return left
