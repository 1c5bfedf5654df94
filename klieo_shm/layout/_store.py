"""The broker's payload store: payloads out, written only by the broker.

The broker creates the segment (mode 0600) and is its only writer; every
client maps it read-only, so no client can corrupt another's messages. A
delivery frame names ``store_off`` (and lengths); the client copies the bytes
out before it acks, and the broker frees a block only when every delivery
that points into it has been acked or termed -- so a client never reads a
block after it was freed unless it read after its own ack.

Byte map::

    offset  size  field
    0       64    common header (``_header``): magic b"KLIEOSTO", version 2,
                  data_size; word 3 = bytes in use (for ``klieo-shm status``),
                  word 4 = broker pid, word 5 = blocks in use, word 6 =
                  services epoch (``SERVICES_WORD``)
    64      n     data area, n a power of two, carved by ``BuddyAllocator``

Blocks hold whole publish batches (one block per batch, not per message), so
allocation cost is paid once per batch.

The services epoch goes up whenever the set of servers of any subject
changes (a service starts or stops, a serving client goes away). A client
that cached where a subject's servers are reads it before each request and
asks the broker again once it moved (version 2 added it).
"""

from __future__ import annotations

from typing import Final

from ._header import HEADER_SIZE, check_header, write_header, write_word

__all__ = [
    "SERVICES_WORD",
    "STORE_MAGIC",
    "STORE_VERSION",
    "BuddyAllocator",
    "init_store",
    "open_store",
    "publish_services_epoch",
    "publish_usage",
]

STORE_MAGIC: Final = b"KLIEOSTO"
STORE_VERSION: Final = 2
MIN_BLOCK: Final = 256

_W_USED: Final = 3
_W_PID: Final = 4
_W_BLOCKS: Final = 5
SERVICES_WORD: Final = 6
"""Index of the services epoch in the header read as 8-byte words
(``memoryview(header).cast("Q")``)."""


def init_store(buf: memoryview, broker_pid: int) -> memoryview:
    """Broker side: initialise the header; return the data area (whose size
    is the largest power of two that fits)."""
    room = len(buf) - HEADER_SIZE
    if room < MIN_BLOCK:
        raise ValueError(f"store of {len(buf)} bytes is too small")
    data_size = 1 << (room.bit_length() - 1)
    write_header(buf, STORE_MAGIC, STORE_VERSION, data_size)
    write_word(buf, _W_PID, broker_pid)
    return buf[HEADER_SIZE : HEADER_SIZE + data_size]


def open_store(buf: memoryview) -> memoryview:
    """Client side (read-only mapping): check the header; return the data area."""
    data_size = check_header(buf, STORE_MAGIC, STORE_VERSION)
    return buf[HEADER_SIZE : HEADER_SIZE + data_size]


def publish_usage(buf: memoryview, used: int, blocks: int) -> None:
    """Broker side: publish usage counters for observers."""
    # SYNC POINT: usage counters published; observed by read_word in status tools
    write_word(buf, _W_USED, used)
    write_word(buf, _W_BLOCKS, blocks)


def publish_services_epoch(buf: memoryview, epoch: int) -> None:
    """Broker side: the servers of some subject changed; ``epoch`` is the
    new, larger value."""
    # SYNC POINT: services epoch published; read by requesters before each request
    write_word(buf, SERVICES_WORD, epoch)


class BuddyAllocator:
    """Binary buddy allocation over ``size`` bytes (a power of two, at least
    ``min_block``). State is private to the broker; nothing here is shared.

    ``alloc(n)`` returns the offset of a block of at least ``n`` bytes, or
    ``None`` when no block is free; ``free(off)`` returns a block (merging
    buddies). ``used`` counts bytes in allocated blocks.
    """

    __slots__ = ("_free", "_live", "_min_shift", "max_order", "size", "used")

    def __init__(self, size: int, min_block: int = MIN_BLOCK) -> None:
        if min_block & (min_block - 1) or size & (size - 1) or size < min_block:
            raise ValueError("size and min_block must be powers of two, size >= min_block")
        self.size = size
        self._min_shift = min_block.bit_length() - 1
        self.max_order = (size // min_block).bit_length() - 1
        self._free: list[set[int]] = [set() for _ in range(self.max_order + 1)]
        self._free[self.max_order].add(0)
        self._live: dict[int, int] = {}  # offset -> order
        self.used = 0

    def __len__(self) -> int:
        return len(self._live)

    def block_size(self, n: int) -> int:
        """The size of the block ``alloc(n)`` would hand out."""
        return 1 << max(self._min_shift, (max(n, 1) - 1).bit_length())

    def alloc(self, n: int) -> int | None:
        order = max(0, (max(n, 1) - 1).bit_length() - self._min_shift)
        if order > self.max_order:
            return None
        free = self._free
        o = order
        while o <= self.max_order and not free[o]:
            o += 1
        if o > self.max_order:
            return None
        off = min(free[o]) if len(free[o]) < 8 else free[o].pop()
        free[o].discard(off)
        while o > order:
            o -= 1
            free[o].add(off + (1 << (o + self._min_shift)))
        self._live[off] = order
        self.used += 1 << (order + self._min_shift)
        return off

    def free(self, off: int) -> None:
        order = self._live.pop(off)
        self.used -= 1 << (order + self._min_shift)
        free = self._free
        while order < self.max_order:
            buddy = off ^ (1 << (order + self._min_shift))
            if buddy not in free[order]:
                break
            free[order].remove(buddy)
            off = min(off, buddy)
            order += 1
        free[order].add(off)

    def free_blocks(self) -> list[tuple[int, int]]:
        """Every free block as ``(offset, size)``, in offset order."""
        shift = self._min_shift
        return sorted((off, 1 << (o + shift)) for o, offs in enumerate(self._free) for off in offs)

    def largest_free(self) -> int:
        """Size of the largest free block (0 when full)."""
        for o in range(self.max_order, -1, -1):
            if self._free[o]:
                return 1 << (o + self._min_shift)
        return 0
