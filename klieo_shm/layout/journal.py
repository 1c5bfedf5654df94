"""The broker's journal file format: a header, then framed records.

Pure functions over bytes; the broker (``klieo_shm.daemon._journal``) does the
file I/O. Byte map (little-endian)::

    offset  size  field
    0       8     magic        b"KLIEOJNL"
    8       4     version      u32 JOURNAL_VERSION
    12      4     flags        u32, reserved (0)
    16      -     records, each:
                    0  4  length  u32 bytes of body
                    4  4  crc     u32 zlib.crc32 of the body
                    8  -  body    a msgpack array whose first item is the op

A record is valid only whole: a body that runs past the end of the file or
whose crc does not match ends the journal there (a torn last write after a
crash); everything before it is trusted, nothing after it is read.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Final

__all__ = [
    "JOURNAL_HEADER",
    "JOURNAL_MAGIC",
    "JOURNAL_VERSION",
    "MAX_RECORD",
    "JournalFormatError",
    "check_journal_header",
    "frame_record",
    "journal_header",
    "scan_records",
]

JOURNAL_MAGIC: Final = b"KLIEOJNL"
JOURNAL_VERSION: Final = 1
JOURNAL_HEADER: Final = struct.Struct("<8sII")
MAX_RECORD: Final = 1 << 30
"""No record body is longer (a longer length field is a torn or foreign file)."""
_FRAME: Final = struct.Struct("<II")


class JournalFormatError(Exception):
    """The file is not a klieo journal, or one of another format version."""


def journal_header() -> bytes:
    """The 16 bytes a journal file starts with."""
    return JOURNAL_HEADER.pack(JOURNAL_MAGIC, JOURNAL_VERSION, 0)


def check_journal_header(head: bytes) -> None:
    """Raise ``JournalFormatError`` naming both versions unless ``head`` (the
    file's first bytes) starts a journal of this format version."""
    if len(head) < JOURNAL_HEADER.size:
        raise JournalFormatError(f"journal header cut short ({len(head)} bytes)")
    magic, version, _ = JOURNAL_HEADER.unpack_from(head)
    if magic != JOURNAL_MAGIC:
        raise JournalFormatError(f"not a klieo journal (magic {magic!r})")
    if version != JOURNAL_VERSION:
        raise JournalFormatError(
            f"journal format version {version}, but this klieo-shmd reads version "
            f"{JOURNAL_VERSION} only"
        )


def frame_record(body: bytes) -> bytes:
    """``body`` with its length and crc in front."""
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def scan_records(
    data: bytes | memoryview, start: int = JOURNAL_HEADER.size
) -> Iterator[tuple[int, memoryview]]:
    """Yield ``(end_offset, body)`` for each whole, intact record from
    ``start``; stop at the first torn or corrupt one. The last ``end_offset``
    yielded (or ``start``) is where the valid journal ends."""
    view = memoryview(data)
    pos, size = start, len(view)
    unpack = _FRAME.unpack_from
    while pos + _FRAME.size <= size:
        length, crc = unpack(view, pos)
        end = pos + _FRAME.size + length
        if length > MAX_RECORD or end > size:
            return
        body = view[pos + _FRAME.size : end]
        if zlib.crc32(body) != crc:
            return
        yield end, body
        pos = end
