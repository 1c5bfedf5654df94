"""``RequestReply`` over the broker, on top of ``ShmClient``.

Every running service is registered again on a new connection (see
``_client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
from typing import Any, Final

from .._errors import BusError, Closed, PayloadTooLarge, Timeout
from .._handles import Service
from .._interfaces import Handler, RequestReply
from .._names import validate_subject
from .._values import as_bytes, check_duration
from ..protocol import Incoming, Respond
from ._client import ShmClient

__all__ = ["ShmRequestReply"]

log: Final = logging.getLogger("klieo_shm.shm")


class _Svc:
    def __init__(self, owner: ShmRequestReply, svc_id: int) -> None:
        self._owner = owner
        self.svc_id = svc_id

    async def stop(self) -> None:
        await self._owner._unserve(self.svc_id)


class ShmRequestReply(RequestReply):
    """Request/reply over one ``ShmClient``; payloads travel inline in
    control frames (one copy each way through the socket)."""

    def __init__(self, client: ShmClient) -> None:
        self._client = client
        self._handlers: dict[int, Handler] = {}
        self._subjects: dict[int, str] = {}  # svc_id -> subject, to serve again
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._valid: set[str] = set()  # subjects already validated
        client.on_incoming = self._on_incoming

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
            value = await client.request(subject, data, timeout)
        except TimeoutError:
            raise Timeout(f"request on {subject!r}", timeout) from None
        if not isinstance(value, bytes):  # a Result, not a Reply, answered it
            raise BusError(f"malformed reply to request on {subject!r}")
        return value

    async def serve(self, subject: str, handler: Handler) -> Service:
        validate_subject(subject)
        if not callable(handler):
            raise TypeError("handler must be callable")
        await self._client.ensure()
        svc_id = next(self._ids)
        self._handlers[svc_id] = handler
        self._subjects[svc_id] = subject
        try:
            await self._client.call("serve", {"subject": subject, "svc_id": svc_id})
        except BaseException:
            self._handlers.pop(svc_id, None)
            self._subjects.pop(svc_id, None)
            raise
        return Service(subject, _Svc(self, svc_id))

    async def _unserve(self, svc_id: int) -> None:
        self._subjects.pop(svc_id, None)
        if self._handlers.pop(svc_id, None) is None:
            return
        if self._client.connected:
            with contextlib.suppress(Closed, BusError):
                await self._client.call("unserve", {"svc_id": svc_id})

    def _on_incoming(self, ev: Incoming) -> None:
        handler = self._handlers.get(ev.svc_id)
        gen = self._client.gen
        if handler is None:
            self._reply(gen, Respond(ev.req_id, b"service stopped", "Closed"))
            return
        try:
            out = handler(ev.payload)
        except Exception as exc:
            self._reply(gen, Respond(ev.req_id, str(exc).encode(), type(exc).__name__))
            return
        if inspect.isawaitable(out):
            task = asyncio.ensure_future(self._finish(gen, ev.req_id, out))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._reply(gen, self._respond(ev.req_id, out))

    async def _finish(self, gen: int, req_id: int, out: Any) -> None:
        try:
            value = await out
        except Exception as exc:
            self._reply(gen, Respond(req_id, str(exc).encode(), type(exc).__name__))
            return
        self._reply(gen, self._respond(req_id, value))

    def _respond(self, req_id: int, value: object) -> Respond:
        try:
            data = as_bytes(value, "reply")
            if len(data) > self._client.max_payload:
                raise PayloadTooLarge(len(data), self._client.max_payload)
        except BusError as exc:
            return Respond(req_id, str(exc).encode(), type(exc).__name__)
        return Respond(req_id, data)

    def _reply(self, gen: int, resp: Respond) -> None:
        """Answer on the connection the request came on (``gen``: its
        generation); a reply for a lost connection goes nowhere (the broker
        failed the request when the connection went)."""
        client = self._client
        if client.current(gen):
            with contextlib.suppress(BusError):
                client.send(resp)

    async def restore(self) -> None:
        """On a new connection: serve every running service's subject again."""
        kept = await self._client.register_again(
            list(self._subjects.items()),
            lambda svc: ("serve", {"subject": svc[1], "svc_id": svc[0]}),
            lambda svc: ("unserve", {"svc_id": svc[0]}),
            lambda svc: svc[0] in self._subjects,
        )
        for (svc_id, subject), answer in kept:
            if isinstance(answer, BaseException):
                log.warning("service on %r could not be registered again: %s", subject, answer)
                self._handlers.pop(svc_id, None)
                self._subjects.pop(svc_id, None)

    def end_all(self) -> None:
        """Stop serving: the bus closed or gave up reconnecting. Handlers
        still running are cancelled; their replies could not go out."""
        self._handlers.clear()
        self._subjects.clear()
        for task in list(self._tasks):
            task.cancel()
