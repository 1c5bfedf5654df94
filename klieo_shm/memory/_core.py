"""Building blocks of a memory world: wake-ups across event loops, a timer
thread, and the per-bus session.

Threading model (the one rule): a world's state is guarded by its
``threading.RLock`` and is only touched with that lock held, by plain
synchronous code that never awaits and never calls user code. Buses on any
event loop, in any thread, run their operations inline under the lock.

- A coroutine that must wait registers a :class:`Waiter` (a future on its own
  loop), releases the lock and awaits it. Whoever changes the state wakes
  waiters with ``loop.call_soon_threadsafe``. A woken coroutine takes the
  lock again and re-checks: wake-ups carry no data, so a cancelled waiter
  loses nothing (items are taken only by the coroutine that returns them).
- Deadlines (ack_wait, nak delays, claim leases) fire on the world's one
  :class:`Timers` thread, which runs each callback under the world lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["Session", "Timer", "Timers", "WaitSet", "Waiter", "wait_for_wake"]

_IDLE_WAIT: Final = 3600.0
_COMPACT_AFTER: Final = 256


def _nothing() -> None:
    return None


class Waiter:
    """A one-shot wake-up for a coroutine on the loop that created it."""

    __slots__ = ("future", "loop")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[None] = self.loop.create_future()

    def wake(self) -> None:
        """Wake the waiting coroutine; callable from any thread, idempotent."""
        # A closed loop raises RuntimeError: nobody is waiting there any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._set)

    def _set(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class WaitSet:
    """Waiters for one condition ("a message is ready", "room to publish").

    :meth:`wake_all` wakes and forgets every waiter; each re-checks its
    condition and registers again if it still has to wait.
    """

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: set[Waiter] = set()

    def add(self, waiter: Waiter) -> None:
        self._waiters.add(waiter)

    def discard(self, waiter: Waiter) -> None:
        self._waiters.discard(waiter)

    def wake_all(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            waiter.wake()


async def wait_for_wake(waiter: Waiter, deadline: float | None) -> bool:
    """Await ``waiter`` until ``deadline`` (``time.monotonic``); ``False`` on timeout."""
    if deadline is None:
        await waiter.future
        return True
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    try:
        async with asyncio.timeout(remaining):
            await waiter.future
    except TimeoutError:
        return waiter.future.done()
    return True


class Timer:
    """A scheduled callback; :meth:`cancel` keeps it from running."""

    __slots__ = ("callback", "cancelled", "deadline", "owner", "seq")

    def __init__(
        self, owner: Timers, deadline: float, seq: int, callback: Callable[[], None]
    ) -> None:
        self.owner = owner
        self.deadline = deadline
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def __lt__(self, other: Timer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)

    def cancel(self) -> None:
        self.owner._cancel(self)


class Timers:
    """One heap of deadlines and one thread that runs them under ``lock``.

    The thread runs only while the timers are :meth:`enable`\\ d (a world
    enables them while a bus is attached) and there is something scheduled;
    :meth:`disable` stops and joins it. Deadlines that passed while disabled
    fire as soon as the timers are enabled again. Never call :meth:`disable`
    with ``lock`` held (the thread may be waiting for it).
    """

    def __init__(self, lock: threading.RLock, name: str) -> None:
        self._lock = lock
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[Timer] = []
        self._cancelled = 0
        self._seq = itertools.count()
        self._enabled = False
        self._thread: threading.Thread | None = None

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` (under the world lock) at ``deadline`` (monotonic)."""
        timer = Timer(self, deadline, next(self._seq), callback)
        with self._cond:
            heapq.heappush(self._heap, timer)
            if self._heap[0] is timer:
                self._cond.notify()
            self._start_if_needed()
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(time.monotonic() + delay, callback)

    def _cancel(self, timer: Timer) -> None:
        with self._cond:
            if timer.cancelled:
                return
            timer.cancelled = True
            timer.callback = _nothing  # drop references the callback holds
            self._cancelled += 1
            # Acked deliveries cancel most timers long before they are due:
            # drop them when they are most of the heap (as asyncio does).
            if self._cancelled > _COMPACT_AFTER and 2 * self._cancelled > len(self._heap):
                self._heap = [t for t in self._heap if not t.cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def enable(self) -> None:
        with self._cond:
            self._enabled = True
            self._start_if_needed()

    def disable(self) -> None:
        with self._cond:
            self._enabled = False
            thread, self._thread = self._thread, None
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _start_if_needed(self) -> None:
        if self._enabled and self._thread is None and self._heap:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while True:
                    if self._thread is not me:
                        return
                    now = time.monotonic()
                    if self._heap and self._heap[0].deadline <= now:
                        break
                    wait = self._heap[0].deadline - now if self._heap else _IDLE_WAIT
                    self._cond.wait(wait)
                due: list[Timer] = []
                while self._heap and self._heap[0].deadline <= now:
                    timer = heapq.heappop(self._heap)
                    if timer.cancelled:
                        self._cancelled -= 1
                    else:
                        due.append(timer)
            if due:
                with self._lock:
                    for timer in due:
                        if not timer.cancelled:
                            timer.callback()


class Session:
    """What one bus owns in a world; closing the bus ends all of it.

    The state modules keep their own records of what belongs to a session
    (members, services, leases, claims); a session holds only its identity,
    its ``closed`` flag and the waiters to wake when it closes.
    """

    __slots__ = ("closed", "loop", "url", "waiters")

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.waiters = WaitSet()
