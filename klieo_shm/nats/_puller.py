"""One member of a JetStream pull consumer, pulling on demand.

nats-py's ``PullSubscription.fetch`` leaves late deliveries of a timed-out
fetch in a private queue and cannot tell which pull request a status
message ends. A :class:`Puller` instead subscribes to ``<inbox>.*`` and
sends every pull request with its own reply subject ``<inbox>.<n>``, so it
knows exactly which requests are still open:

- it pulls (batch 1) only while someone waits in :meth:`next` and no request
  is open, so a member holds at most the messages it was asked for; a
  delivery ends the open request, a status message (sent to the request's
  own reply subject) ends exactly the request it names;
- :meth:`take_ready` pulls a batch with ``no_wait`` (again only while no
  request is open): the server sends the messages it has, up to the batch,
  then ends the request with a ``404`` status; until then each delivery
  counts down the open request;
- a delivery that arrives after its waiter gave up (a timeout, a cancel)
  stays in the buffer for the next :meth:`next` — nothing is lost;
- ``408``/``404`` end a request, and so does a reconnect (the server
  forgets the requests of a connection it lost); ``409 Consumer Deleted`` and ``503`` (no
  consumer) end the member (:attr:`gone`);
- :meth:`close` unsubscribes (the server drops open pull requests whose
  reply subject lost interest) and returns the buffered deliveries, which
  the caller hands back to the consumer (``nak``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import deque
from typing import Final

from nats.aio.client import Client
from nats.aio.msg import Msg as NatsMsg
from nats.aio.subscription import Subscription

__all__ = ["MAX_PULL_BATCH", "PULL_EXPIRES", "Puller", "nak_body"]

PULL_EXPIRES: Final = 10.0
"""Longest life of one pull request, seconds."""
MAX_PULL_BATCH: Final = 256
"""Largest batch of one pull request (the server's API allows up to 256)."""

_MIN_EXPIRES: Final = 0.01


def nak_body(delay: float) -> bytes:
    """The body of a ``-NAK`` asking for redelivery after ``delay`` seconds."""
    if delay <= 0:
        return b"-NAK"
    return b"-NAK " + json.dumps({"delay": int(delay * 1e9)}).encode()


class Puller:
    """Deliveries of one consumer (``stream``/``consumer``) to one member."""

    def __init__(self, nc: Client, api_prefix: str, stream: str, consumer: str) -> None:
        self._nc = nc
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._ids = itertools.count(1)
        self._open: dict[str, float] = {}  # reply subject -> local expiry (monotonic)
        self._left: dict[str, int] = {}  # reply subject -> deliveries a batch pull still owes
        self._buffer: deque[tuple[float, NatsMsg]] = deque()
        self._changed = asyncio.Event()
        self._sub: Subscription | None = None
        self.closed = False
        self.gone = False
        """The consumer was deleted (or is missing): no more deliveries."""

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    def _wake(self) -> None:
        self._changed.set()

    async def _on_msg(self, msg: NatsMsg) -> None:
        if msg.reply.startswith("$JS.ACK."):
            # A delivery carries its own subject, not the request's: it counts
            # against the (single) open request, which a batch of 1 ends.
            self._delivered()
            self._buffer.append((time.monotonic(), msg))
        else:  # a status message: no ack subject, the status in its headers
            headers = msg.headers or {}
            status = headers.get("Status")
            if status == "100":
                return
            self._open.pop(msg.subject, None)
            self._left.pop(msg.subject, None)
            description = headers.get("Description", "")
            if status == "503" or (status == "409" and "Deleted" in description):
                self.gone = True
        self._wake()

    def _delivered(self) -> None:
        if len(self._open) != 1:  # none, or more than one (cannot tell which): end them
            self._open.clear()
            self._left.clear()
            return
        reply = next(iter(self._open))
        left = self._left.pop(reply, 1) - 1
        if left > 0:
            self._left[reply] = left
        else:
            del self._open[reply]

    def reconnected(self) -> None:
        """The connection came back: open pull requests died with the old one."""
        self._open.clear()
        self._left.clear()
        self._wake()

    def _expire_open(self) -> None:
        now = time.monotonic()
        for reply, expiry in list(self._open.items()):
            if expiry < now:  # its end status never came (e.g. a server restart)
                del self._open[reply]
                self._left.pop(reply, None)

    async def _pull(self, expires: float, batch: int = 1, no_wait: bool = False) -> str:
        reply = f"{self._inbox}.{next(self._ids)}"
        expires = max(expires, _MIN_EXPIRES)
        self._open[reply] = time.monotonic() + expires + 2.0
        if batch > 1:
            self._left[reply] = batch
        request: dict[str, object] = {"batch": batch}
        if no_wait:
            # no ``expires``: with it the server holds a no_wait pull that
            # finds nothing until it expires (nats-server 2.15), instead of
            # answering 404 at once
            request["no_wait"] = True
        else:
            request["expires"] = int(expires * 1e9)
        await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=reply)
        return reply

    def take_buffered(self, n: int) -> list[tuple[float, NatsMsg]]:
        """Up to ``n`` deliveries that have arrived already (no pull)."""
        buffer = self._buffer
        out: list[tuple[float, NatsMsg]] = []
        while buffer and len(out) < n and not self.closed:
            out.append(buffer.popleft())
        return out

    async def take_ready(self, n: int, wait: float) -> list[tuple[float, NatsMsg]]:
        """Up to ``n`` deliveries without waiting for new messages: the
        buffered ones, then what one ``no_wait`` pull of the rest brings (if
        no request is open), waiting at most ``wait`` seconds for the server
        to end that pull. Deliveries of the pull that come later stay in the
        buffer, as those of a timed-out :meth:`next` do."""
        buffer = self._buffer
        out: list[tuple[float, NatsMsg]] = []
        while buffer and len(out) < n:
            out.append(buffer.popleft())
        if len(out) < n and not self._open and not self.closed and not self.gone:
            reply = await self._pull(wait, min(n - len(out), MAX_PULL_BATCH), no_wait=True)
            deadline = time.monotonic() + wait
            while True:
                self._changed.clear()  # before looking: a later wake-up is kept
                remaining = deadline - time.monotonic()
                if reply not in self._open or self.closed or self.gone or remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
            while buffer and len(out) < n:
                out.append(buffer.popleft())
        return out

    async def next(self, wait: float | None) -> tuple[float, NatsMsg] | None:
        """The next delivery and its arrival time (``time.monotonic``), waiting
        up to ``wait`` seconds (``None``: until one comes or the member ends).
        ``None`` on timeout, after :meth:`close`, or once :attr:`gone`."""
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            self._changed.clear()  # before looking: a later wake-up is kept
            if self.closed:
                return None
            if self._buffer:
                return self._buffer.popleft()
            if self.gone:
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._expire_open()
            if not self._open:
                # A bounded wait asks the server to end its request a little
                # before the waiter gives up, so no late delivery is left over.
                expires = PULL_EXPIRES if remaining is None else min(PULL_EXPIRES, remaining - 0.05)
                await self._pull(expires)
            bound = PULL_EXPIRES + 2.0 if remaining is None else remaining
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), bound)

    async def close(self) -> list[NatsMsg]:
        """End the membership; returns the deliveries it still buffered."""
        if self.closed:
            return []
        self.closed = True
        self._wake()
        if self._sub is not None:
            with contextlib.suppress(Exception):  # the connection may be closing
                await self._sub.unsubscribe()
        left = [msg for _, msg in self._buffer]
        self._buffer.clear()
        return left
