"""A private event loop on a daemon thread, for the blocking flavour.

``Portal.call(coro)`` runs a coroutine on the portal's loop and blocks the
calling thread until it finishes, re-raising its exception. A portal belongs
to the process that made it: after ``fork`` the child must make its own
(``Portal.owned_here`` tells).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._errors import Closed

__all__ = ["Portal"]

T = TypeVar("T")


class Portal:
    """An event loop running on its own daemon thread until :meth:`stop`."""

    def __init__(self, name: str = "klieo-sync") -> None:
        self.pid = os.getpid()
        self._stopped = False
        self._loop = asyncio.new_event_loop()
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
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        """Stop the loop and join its thread. Idempotent; a no-op after fork."""
        if not self.owned_here or self._stopped:
            return
        self._stopped = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
