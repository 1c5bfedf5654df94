"""Spinning before sleeping: lower round-trip latency for CPU time.

A process waiting for another process's answer sleeps in ``epoll_wait``;
waking it costs tens of microseconds (more on a busy or virtual machine),
on each side of every round trip. A :class:`SpinningEventLoop` first polls
(``epoll_wait`` with a zero timeout) for up to ``spin_us`` microseconds and
only then sleeps -- but only while something on it expects an answer soon:

* a ``shm://`` client on such a loop spins while one of its calls or
  publishes awaits the broker's answer (it registers itself with
  :meth:`SpinningEventLoop.spin_while` when it connects); a client waiting
  for deliveries or requests sleeps as on any loop;
* ``klieo-shmd --spin-us N`` spins after every wake-up (``always=True``).

The price: while it waits for an answer, a spinning process keeps a CPU
busy for up to ``spin_us``; an idle one sleeps. Worth it where latency
matters and there are cores to spare, not on a machine whose cores the
workers need.

Use: ``asyncio.Runner(loop_factory=klieo_shm.spinning_loop)`` (or, from
Python 3.12, ``asyncio.run(main(), loop_factory=klieo_shm.spinning_loop)``);
the blocking client spins with ``?spin_us=N`` in its URL.
"""

from __future__ import annotations

import asyncio
import math
import selectors
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import parse_qs, urlsplit

from ._errors import InvalidArgument

__all__ = [
    "DEFAULT_SPIN_US",
    "MAX_SPIN_US",
    "SpinSelector",
    "SpinningEventLoop",
    "spin_us_of",
    "spinning_loop",
]

DEFAULT_SPIN_US: Final = 100.0
"""Long enough for a broker round trip on a loaded machine."""
MAX_SPIN_US: Final = 1_000_000.0


def _check(spin_us: float) -> float:
    if not (0.0 <= spin_us <= MAX_SPIN_US and math.isfinite(spin_us)):
        raise InvalidArgument("spin_us", spin_us, f"must be between 0 and {MAX_SPIN_US:g}")
    return float(spin_us)


class SpinSelector(selectors.DefaultSelector):
    """The platform's selector (epoll on Linux), whose blocking ``select`` polls for up to ``spin``
    seconds before it sleeps, when ``always`` or when one of the
    ``spin_while`` conditions holds at the start of the wait."""

    def __init__(self, spin: float, always: bool = False) -> None:
        super().__init__()
        self.spin = spin
        self.always = always
        self._wants: list[Callable[[], bool]] = []

    def spin_while(self, want: Callable[[], bool]) -> Callable[[], None]:
        """Spin while ``want()`` is true; returns a function that undoes it."""
        self._wants.append(want)

        def undo() -> None:
            if want in self._wants:
                self._wants.remove(want)

        return undo

    @property
    def conditions(self) -> int:
        """How many ``spin_while`` conditions are registered."""
        return len(self._wants)

    def _wanted(self) -> bool:
        return self.always or any(want() for want in self._wants)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        poll = super().select
        if (timeout is not None and timeout <= 0) or not self.spin or not self._wanted():
            return poll(timeout)
        clock = time.perf_counter
        start = clock()
        end = start + (self.spin if timeout is None else min(self.spin, timeout))
        while True:
            ready = poll(0)
            if ready:
                return ready
            now = clock()
            if now >= end:
                break
        return poll(None if timeout is None else max(0.0, timeout - (now - start)))


class SpinningEventLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on a :class:`SpinSelector` (see the module docstring)."""

    def __init__(self, spin_us: float = DEFAULT_SPIN_US, *, always: bool = False) -> None:
        self.spin_selector = SpinSelector(0.0, always)
        super().__init__(self.spin_selector)
        try:
            self.spin_selector.spin = _check(spin_us) / 1e6
        except BaseException:
            self.close()
            raise

    def spin_while(self, want: Callable[[], bool]) -> Callable[[], None]:
        """Spin before sleeping while ``want()`` is true (checked before each
        wait); returns a function that undoes it."""
        return self.spin_selector.spin_while(want)


def spinning_loop(spin_us: float = DEFAULT_SPIN_US) -> SpinningEventLoop:
    """A new :class:`SpinningEventLoop` (a ``loop_factory``)."""
    return SpinningEventLoop(spin_us)


def spin_us_of(url: str) -> float:
    """The URL's ``spin_us`` query parameter (0 if absent)."""
    values = parse_qs(urlsplit(url).query).get("spin_us")
    if not values:
        return 0.0
    raw = values[-1]
    try:
        spin_us = float(raw)
    except ValueError:
        raise InvalidArgument("spin_us", raw, "must be microseconds (a number)") from None
    return _check(spin_us)
