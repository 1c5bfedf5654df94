"""The broker's journal file format: a header, then framed records.

Pure functions over bytes; the broker (``klieo_shm.daemon._journal``) does the
file I/O. Byte map (little-endian)::

    offset  size  field
    0       8     magic        b"KLIEOJNL"
    8       4     version      u32 JOURNAL_VERSION
    12      4     flags        u32, reserved (0)
    16      -     records, each:
                    0   4  length    u32 bytes of body (meta + tail)
                    4   4  crc       u32 zlib.crc32 of the body
                    8   4  meta_len  u32 bytes of meta
                    12  -  body      meta: a msgpack array whose first item
                                     is the op; then tail: raw bytes (a
                                     payload region), possibly empty

A record is valid only whole: a body that runs past the end of the file or
whose crc does not match ends the journal there (a torn last write after a
crash); everything before it is trusted, nothing after it is read. The tail
lets a large payload go to the file straight from where it lies (``writev``),
without being copied into a msgpack buffer first.

Version history: 1, one msgpack body per record; 2, meta + raw tail;
3, jobs enqueued as columns (``daemon._journal.JOB_ADD``); 4, payloads stay
in the store file of the state directory: a publish record names its
region there (``daemon._journal.STORE``, ``PUBLISH``) instead of carrying it;
5, kept batches (``MOVED``); 6, claims as columns (``daemon._journal.JOB_CLAIM``).
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
    "frame_parts",
    "frame_record",
    "journal_header",
    "scan_records",
]

JOURNAL_MAGIC: Final = b"KLIEOJNL"
JOURNAL_VERSION: Final = 6
READS_VERSIONS: Final = frozenset({4, 5, JOURNAL_VERSION})
"""Versions this code reads: version 4 lacks kept batches (``PUBLISH`` has no
arena item, no ``MOVED``), and is otherwise version 5; version 5 writes
``JOB_CLAIM`` with a list per claim, and is otherwise version 6."""
JOURNAL_HEADER: Final = struct.Struct("<8sII")
MAX_RECORD: Final = 1 << 30
"""No record body is longer (a longer length field is a torn or foreign file)."""
_FRAME: Final = struct.Struct("<III")


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
    if version not in READS_VERSIONS:
        raise JournalFormatError(
            f"journal format version {version}, but this klieo-shmd reads versions "
            f"{', '.join(map(str, sorted(READS_VERSIONS)))} only"
        )


def frame_parts(
    meta: bytes, tail: bytes | memoryview = b""
) -> tuple[bytes, bytes, bytes | memoryview]:
    """The buffers of one record (write them in order): its frame header,
    ``meta`` and ``tail``."""
    crc = zlib.crc32(tail, zlib.crc32(meta)) if tail else zlib.crc32(meta)
    return _FRAME.pack(len(meta) + len(tail), crc, len(meta)), meta, tail


def frame_record(meta: bytes, tail: bytes | memoryview = b"") -> bytes:
    """One record as a single ``bytes``."""
    return b"".join(frame_parts(meta, tail))


def scan_records(
    data: bytes | memoryview, start: int = JOURNAL_HEADER.size
) -> Iterator[tuple[int, memoryview, memoryview]]:
    """Yield ``(end_offset, meta, tail)`` for each whole, intact record from
    ``start``; stop at the first torn or corrupt one. The last ``end_offset``
    yielded (or ``start``) is where the valid journal ends."""
    view = memoryview(data)
    pos, size = start, len(view)
    unpack = _FRAME.unpack_from
    while pos + _FRAME.size <= size:
        length, crc, meta_len = unpack(view, pos)
        begin = pos + _FRAME.size
        end = begin + length
        if length > MAX_RECORD or not 0 < meta_len <= length or end > size:
            return  # cut short, or not a record at all (zeros: meta_len 0)
        body = view[begin:end]
        if zlib.crc32(body) != crc:
            return
        yield end, body[:meta_len], body[meta_len:]
        pos = end
