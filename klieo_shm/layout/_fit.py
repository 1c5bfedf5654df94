"""First-fit allocation of a tx arena's keep zone (client-private state).

A client whose broker keeps large publish batches in place (``PUBACK_KEPT``)
gets those regions back in any order -- each when every durable acked its
messages -- so they cannot come from the FIFO ring. ``FitAllocator`` hands
out contiguous regions of a fixed span, lowest address first (the bytes
reused soonest are the ones still in the CPU caches), and merges a freed
region with its free neighbours. Nothing here is shared: the offsets it
returns are written into publish frames like the ring's.
"""

from __future__ import annotations

from bisect import bisect_left

from ._arena import ALIGN

__all__ = ["FitAllocator"]


class FitAllocator:
    """Regions of ``[base, base + capacity)``, freed in any order.

    ``alloc(n)`` returns the offset of ``n`` contiguous bytes (rounded up to
    ``ALIGN``; ``base`` must be aligned) or ``None`` when no free run is long
    enough; ``free(off)`` gives back the region that started at ``off``.
    ``used`` counts bytes in live regions.
    """

    __slots__ = ("_ends", "_live", "_starts", "base", "capacity", "used")

    def __init__(self, base: int, capacity: int) -> None:
        if base % ALIGN or capacity < ALIGN:
            raise ValueError(
                f"zone at {base} of {capacity} bytes: not {ALIGN}-aligned or too small"
            )
        self.base = base
        self.capacity = capacity - capacity % ALIGN
        # free runs, sorted and never adjacent: [starts[i], ends[i])
        self._starts: list[int] = [base]
        self._ends: list[int] = [base + self.capacity]
        self._live: dict[int, int] = {}  # offset -> size
        self.used = 0

    def __len__(self) -> int:
        return len(self._live)

    def alloc(self, n: int) -> int | None:
        size = max(ALIGN, -(-n // ALIGN) * ALIGN)
        starts, ends = self._starts, self._ends
        for i, start in enumerate(starts):
            if ends[i] - start >= size:
                if ends[i] - start == size:
                    del starts[i], ends[i]
                else:
                    starts[i] = start + size
                self._live[start] = size
                self.used += size
                return start
        return None

    def free(self, off: int) -> None:
        size = self._live.pop(off)  # KeyError: not a live region
        self.used -= size
        end = off + size
        starts, ends = self._starts, self._ends
        i = bisect_left(starts, off)
        joins_prev = i > 0 and ends[i - 1] == off
        joins_next = i < len(starts) and starts[i] == end
        if joins_prev and joins_next:
            ends[i - 1] = ends[i]
            del starts[i], ends[i]
        elif joins_prev:
            ends[i - 1] = end
        elif joins_next:
            starts[i] = off
        else:
            starts.insert(i, off)
            ends.insert(i, end)

    def free_runs(self) -> list[tuple[int, int]]:
        """The free runs as ``(start, end)``, in address order (for tests)."""
        return list(zip(self._starts, self._ends, strict=True))
