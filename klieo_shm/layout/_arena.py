"""A client's tx arena: payloads in, written only by its client.

The broker creates the segment (mode 0600), writes the header and gives its
name to one client in ``Welcome``; that client maps it read-write and is its
only writer. The broker maps it read-only and copies published payloads out
into its own store; it keeps no reference into the arena past the ``PubAck``
of a batch unless that ``PubAck`` says ``PUBACK_KEPT``. A kept batch (one the
client offered with ``PUB_FLAG_KEEP``) is delivered from where it lies: other
clients map the arena read-only to read it, and the client leaves its region
untouched until a ``Release`` names the batch. That saves the broker's copy
of large payloads (two copies end to end instead of three).

Byte map::

    offset  size  field
    0       64    common header (``_header``): magic b"KLIEOARN", version 3,
                  data_size; word 3 = owner client id, word 4 = owner pid,
                  word 5 = owner start time in microseconds since the epoch,
                  word 6 = read mark (below)
    64      n     data area: batch regions

Each batch region in the data area::

    offset  size  field
    0       16    slot header ``SLOT``: owner client id u32, region_len u32,
                  batch_no u64
    16      m     the batch's messages: for each, msgpack headers then payload

A region is contiguous (never wraps); ``region_off`` in a publish frame is the
offset of the slot header within the data area. The owner tag lets the broker
refuse a frame that points at bytes its client did not write. When the
client's socket closes and no kept batch of it is owed any more, the broker
destroys the arena or keeps it as a spare for a later client (renamed, and
handed out once the process that had it is gone).

The read mark is the only header word the client writes: the highest
delivery id of the delivery frames it has read, stored after it copied out
every payload those frames name (0: none yet). The broker reads it to know
when the store block (or kept region) of a delivery whose ack_wait passed
unread may be reused: until the mark reaches that delivery, a late read of
the frame must still find the message's own bytes.

Allocation is the client's private business. When its broker keeps batches
(``Welcome.keep_min`` > 0) the client splits the data area: a
``RingAllocator`` ring, whose regions are freed in the order the broker
answers batches, and a keep zone (the last ``1/KEEP_ZONE`` of the area) for
the batches it offers for keeping, which a ``FitAllocator`` frees in any
order. Otherwise the ring spans the whole data area.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Final

from ._header import HEADER_SIZE, check_header, read_word, write_header, write_word

__all__ = [
    "ALIGN",
    "ARENA_MAGIC",
    "ARENA_VERSION",
    "KEEP_ZONE",
    "READ_MARK_WORD",
    "SLOT",
    "RingAllocator",
    "check_slot",
    "init_arena",
    "mark_read",
    "open_arena",
    "read_mark",
    "write_slot",
]

ARENA_MAGIC: Final = b"KLIEOARN"
ARENA_VERSION: Final = 3
SLOT: Final = struct.Struct("<IIQ")
"""owner client id u32, region_len u32, batch_no u64."""
ALIGN: Final = 64
KEEP_ZONE: Final = 2
"""With kept batches, the keep zone is the last 1/KEEP_ZONE of the data area."""

_W_OWNER: Final = 3
_W_PID: Final = 4
_W_START: Final = 5
READ_MARK_WORD: Final = 6
"""The header word of the read mark (see above), as 8-byte words count."""


def init_arena(buf: memoryview, client_id: int, pid: int, start_us: int) -> int:
    """Broker side: initialise a new arena for ``client_id``; return its data size."""
    data_size = len(buf) - HEADER_SIZE
    write_header(buf, ARENA_MAGIC, ARENA_VERSION, data_size)
    write_word(buf, _W_OWNER, client_id)
    write_word(buf, _W_PID, pid)
    write_word(buf, _W_START, start_us)
    return data_size


def mark_read(buf: memoryview, delivery_id: int) -> None:
    """Client side: every delivery frame up to ``delivery_id`` has been read
    and its payloads copied out (``buf``: the whole segment)."""
    # SYNC POINT: stored after the payload copies; read by read_mark
    write_word(buf, READ_MARK_WORD, delivery_id)


def read_mark(buf: memoryview) -> int:
    """Broker side: the highest delivery id whose frame the client has read."""
    # SYNC POINT: observes mark_read
    return read_word(buf, READ_MARK_WORD)


def open_arena(buf: memoryview, client_id: int) -> memoryview:
    """Client side: check the header and ownership; return the data area."""
    data_size = check_header(buf, ARENA_MAGIC, ARENA_VERSION)
    owner = read_word(buf, _W_OWNER)
    if owner != client_id:
        raise ValueError(f"arena belongs to client {owner}, not {client_id}")
    return buf[HEADER_SIZE : HEADER_SIZE + data_size]


def write_slot(
    data: memoryview, region_off: int, client_id: int, region_len: int, batch_no: int
) -> None:
    """Client side: tag the region at ``region_off`` (slot header included in
    ``region_len``) as this client's batch ``batch_no``."""
    # SYNC POINT: slot header and payloads written before the publish frame is
    # sent; the socket send/recv pair orders them for the broker's check_slot.
    SLOT.pack_into(data, region_off, client_id, region_len, batch_no)


def check_slot(
    data: memoryview, region_off: int, region_len: int, client_id: int, batch_no: int
) -> str | None:
    """Broker side: why the region named by a publish frame is not valid for
    this client, or ``None`` when it is (bounds, owner tag, length, batch)."""
    # SYNC POINT: observes the slot written by write_slot (after the frame arrived).
    if region_len < SLOT.size or region_off < 0 or region_off + region_len > len(data):
        return (
            f"region [{region_off}, {region_off + region_len}) is outside the arena "
            f"of {len(data)} bytes"
        )
    owner, length, batch = SLOT.unpack_from(data, region_off)
    if owner != client_id or length != region_len or batch != batch_no:
        return f"region at {region_off} is not tagged as batch {batch_no} of client {client_id}"
    return None


class RingAllocator:
    """FIFO allocation of contiguous regions in a ring of ``capacity`` bytes.

    ``alloc(n)`` returns the offset of ``n`` contiguous bytes (rounded up to
    ``ALIGN``) or ``None`` when they do not fit now; ``free_oldest()`` frees
    the oldest live region. Regions never wrap: when the tail end is too small
    the allocator skips it (the skipped bytes come back with the region that
    follows them). Positions are kept as ever-growing virtual offsets.
    """

    __slots__ = ("_live", "capacity", "head", "tail")

    def __init__(self, capacity: int) -> None:
        if capacity < ALIGN:
            raise ValueError(f"ring capacity {capacity} is below {ALIGN}")
        self.capacity = capacity
        self.head = 0  # virtual offset of the next allocation
        self.tail = 0  # virtual offset of the oldest live byte
        self._live: deque[tuple[int, int]] = deque()  # (virtual start, virtual end)

    @property
    def used(self) -> int:
        """Bytes between tail and head, skipped ends included."""
        return self.head - self.tail

    def __len__(self) -> int:
        return len(self._live)

    def alloc(self, n: int) -> int | None:
        size = max(ALIGN, -(-n // ALIGN) * ALIGN)
        if size > self.capacity:
            return None
        start = self.head
        phys = start % self.capacity
        if phys + size > self.capacity:  # would wrap: skip to the ring's start
            start += self.capacity - phys
            phys = 0
        end = start + size
        if end - self.tail > self.capacity:
            return None
        self._live.append((start, end))
        self.head = end
        return phys

    def free_oldest(self) -> None:
        _start, end = self._live.popleft()
        self.tail = self._live[0][0] if self._live else end
        if not self._live:  # empty: restart at the ring's start
            self.head = self.tail = 0
