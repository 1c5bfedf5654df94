"""A private event loop on a daemon thread, for the blocking flavour.

``Portal.call(coro)`` runs a coroutine on the portal's loop and blocks the
calling thread until it finishes, re-raising its exception. A portal belongs
to the process that made it: after ``fork`` the child must make its own
(``Portal.owned_here`` tells).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

from ._errors import Closed
from ._spin import SpinningEventLoop

__all__ = ["Portal"]

T = TypeVar("T")


class _Call(Generic[T]):
    """One coroutine run on the portal's loop for a blocked thread: a task
    and a bare lock, released when the task is done. Lighter than
    ``run_coroutine_threadsafe`` (no ``concurrent.futures.Future``, no
    condition variable, no chained callbacks), which matters on the hot
    path of every blocking call."""

    __slots__ = ("_coro", "_done", "_loop", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> None:
        self._loop = loop
        self._coro = coro
        self._task: asyncio.Task[T] | None = None
        self._done = threading.Lock()
        self._done.acquire()

    def _start(self) -> None:  # on the loop
        task = self._task = self._loop.create_task(self._coro)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[T]) -> None:  # on the loop
        self._done.release()

    def _cancel(self) -> None:  # on the loop
        if self._task is None:
            self._coro.close()  # never started
        else:
            self._task.cancel()

    def wait(self) -> T:
        try:
            self._loop.call_soon_threadsafe(self._start)
        except BaseException:  # the loop is closed
            self._coro.close()
            raise
        try:
            self._done.acquire()
        except BaseException:  # KeyboardInterrupt: cancel the coroutine
            self._loop.call_soon_threadsafe(self._cancel)
            raise
        task = self._task
        assert task is not None
        if task.cancelled():  # as run_coroutine_threadsafe's future reports it
            raise concurrent.futures.CancelledError()
        return task.result()


class Portal:
    """An event loop running on its own daemon thread until :meth:`stop`."""

    def __init__(self, name: str = "klieo-sync", spin_us: float = 0.0) -> None:
        self.pid = os.getpid()
        self._stopped = False
        # spin_us > 0: a SpinningEventLoop (see klieo_shm._spin)
        self._loop = SpinningEventLoop(spin_us) if spin_us else asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The portal's loop (running on another thread)."""
        return self._loop

    @property
    def owned_here(self) -> bool:
        """Whether this process made the portal (False in a forked child)."""
        return os.getpid() == self.pid

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` ended the loop (its bus was closed)."""
        return self._stopped

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the portal's loop; block until it returns or raises.

        A ``KeyboardInterrupt`` in the caller cancels the coroutine.
        """
        if not self.owned_here:
            coro.close()
            raise Closed(
                "klieo_shm blocking handle",
                f"made in process {self.pid}; a forked child must take its own handles",
            )
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking klieo_shm call was made from its own event loop")
        if self.stopped:
            coro.close()
            raise Closed("klieo_shm blocking handle", "its bus was closed")
        return _Call(self._loop, coro).wait()

    def stop(self) -> None:
        """Stop the loop and join its thread. Idempotent; a no-op after fork."""
        if not self.owned_here or self._stopped:
            return
        self._stopped = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
