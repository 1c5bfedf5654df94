"""The KV table's value-space allocator (broker side, no shared state).

Free blocks are kept by start and by end, so a freed block merges with free
neighbours at once, and in size classes (``size.bit_length()``) for a quick
first fit. Replaced records do not become free at once: they wait in a FIFO
limbo for ``grace_s`` seconds (see ``kv_table``'s reclamation argument).
Offsets are relative to the value space and multiples of 8; sizes too.
"""

from __future__ import annotations

from collections import deque
from typing import Final

__all__ = ["BIN_SCAN", "MIN_BLOCK", "ValueSpace"]

MIN_BLOCK: Final = 48
"""A remainder smaller than this stays with the record it was cut from."""
BIN_SCAN: Final = 16
"""Blocks of the request's own size class looked at before a larger class."""


class ValueSpace:
    """First-fit-by-size-class allocator over the value space, with
    coalescing of free neighbours and a FIFO limbo of retired records."""

    __slots__ = (
        "_bins",
        "_by_end",
        "_by_start",
        "_nonempty",
        "early_reuses",
        "free_bytes",
        "grace_s",
        "limbo",
        "limbo_bytes",
        "size",
    )

    def __init__(self, size: int, grace_s: float) -> None:
        self.size = size
        self.grace_s = grace_s
        self._by_start: dict[int, int] = {}
        self._by_end: dict[int, int] = {}
        self._bins: list[set[int]] = [set() for _ in range(65)]
        self._nonempty = 0  # bit k set <=> self._bins[k] is not empty
        self.limbo: deque[tuple[float, int, int]] = deque()
        self.free_bytes = 0
        self.limbo_bytes = 0
        self.early_reuses = 0

    def _insert(self, start: int, size: int) -> None:
        self._by_start[start] = size
        self._by_end[start + size] = start
        k = size.bit_length()
        self._bins[k].add(start)
        self._nonempty |= 1 << k
        self.free_bytes += size

    def _remove(self, start: int) -> int:
        size = self._by_start.pop(start)
        del self._by_end[start + size]
        k = size.bit_length()
        bin_ = self._bins[k]
        bin_.discard(start)
        if not bin_:
            self._nonempty &= ~(1 << k)
        self.free_bytes -= size
        return size

    def release(self, start: int, size: int) -> None:
        """Make ``size`` bytes at ``start`` free now, merging with free neighbours."""
        left = self._by_end.get(start)
        if left is not None:
            size += self._remove(left)
            start = left
        if start + size in self._by_start:
            size += self._remove(start + size)
        self._insert(start, size)

    def alloc(self, need: int) -> tuple[int, int] | None:
        """Offset and capacity of a free block of at least ``need`` bytes."""
        b = need.bit_length()
        own = self._bins[b]  # sizes in [2**(b-1), 2**b): may be too small
        found = self._first_fit(own, need, BIN_SCAN)
        if found < 0:
            larger = self._nonempty >> (b + 1)
            if larger:  # the smallest larger class: every block is >= 2**b > need
                k = (larger & -larger).bit_length() + b
                found = next(iter(self._bins[k]))
            elif len(own) > BIN_SCAN:
                found = self._first_fit(own, need, len(own))
            if found < 0:
                return None
        size = self._remove(found)
        if size - need >= MIN_BLOCK:
            self._insert(found + need, size - need)  # its neighbours are not free
            size = need
        return found, size

    def _first_fit(self, bin_: set[int], need: int, limit: int) -> int:
        for scanned, start in enumerate(bin_):
            if scanned >= limit:
                break
            if self._by_start[start] >= need:
                return start
        return -1

    def reuse(self, need: int, now: float) -> tuple[int, int] | None:
        """The oldest retired record, taken straight out of limbo, when its
        grace period is over and it fits ``need`` as ``alloc`` would cut it
        (``need <= size < need + MIN_BLOCK``); else ``None``. The common case
        of a value rewritten at the same size then skips freeing, merging
        and splitting."""
        limbo = self.limbo
        if limbo:
            due, start, size = limbo[0]
            if due <= now and need <= size < need + MIN_BLOCK:
                limbo.popleft()
                self.limbo_bytes -= size
                return start, size
        return None

    def retire(self, start: int, size: int, now: float) -> None:
        self.limbo.append((now + self.grace_s, start, size))
        self.limbo_bytes += size

    def reclaim(self, now: float) -> None:
        """Free the records whose grace period is over."""
        limbo = self.limbo
        while limbo and limbo[0][0] <= now:
            _, start, size = limbo.popleft()
            self.limbo_bytes -= size
            self.release(start, size)

    def flush(self) -> None:
        """Free every record in limbo, grace period or not (see kv_table)."""
        self.early_reuses += len(self.limbo)
        self.reclaim(float("inf"))

    def free_blocks(self) -> list[tuple[int, int]]:
        """(start, size) of every free block, by start (for tests and stats)."""
        return sorted(self._by_start.items())
