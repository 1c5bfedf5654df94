"""A client's side of kept batches: where its own batches go in its tx
arena, and read-only mappings of the arenas other clients' kept batches are
delivered from (see ``klieo_shm.daemon._kept``).

``TxZones`` splits the client's arena when the broker keeps batches
(``Welcome.keep_min`` > 0): a FIFO ring for batches the broker copies, freed
by ``PubAck`` in batch order, and a keep zone for batches offered for
keeping, freed by ``PubAck`` (when the broker copied after all) or by
``Release`` -- in any order.

The keep zone paces the publisher: a large batch that finds it full waits
for a ``Release`` (the subscribers are then at most a zone behind, and read
bytes that are still in the CPU caches) -- but at most ``SPILL_AFTER``
seconds: then the zone *spills*, and large batches go to the ring, copied by
the broker, until the next ``Release``. So a consumer that never acks costs
the publisher one short wait, not a stall.

``PeerArenas`` maps another client's arena the first time a delivery names
it and keeps the mapping until the broker says the arena is gone
(``ArenaGone``) or the connection ends. Bytes read there are copied out
before a ``Msg`` is made, as with the store.
"""

from __future__ import annotations

import contextlib
from typing import Final

import posix_ipc

from ..layout import ALIGN, KEEP_ZONE, FitAllocator, LayoutError, RingAllocator, open_arena
from ._maps import Mapping

__all__ = ["MAP_ERRORS", "SPILL_AFTER", "PeerArenas", "TxZones"]

SPILL_AFTER: Final = 0.05
"""Seconds a large batch waits for room in a full keep zone before it goes
to the ring instead."""


class TxZones:
    """Allocation of one client's tx arena data area of ``size`` bytes.

    ``alloc(n)`` returns ``(offset, kept)``: ``kept`` when the region is in
    the keep zone (offer the batch for keeping), or ``None`` when there is
    no room now: in the ring, or -- for a batch of at least ``keep_min``
    bytes, unless ``spill`` is set -- in a keep zone that has regions to
    free. Regions of ring batches are freed by ``answered`` in batch order;
    keep-zone regions by ``answered`` when the broker did not keep the
    batch, else by ``released`` (which clears ``spill``).
    """

    __slots__ = ("_kept", "keep", "keep_min", "ring", "spill")

    def __init__(self, size: int, keep_min: int) -> None:
        self.keep_min = keep_min
        self.keep: FitAllocator | None = None
        if keep_min:
            base = -(-(size - size // KEEP_ZONE) // ALIGN) * ALIGN  # aligned up
            self.ring = RingAllocator(base)
            self.keep = FitAllocator(base, size - base)
        else:
            self.ring = RingAllocator(size)
        self._kept: dict[int, int] = {}  # batch_no -> offset, kept by the broker
        self.spill = False

    def alloc(self, n: int) -> tuple[int, bool] | None:
        keep = self.keep
        if keep is not None and n >= self.keep_min:
            off = keep.alloc(n)
            if off is not None:
                return off, True
            if len(keep) and not self.spill:
                return None  # wait for a Release (or a PubAck) to free some
        off = self.ring.alloc(n)
        return None if off is None else (off, False)

    def answered(self, batch_no: int, off: int, kept_zone: bool, kept: bool) -> None:
        """The ``PubAck`` of a batch at ``off``: ``kept`` when it said so."""
        if not kept_zone:
            self.ring.free_oldest()
        elif kept:
            self._kept[batch_no] = off
        else:
            assert self.keep is not None
            self.keep.free(off)

    def released(self, batch_no: int) -> bool:
        """A ``Release`` of kept batch ``batch_no``; False if none is kept."""
        off = self._kept.pop(batch_no, None)
        if off is None or self.keep is None:
            return False
        self.keep.free(off)
        self.spill = False
        return True

    def waits_for_keep(self, n: int) -> bool:
        """Whether a batch of ``n`` bytes for which ``alloc`` found no room
        waits for the keep zone (rather than for the ring)."""
        keep = self.keep
        return keep is not None and n >= self.keep_min and not self.spill and len(keep) > 0

    @property
    def kept(self) -> int:
        """Batches the broker keeps (regions awaiting ``Release``)."""
        return len(self._kept)


class PeerArenas:
    """Other clients' tx arenas, mapped read-only on first use.

    ``prefix + str(client_id)`` names the arena of ``client_id``; every
    arena has ``size`` bytes. ``own`` is this client's data area, returned
    for its own id without a second mapping."""

    __slots__ = ("_maps", "own", "own_id", "prefix", "size")

    def __init__(self, prefix: str, size: int, own_id: int, own: memoryview) -> None:
        self.prefix = prefix
        self.size = size
        self.own_id = own_id
        self.own = own
        self._maps: dict[int, tuple[Mapping, memoryview]] = {}

    def data(self, client_id: int) -> memoryview:
        """The data area of ``client_id``'s arena. Raises one of
        ``MAP_ERRORS`` if it cannot be mapped."""
        if client_id == self.own_id:
            return self.own
        got = self._maps.get(client_id)
        if got is None:
            m = Mapping(self.prefix + str(client_id), self.size, writable=False)
            try:
                got = (m, open_arena(m.view, client_id))
            except BaseException:
                m.close()
                raise
            self._maps[client_id] = got
        return got[1]

    def drop(self, client_id: int) -> None:
        """Unmap ``client_id``'s arena, if mapped."""
        got = self._maps.pop(client_id, None)
        if got is not None:
            with contextlib.suppress(BufferError):  # a slice still alive: the GC unmaps
                got[1].release()
            got[0].close()

    def close(self) -> None:
        for client_id in list(self._maps):
            self.drop(client_id)

    def __len__(self) -> int:
        return len(self._maps)


MAP_ERRORS = (OSError, ValueError, LayoutError, posix_ipc.Error)
"""What ``PeerArenas.data`` raises when an arena cannot be mapped."""
