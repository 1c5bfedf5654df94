"""Direct requests from a blocking caller's own thread.

The blocking flavour runs its bus on a loop thread, and every call hops to
that thread and back: 50-70 µs on a small machine before any I/O. A request
to a server whose direct route the bus already knows needs no loop: the
calling thread uses a link of its own (a blocking socket, one per thread and
server) and waits on it. Anything else answers ``NEEDS_ROUND_TRIP`` with
nothing run -- no route known yet, a link that cannot be opened, a server
that no longer serves the subject -- and the call goes through the loop.

The links of a thread live as long as the thread or the bus: closing the
bus closes them all (a thread waiting on one wakes up). A forked child lets
go of them at once (``klieo_shm._inherit``) and opens its own.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from .._errors import Closed, NotFound, ProtocolError
from .._inherit import hold, let_go
from .._values import NEEDS_ROUND_TRIP, _NeedsRoundTrip
from ..protocol import CLOSED, NEED_DATA, Connection, Reply, Request, Result
from ..protocol._wire_errors import error_from_wire
from ._client import _forks
from ._direct import READ_SIZE, LinkGone, peer_is_us

__all__ = ["ThreadLinks"]


class _Link:
    __slots__ = ("conn", "ids", "sock")

    def __init__(self, sock: socket.socket, max_frame: int) -> None:
        self.sock = sock
        self.conn = Connection.direct("client", max_frame)
        self.ids = 0


class ThreadLinks:
    """Each thread's blocking links to serving clients, by address."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()  # every thread's, for close()
        self.closed = False

    def _links(self) -> dict[str, _Link]:
        local = self._local
        if getattr(local, "fork", None) != _forks[0]:  # new thread, or a forked child
            local.links, local.fork = {}, _forks[0]
        links: dict[str, _Link] = local.links
        return links

    def request(
        self,
        address: str,
        subject: str,
        payload: bytes,
        timeout: float,
        max_frame: int,
        spin_us: float,
    ) -> bytes | _NeedsRoundTrip:
        """The reply from the server at ``address``, waited for in this
        thread (polling for up to ``spin_us`` first); ``NEEDS_ROUND_TRIP``
        when the request did not reach a server that serves ``subject``.
        Raises ``TimeoutError``, ``Closed`` when the server went away
        mid-request, and the error a ``Result`` carries."""
        if self.closed:
            return NEEDS_ROUND_TRIP
        links = self._links()
        link = links.get(address)
        if link is not None and link.conn.max_frame != max_frame:
            self._drop(links, address)
            link = None
        if link is None:
            link = self._open(address, max_frame)
            if link is None:
                return NEEDS_ROUND_TRIP
            links[address] = link
        deadline = time.monotonic() + timeout
        link.ids += 1
        call_id = link.ids
        try:
            link.sock.sendall(link.conn.send(Request(call_id, subject, payload, timeout)))
        except OSError:  # the server closed the link before it could read this
            self._drop(links, address)
            return NEEDS_ROUND_TRIP
        try:
            answer = self._wait(link, call_id, deadline, spin_us / 1e6)
        except TimeoutError:  # an OSError, but the link goes on
            raise
        except (LinkGone, ProtocolError, OSError):
            self._drop(links, address)
            why = "this bus was closed" if self.closed else "went away"
            raise Closed(f"server of {subject!r}", f"{why} mid-request") from None
        if type(answer) is Reply:
            return answer.payload
        assert isinstance(answer, Result)
        exc = error_from_wire(answer.error_type, answer.error_args)
        if isinstance(exc, NotFound):
            return NEEDS_ROUND_TRIP
        raise exc

    @staticmethod
    def _wait(link: _Link, call_id: int, deadline: float, spin: float) -> Reply | Result:
        conn, sock = link.conn, link.sock
        while True:
            ev = conn.next_event()
            if ev is NEED_DATA:
                conn.receive_data(_recv(sock, deadline, spin))
                continue
            if ev is CLOSED:
                raise LinkGone
            if isinstance(ev, Reply | Result) and ev.call_id == call_id:
                return ev
            # the answer to an earlier call of this thread that timed out

    def _open(self, address: str, max_frame: int) -> _Link | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address)
            if not peer_is_us(sock):  # an abstract name is anybody's once let go
                raise ConnectionRefusedError
        except OSError:
            sock.close()
            return None
        hold(sock.fileno())
        with self._lock:
            if self.closed:
                let_go(sock.fileno())
                sock.close()
                return None
            self._socks.add(sock)
        return _Link(sock, max_frame)

    def _drop(self, links: dict[str, _Link], address: str) -> None:
        link = links.pop(address)
        with self._lock:
            if link.sock not in self._socks:
                return  # close() closed it
            self._socks.discard(link.sock)
        let_go(link.sock.fileno())
        link.sock.close()

    def close(self) -> None:
        """Close every thread's links (a thread waiting on one wakes up with
        ``Closed``: the link is shut down before it is closed)."""
        with self._lock:
            self.closed = True
            socks, self._socks = self._socks, set()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            let_go(sock.fileno())
            sock.close()


def _recv(sock: socket.socket, deadline: float, spin: float) -> bytes:
    """The next bytes from ``sock`` (``b""`` at its end), polled for up to
    ``spin`` seconds before blocking; ``TimeoutError`` at ``deadline``."""
    if spin:
        end = min(deadline, time.monotonic() + spin)
        while True:
            try:
                return sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if time.monotonic() >= end:
                    break
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock.settimeout(left)
    return sock.recv(READ_SIZE)
