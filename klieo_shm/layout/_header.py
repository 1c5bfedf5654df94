"""The 64-byte header every klieo segment starts with (LMDB style).

Byte map (little-endian, offsets from the start of the segment)::

    offset  size  field
    0       8     magic       8 ASCII bytes naming the segment type
    8       4     version     u32 format version of that segment type
    12      4     flags       u32, reserved (0)
    16      8     data_size   u64 bytes of the data area after the header
    24      8     word 3      u64, meaning set by the segment type
    32      8     word 4      u64, meaning set by the segment type
    40      8     word 5      u64, meaning set by the segment type
    48      8     word 6      u64, meaning set by the segment type
    56      8     word 7      u64, meaning set by the segment type
    64      -     data area

Words 3..7 are counters another process may read: they are written only with
a single aligned 8-byte store (``memoryview(buf).cast("Q")[i] = v``), never
with ``struct.pack_into`` (which may tear: see DESIGN.md).
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "HEADER_SIZE",
    "LayoutError",
    "check_header",
    "read_word",
    "write_header",
    "write_word",
]

HEADER_SIZE: Final = 64
_FIXED: Final = struct.Struct("<8sII")


class LayoutError(Exception):
    """A segment does not hold what its header promises (wrong magic,
    unknown version, too small). Raised to the process that maps it."""


def write_header(buf: memoryview, magic: bytes, version: int, data_size: int) -> None:
    """Initialise a fresh segment's header. Only the segment's creator calls
    this, before any other process maps the segment."""
    if len(magic) != 8:
        raise ValueError("magic must be 8 bytes")
    if len(buf) < HEADER_SIZE + data_size:
        raise ValueError(f"segment of {len(buf)} bytes cannot hold {data_size} data bytes")
    buf[:HEADER_SIZE] = bytes(HEADER_SIZE)
    _FIXED.pack_into(buf, 0, magic, version, 0)
    write_word(buf, 2, data_size)


def check_header(buf: memoryview, magic: bytes, version: int) -> int:
    """Validate magic and version; return the data size. Raises ``LayoutError``."""
    if len(buf) < HEADER_SIZE:
        raise LayoutError(f"segment of {len(buf)} bytes is smaller than its header")
    got_magic, got_version, _ = _FIXED.unpack_from(buf, 0)
    if got_magic != magic:
        raise LayoutError(f"bad magic {got_magic!r}, expected {magic!r}")
    if got_version != version:
        raise LayoutError(
            f"segment format version {got_version}, this code reads version {version}"
        )
    data_size = read_word(buf, 2)
    if HEADER_SIZE + data_size > len(buf):
        raise LayoutError(f"header claims {data_size} data bytes, segment has {len(buf)}")
    return data_size


def write_word(buf: memoryview, index: int, value: int) -> None:
    """One aligned 8-byte store of ``value`` into header word ``index``."""
    # SYNC POINT: header counter published to readers of read_word
    buf[:HEADER_SIZE].cast("Q")[index] = value


def read_word(buf: memoryview, index: int) -> int:
    """One aligned 8-byte load of header word ``index``."""
    # SYNC POINT: header counter observed, written by write_word
    value: int = buf[:HEADER_SIZE].cast("Q")[index]
    return value
