"""Request/reply on core NATS.

- A request on ``s`` is a core NATS request on ``P.rr.s``; servers of ``s``
  subscribe in the queue group ``klieo``, so NATS gives each request to one
  of them. Nobody subscribed → NATS answers "no responders" at once →
  :class:`~klieo_shm.NotFound`.
- Each request runs in its own task, so one slow handler does not hold up
  the server's other requests.
- A handler's exception travels back as a reply with the header
  ``Klieo-Error`` (its type name) and the message as payload →
  :class:`~klieo_shm.HandlerError`.
- ``stop`` unsubscribes (and flushes, so the server stopped routing to it
  when ``stop`` returns) and then waits for the requests already taken.
- Closing the bus cancels the requests in progress and answers each with
  ``Klieo-Closed`` → the requester gets :class:`~klieo_shm.Closed` at once.
  A server process that dies without closing cannot answer: its requesters
  wait for their timeout (NATS has no per-request liveness).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import Final

import nats.errors
from nats.aio.msg import Msg as NatsMsg
from nats.aio.subscription import Subscription

from .._errors import Closed, HandlerError, InvalidArgument, NotFound
from .._handles import Service
from .._interfaces import Handler, RequestReply
from .._names import validate_subject
from .._values import as_bytes, check_duration
from ._connection import Connection
from ._errors import translated

__all__ = ["NatsRequests"]

QUEUE_GROUP: Final = "klieo"
ERROR_HEADER: Final = "Klieo-Error"
CLOSED_HEADER: Final = "Klieo-Closed"


class _Server:
    """A :class:`~klieo_shm.Service` impl: one subscription and its requests."""

    def __init__(self, owner: NatsRequests, subject: str, handler: Handler) -> None:
        self._owner = owner
        self._conn = owner.conn
        self.subject = subject
        self._handler = handler
        self._sub: Subscription | None = None
        self._tasks: dict[asyncio.Task[None], NatsMsg] = {}

    async def start(self) -> None:
        nats_subject = self._conn.ns.request_subject(self.subject)
        with translated("serve", url=self._conn.url):
            self._sub = await self._conn.nc.subscribe(
                nats_subject, queue=QUEUE_GROUP, cb=self._on_request
            )
            await self._conn.settle_interest()

    async def _on_request(self, msg: NatsMsg) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(msg))
        self._tasks[task] = msg
        task.add_done_callback(self._tasks.pop)

    async def _handle(self, msg: NatsMsg) -> None:
        headers: dict[str, str] | None = None
        try:
            result = self._handler(bytes(msg.data))
            if inspect.isawaitable(result):
                result = await result
            reply = as_bytes(result, "reply")
            if len(reply) > self._conn.max_payload:
                raise ValueError(
                    f"reply of {len(reply)} bytes is over the limit of {self._conn.max_payload}"
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            headers = {ERROR_HEADER: type(exc).__name__}
            reply = str(exc).encode("utf-8", "replace")[: self._conn.max_payload]
        if msg.reply:
            with contextlib.suppress(Exception):
                await self._conn.nc.publish(msg.reply, reply, headers=headers)

    async def _unsubscribe(self) -> None:
        if self._sub is None:
            return
        sub, self._sub = self._sub, None
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
            await self._conn.settle_interest(timeout=2)

    async def stop(self) -> None:
        self._owner.servers.discard(self)
        await self._unsubscribe()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def abort(self) -> None:
        """The bus closes: fail the requests in progress at once."""
        self._owner.servers.discard(self)
        await self._unsubscribe()
        for task, msg in list(self._tasks.items()):
            task.cancel()
            if msg.reply:
                with contextlib.suppress(Exception):
                    await self._conn.nc.publish(msg.reply, b"", headers={CLOSED_HEADER: "1"})


class NatsRequests(RequestReply):
    """:class:`~klieo_shm.RequestReply` over core NATS (see the module docstring)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.servers: set[_Server] = set()

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        validate_subject(subject)
        data = as_bytes(payload)
        timeout = check_duration("timeout", timeout, positive=True)
        self.conn.check_open()
        self.conn.check_payload(data)
        nats_subject = self.conn.ns.request_subject(subject)
        with translated("request", url=self.conn.url, timeout=timeout):
            try:
                reply = await self.conn.nc.request(nats_subject, data, timeout=timeout)
            except nats.errors.NoRespondersError as exc:
                raise NotFound("server for subject", subject) from exc
        headers = reply.headers or {}
        if CLOSED_HEADER in headers:
            raise Closed(f"service {subject!r}", "the server's bus closed mid-request")
        if ERROR_HEADER in headers:
            raise HandlerError(
                subject, headers[ERROR_HEADER], reply.data.decode("utf-8", "replace")
            )
        return bytes(reply.data)

    async def serve(self, subject: str, handler: Handler) -> Service:
        validate_subject(subject)
        if not callable(handler):
            raise InvalidArgument("handler", handler, "must be callable")
        self.conn.check_open()
        server = _Server(self, subject, handler)
        await server.start()
        self.servers.add(server)
        return Service(subject, server)

    async def shutdown(self) -> None:
        for server in list(self.servers):
            await server.abort()
