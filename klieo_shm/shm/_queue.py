"""The client-side queue behind a stream (deliveries, watch changes).

The connection's reader appends items and calls :meth:`ItemQueue.wake`;
``next`` hands them out in order, raises the queue's ``error`` once it is
drained, and returns ``None`` after ``close``. Cancelling ``next`` loses no
item: an item leaves the queue only when ``next`` returns it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

from .._errors import BusError

__all__ = ["ItemQueue"]

T = TypeVar("T")


class ItemQueue(Generic[T]):
    """A ``StreamImpl``: subclasses say how to leave the broker in ``_detach``."""

    def __init__(self) -> None:
        self.items: deque[T] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.error: BusError | None = None

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def next(self) -> T | None:
        while True:
            if self.items:
                return self.items.popleft()
            if self.error is not None:
                raise self.error
            if self.closed:
                return None
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter

    def take_ready(self, n: int) -> list[T]:
        """Up to ``n`` items already queued, in order, without waiting."""
        items = self.items
        if n >= len(items):
            out = list(items)
            items.clear()
            return out
        pop = items.popleft
        return [pop() for _ in range(n)]

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.items.clear()
        self.wake()
        await self._detach()

    async def _detach(self) -> None:
        """Tell the broker this stream is gone (called once, by ``close``)."""
        raise NotImplementedError
