"""Tx arenas of clients that went away, kept for the clients that come next.

A fresh arena costs its client a page fault per 4 KiB it first writes (about
1 ms per MiB on this machine's tmpfs): a new process that publishes large
payloads pays some 30 ms for its first 32 MiB. So the broker keeps up to
``SPARES`` arenas of gone clients, their pages still in memory, and hands
them to new clients. A spare waits under the name ``<base>-spare<n>`` (no
client derives that name) and is renamed to its new client's arena name when
handed out -- but only once the process that had it is gone (pid and start
time), since until then that process may still have it mapped read-write
(when the broker closed the connection, the process may not know yet). Its
bytes are not cleared: the clients of one broker share a uid (or a group),
and may map each other's arenas anyway.
"""

from __future__ import annotations

import itertools
from typing import Final

from ._leases import holder_alive
from ._segments import Segment

__all__ = ["SPARES", "ArenaPool"]

SPARES: Final = 2
"""Most spare arenas kept (memory: at most this many arenas' touched pages)."""


class ArenaPool:
    """Arena segments of ``size`` bytes named under ``base``, new or spare."""

    def __init__(self, base: str, size: int, mode: int, gid: int | None) -> None:
        self.base = base
        self.size = size
        self.mode = mode
        self.gid = gid
        self._spares: list[tuple[Segment, int, float]] = []  # (segment, owner pid, start)
        self._numbers = itertools.count(1)
        self._closed = False

    def take(self, name: str) -> Segment:
        """An arena segment named ``name``: the spare given back last whose
        owner process is gone, else a new one (``OSError`` or
        ``posix_ipc.Error`` if none can be made)."""
        for i in range(len(self._spares) - 1, -1, -1):
            seg, pid, start = self._spares[i]
            if holder_alive(pid, start):
                continue
            del self._spares[i]
            try:
                seg.rename(name)
            except OSError:
                seg.destroy()
                continue
            return seg
        return Segment(name, self.size, self.mode, self.gid)

    def give(self, seg: Segment, pid: int, start: float) -> None:
        """``seg`` is no client's arena any more (it was that of process
        ``pid`` started at ``start``): keep it as a spare, or destroy it when
        enough are kept (or the pool is closed)."""
        if self._closed or len(self._spares) >= SPARES:
            seg.destroy()
            return
        try:
            seg.rename(f"{self.base}-spare{next(self._numbers)}")
        except OSError:
            seg.destroy()
            return
        self._spares.append((seg, pid, start))

    def __len__(self) -> int:
        return len(self._spares)

    def close(self) -> None:
        """Destroy the spares; later ``give``s destroy. Idempotent."""
        self._closed = True
        while self._spares:
            self._spares.pop()[0].destroy()
