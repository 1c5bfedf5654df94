"""Direct request links: a requester and a serving client talk without the broker.

Through the broker a request makes four hops (requester -> broker -> server
-> broker -> requester), each a wake-up of an asyncio loop. On a direct
link it makes two. The broker still decides who serves a subject:

* a serving client listens on a Unix socket in Linux's abstract namespace
  (no file to clean up; the name goes with the last descriptor) and names
  it in its ``serve`` calls;
* a requester asks the broker once where a subject's servers are
  (``route``), keeps the answer, and checks before each request that the
  services epoch in the store's header has not moved since; when it has
  (a service started or stopped somewhere), it asks again;
* the request and its reply travel on the link as ``Request`` and ``Reply``
  (or ``Result``, for an error) frames of the control protocol
  (``Connection.direct``), inline as through the broker.

What the requester sees is what it sees through the broker: a server that
dies mid-request fails it at once (EOF on the link); a server that no
longer serves the subject answers ``NotFound`` before running anything, and
the request goes through the broker instead, as it does when the link
cannot be opened. Both ends check the other's uid (``SO_PEERCRED``): a link
joins two processes of one uid only, and a requester takes a direct route
only to servers the broker lists with its uid.

Fork: a forked child lets go of its copies of the parent's listener and
links at once (``klieo_shm._inherit``), so that a parent that dies is seen
dead -- connection refused, EOF -- even while its children live on.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any, Final

from .._errors import BusError, Closed, HandlerError, NotFound, ProtocolError
from .._inherit import hold, let_go
from .._peercred import peer_credentials
from ..protocol import (
    CLOSED,
    NEED_DATA,
    Connection,
    Event,
    LocalProtocolError,
    Reply,
    Request,
    Result,
)
from ..protocol._wire_errors import error_from_wire, error_to_wire

__all__ = [
    "HOT_FOR",
    "MAX_ERROR_MESSAGE",
    "READ_SIZE",
    "DirectLinks",
    "DirectServer",
    "LinkGone",
    "ServeLink",
    "peer_is_us",
]

READ_SIZE: Final = 64 << 10
"""Bytes a link reads at once."""
MAX_ERROR_MESSAGE: Final = 4096
"""Bytes of a handler's error message that reach the requester."""
HOT_FOR: Final = 0.001
"""Seconds after a direct request during which its server counts as busy:
on a spinning loop it spins while waiting for the next one."""


def peer_is_us(sock: socket.socket | Any) -> bool:
    """Whether the peer of the connected Unix socket ``sock`` runs as our uid."""
    try:
        return peer_credentials(sock)[1] == os.getuid()
    except OSError:
        return False


class _Stream(asyncio.BufferedProtocol):
    """Reads into one buffer allocated once and feeds ``on_data``; tells
    ``on_lost`` when the connection ends. With ``check_peer`` it closes a
    connection whose peer runs as another uid at once."""

    def __init__(
        self,
        on_data: Callable[[memoryview], None],
        on_lost: Callable[[], None],
        check_peer: bool = False,
    ) -> None:
        self.on_data = on_data
        self.on_lost = on_lost
        self.check_peer = check_peer
        self.fd = -1
        self.transport: asyncio.Transport | None = None
        self._view = memoryview(bytearray(READ_SIZE))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno()
        hold(self.fd)
        if self.check_peer and not peer_is_us(sock):
            transport.abort()

    def abort(self) -> None:
        """Close the connection now (``on_lost`` follows)."""
        if self.transport is not None:
            self.transport.abort()

    def feed(self, conn: Connection, data: memoryview, on_event: Callable[[Any], None]) -> None:
        """Feed ``data`` to ``conn`` and hand each complete event to
        ``on_event``; a frame that ends the link (or breaks the protocol)
        closes it."""
        try:
            conn.receive_data(data)
            while True:
                ev = conn.next_event()
                if ev is NEED_DATA:
                    return
                if ev is CLOSED:
                    break
                on_event(ev)
        except ProtocolError:
            pass
        self.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.on_data(self._view[:nbytes])

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        let_go(self.fd)  # asyncio closes the socket after this returns
        self.on_lost()


# --- the requester's side ------------------------------------------------------
class LinkGone(Exception):
    """The link ended with the call in flight."""


class _Link:
    __slots__ = ("address", "calls", "conn", "ids", "stream")

    def __init__(self, address: str, max_frame: int) -> None:
        self.address = address
        self.conn = Connection.direct("client", max_frame)
        self.calls: dict[int, asyncio.Future[Any]] = {}
        self.ids = 0
        self.stream: _Stream | None = None

    def on_data(self, data: memoryview) -> None:
        if self.stream is not None:
            self.stream.feed(self.conn, data, self._answered)

    def _answered(self, ev: Reply | Result) -> None:
        """A call's answer: the reply's payload, or the ``Result`` of an error."""
        fut = self.calls.pop(ev.call_id, None)
        if fut is not None and not fut.done():
            fut.set_result(ev.payload if type(ev) is Reply else ev)

    def stream_for(self, on_lost: Callable[[_Link], None]) -> _Stream:
        """The protocol of this link's connection (closed at once if the
        listener runs as another uid: an abstract name is anybody's to take
        once its owner let it go)."""
        self.stream = _Stream(self.on_data, lambda: on_lost(self), True)
        return self.stream

    def abort(self) -> None:
        if self.stream is not None:
            self.stream.abort()

    def fail_all(self) -> None:
        calls, self.calls = self.calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(LinkGone())


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class DirectLinks:
    """A requester's links, one per serving client's address, opened on
    first use and dropped when they end."""

    def __init__(self) -> None:
        self._links: dict[str, _Link] = {}
        self._opening: dict[str, asyncio.Future[_Link | None]] = {}
        self._closed = False
        self.pending = 0
        """Requests awaiting their reply on a link."""

    async def request(
        self,
        address: str,
        subject: str,
        payload: bytes,
        timeout: float,
        max_frame: int,
    ) -> bytes | None:
        """The reply to ``payload`` from the server at ``address``, or
        ``None`` when it could not take the request (no link, or it does not
        serve ``subject`` any more): then nothing ran, and the caller asks
        the broker. Raises ``TimeoutError`` after ``timeout`` seconds (opening
        the link included), ``Closed`` when the server went away
        mid-request, and the error a ``Result`` carries (``HandlerError``...)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        link = self._links.get(address)
        if link is not None and link.conn.max_frame != max_frame:  # the broker's limit changed
            link.abort()
            link = None
        if link is None:
            if self._closed:
                return None
            link = await asyncio.wait_for(self._open(address, max_frame), timeout)
            if link is None:
                return None
        transport = link.stream.transport if link.stream is not None else None
        if transport is None or transport.is_closing():
            return None  # ending: its loss is on its way
        link.ids += 1
        call_id = link.ids
        fut: asyncio.Future[Any] = loop.create_future()
        transport.write(link.conn.send(Request(call_id, subject, payload, timeout)))
        link.calls[call_id] = fut
        self.pending += 1
        timer = loop.call_at(deadline, _expire, fut)
        try:
            out = await fut
        except LinkGone:
            raise Closed(f"server of {subject!r}", "went away mid-request") from None
        finally:
            self.pending -= 1
            timer.cancel()
            link.calls.pop(call_id, None)
        if type(out) is bytes:
            return out
        assert isinstance(out, Result)
        exc = error_from_wire(out.error_type, out.error_args)
        if isinstance(exc, NotFound):
            return None
        raise exc

    async def _open(self, address: str, max_frame: int) -> _Link | None:
        waiting = self._opening.get(address)
        if waiting is not None:
            return await asyncio.shield(waiting)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[_Link | None] = loop.create_future()
        self._opening[address] = done
        link = _Link(address, max_frame)
        opened: _Link | None = None
        try:
            await loop.create_unix_connection(lambda: link.stream_for(self._lost), address)
            if self._closed:  # closed while connecting: the broker path says Closed
                link.abort()
            else:
                self._links[address] = opened = link
        except OSError:  # refused: its server is gone (the broker will say so)
            pass
        finally:
            del self._opening[address]
            done.set_result(opened)
        return opened

    def _lost(self, link: _Link) -> None:
        if self._links.get(link.address) is link:
            del self._links[link.address]
        link.fail_all()

    def close(self) -> None:
        """Close every link, and open no more; requests in flight on them
        fail with ``Closed``."""
        self._closed = True
        links, self._links = self._links, {}
        for link in links.values():
            link.abort()
            link.fail_all()

    def forget(self) -> None:
        """In a forked child: drop the parent's links without touching them."""
        self._links = {}
        self._opening = {}
        self._closed = False
        self.pending = 0


# --- the serving client's side ---------------------------------------------------
class ServeLink:
    """One requester's link to this serving client: answer its requests
    with :meth:`answer`."""

    __slots__ = ("conn", "stream")

    def __init__(self, max_frame: int) -> None:
        self.conn = Connection.direct("server", max_frame)
        self.stream: _Stream | None = None

    def answer(self, call_id: int, subject: str, payload: bytes, error_type: str) -> None:
        """Reply to request ``call_id`` on ``subject``: ``payload``, or the
        handler's error (``error_type`` names it, ``payload`` holds its
        message), which the requester raises as ``HandlerError``."""
        if error_type:
            message = payload[:MAX_ERROR_MESSAGE].decode(errors="replace")
            self.fail(call_id, HandlerError(subject, error_type, message))
        elif not self._send(Reply(call_id, payload)):
            self.fail(call_id, BusError(f"the reply to a request on {subject!r} cannot be sent"))

    def fail(self, call_id: int, exc: BusError) -> None:
        """Answer request ``call_id`` with ``exc``."""
        name, args = error_to_wire(exc)
        self._send(Result(call_id, None, name, args))

    def _send(self, event: Event) -> bool:
        """Write ``event``; False when it cannot be encoded (over the frame
        limit): the link goes on."""
        stream = self.stream
        if stream is None or stream.transport is None or stream.transport.is_closing():
            return True  # the requester left: nobody waits for it
        try:
            data = self.conn.send(event)
        except LocalProtocolError:
            return False
        stream.transport.write(data)
        return True


class DirectServer:
    """A serving client's listener: hands each ``Request`` that comes on a
    link to ``on_request(link, request)``."""

    def __init__(self, on_request: Callable[[ServeLink, Request], None]) -> None:
        self.on_request = on_request
        self.address = ""
        self.hot_until = 0.0
        """``time.perf_counter()`` until which a request is likely to come."""
        self._server: asyncio.AbstractServer | None = None
        self._fd = -1
        self._links: set[ServeLink] = set()
        self._max_frame = 0

    async def start(self, max_frame: int) -> str:
        """Listen, if not yet; return the address."""
        self._max_frame = max_frame
        if self._server is not None:
            return self.address
        address = f"\0klieo-direct.{os.getpid()}.{secrets.token_hex(8)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
            # does not yield without start_serving: a concurrent start finds it
            server = await asyncio.get_running_loop().create_unix_server(
                self._accept, sock=sock, start_serving=False
            )
        except BaseException:
            sock.close()
            raise
        self._fd = sock.fileno()
        hold(self._fd)
        self._server, self.address = server, address
        await server.start_serving()  # close() undoes it, should this be cancelled
        return address

    def _accept(self) -> _Stream:
        link = ServeLink(self._max_frame)
        link.stream = _Stream(
            lambda data: self._on_data(link, data), lambda: self._links.discard(link), True
        )
        self._links.add(link)
        return link.stream

    def _on_data(self, link: ServeLink, data: memoryview) -> None:
        self.hot_until = time.perf_counter() + HOT_FOR
        if link.stream is not None:  # Connection.direct lets only Request in
            link.stream.feed(link.conn, data, lambda ev: self.on_request(link, ev))

    def close(self) -> None:
        """Stop listening and close every link (requests in flight on them
        fail at their requesters with ``Closed``)."""
        server, self._server = self._server, None
        if server is not None:
            let_go(self._fd)
            self._fd = -1
            server.close()
        self.address = ""
        links, self._links = self._links, set()
        for link in links:
            if link.stream is not None:
                link.stream.abort()

    def forget(self) -> None:
        """In a forked child: drop the parent's listener without touching it."""
        self._server = None
        self._fd = -1
        self.address = ""
        self._links = set()
