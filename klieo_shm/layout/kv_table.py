"""The KV table: a shared-memory hash table the broker writes and clients read.

The broker is the table's only writer (``KvTableWriter`` in
``kv_table_writer``, called from its event loop). Clients map the segment
read-only and look values up with ``KvTableReader.get`` -- no round trip, no
lock, nothing written by a reader. This module is pure: it works on a
``memoryview`` the caller mapped (8-byte aligned at its start, as a mapping
is) and imports no I/O module.

Byte map (little-endian; offsets from the start of the segment; "word n" is
the aligned 8-byte word at offset 8*n)::

    offset  size  field
    0       64    common header (``_header``): magic b"KLIEOKVT", version 1,
                  flags 0, word 2 = data_size (= total_size - 64)
                  word 3  generation   this table's generation (1, 2, ... one
                                       more per growth)
                  word 4  retired      0 while live; the successor's generation
                                       once the broker switched to a new table
                  word 5  index_slots  number of index slots (a power of two)
                  word 6  value_bytes  size of the value space (multiple of 8)
                  word 7  salt         64-bit key of the index hash
    64      64    KV header, written by the writer, read by anyone for stats:
                  word 8  total_size   bytes of the segment in use (the mapping may
                                       be longer: segments are page-rounded)
                  word 9  value_off    offset of the value space
                  word 10 last_stamp   last record stamp handed out
                  word 11 live         live entries
                  word 12 tombstones   slots holding a deleted key
                  word 13 used_bytes   value space held by records (limbo included)
                  words 14-15 reserved (0)
    128     16*N  index: N slots of two words each
                  tag  u64  0 = empty (ends a probe); else hash(name) | 1
                  ref  u64  0 = no record yet; else (stamp_lo32 << 32) | (record
                            offset in the value space / 8)
    value_off V   value space: records, 8-byte aligned, each
                  +0   seq       u64  the record's stamp: odd while being written,
                                      even (== stamp) once complete
                  +8   revision  u64  as given by the broker
                  +16  value_len u32
                  +20  capacity  u32  bytes this record occupies (header included)
                  +24  name_len  u16  length of the name
                  +26  flags     u16  bit 0: deleted (a tombstone; no value)
                  +28  pad       u32
                  +32  name      bucket utf-8, b"\\0", key utf-8
                  +32+name_len   value bytes

The hash is ``blake2b(name, digest_size=8, key=salt)``: keyed, so clients
cannot craft colliding keys to lengthen probe chains. The home slot is
``hash & (N - 1)``; probing is linear. Slots are never emptied: a deleted key
keeps its slot (pointing at a tombstone record) until a *new* key takes the
slot over, so a probe chain is never cut and a key that stays live stays in
the same slot.

Publishing and reading (x86-64 TSO: stores become visible in program order,
loads are not reordered with other loads; ARM would need a small C helper for
acquire/release). Every word another process reads is written with one
aligned store, ``memoryview.cast("Q")[i] = v``, never with ``struct.pack_into``
(which may tear -- DESIGN.md "Torn counters"):

1. Writer: take free value space; store ``seq = stamp - 1`` (odd) before any
   other byte; write the record; store ``seq = stamp`` (even); for a new key
   store the slot's ``tag``; then switch the slot's ``ref`` to the new record
   with one 8-byte store. The replaced record goes to limbo.
2. Reader: load ``tag`` (0 ends the probe: absent); load ``ref``; load the
   record's ``seq`` and check its low 32 bits equal ``ref``'s stamp; unpack the
   header and name in one ``unpack_from``; copy the value with one slice; load
   ``seq`` and ``ref`` again. If either changed it starts over (at most
   ``MAX_READ_RETRIES`` times, then ``KvReadContended``).

Reclamation and why a reader never returns a torn or mixed value:

* The writer writes a record's bytes only while no slot refers to it: a new
  record before its ``ref`` is published, a reused one only after the slot's
  ``ref`` moved away from it (the switch in step 1 happens before the old
  record enters limbo).
* A ``ref`` value never comes back: stamps grow by 2 per record written, so a
  slot returns to the same (offset, stamp_lo32) only after 2**31 more records
  -- not within one read.
* So if the reader's second load of ``ref`` equals its first, the slot pointed
  at that record during the whole copy, and on TSO no byte the copy read can
  come from a later write: that write would follow a ``ref`` store, which the
  later ``ref`` load would have seen. This holds even if garbage in a reused
  area looks like the right ``seq``, and whatever the grace period.
* The record's own ``seq`` is the early, independent check: reuse stores a new
  odd ``seq`` at the record's start before writing any byte (or, if the space
  now lies inside a larger record, overwrites that word with its bytes), so a
  slow reader usually fails at the first ``seq`` load, before copying.
* Lengths read before validation are used only to slice (which clamps) and
  are never trusted unless the recheck passes.

Readers write nothing, so the broker cannot know when they are done: a
replaced record waits in limbo for a grace period (``DEFAULT_GRACE_S``,
configurable) before its bytes are reused. That keeps slow readers from
retrying; safety does not depend on it. Under memory pressure the writer
reuses limbo early (counted in ``stats().early_reuses``) rather than fail.

Growth. When the index or the value space cannot take a write, the writer
raises ``KvTableFull`` (with the limit) before changing anything. The broker
then creates a bigger segment, copies the live entries with
``kv_table_writer.copy_into``, and stores the successor's generation in the
old table's ``retired`` word (SYNC POINT kv.retire). A reader that sees it raises
``KvTableRetired``; the client remaps the new table and retries.

Lifetimes: ``get`` returns fresh ``bytes``; nothing returned refers to the
mapping. A reader or writer keeps views of the mapping until its ``close()``;
call it before closing the mapping (remap after retirement).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from ._header import check_header, read_word

__all__ = [
    "DEFAULT_GRACE_S",
    "FLAG_DELETED",
    "INDEX_OFF",
    "KV_MAGIC",
    "KV_VERSION",
    "MAX_LOAD_FACTOR",
    "MAX_NAME_BYTES",
    "MAX_READ_RETRIES",
    "RECORD",
    "RECORD_HEADER_SIZE",
    "KvReadContended",
    "KvTableReader",
    "KvTableRetired",
    "KvTableUsage",
    "encode_name",
    "hash_name",
    "required_size",
]

KV_MAGIC: Final = b"KLIEOKVT"
KV_VERSION: Final = 1

# Header words (index into the segment viewed as u64).
W_GENERATION: Final = 3
W_RETIRED: Final = 4
W_INDEX_SLOTS: Final = 5
W_VALUE_BYTES: Final = 6
W_SALT: Final = 7
W_TOTAL_SIZE: Final = 8
W_VALUE_OFF: Final = 9
W_LAST_STAMP: Final = 10
W_LIVE: Final = 11
W_TOMBSTONES: Final = 12
W_USED_BYTES: Final = 13

INDEX_OFF: Final = 128
SLOT_SIZE: Final = 16
RECORD_HEADER_SIZE: Final = 32
RECORD: Final = struct.Struct("<QQIIHHI")
"""seq, revision, value_len, capacity, name_len, flags, pad."""
FLAG_DELETED: Final = 1
MAX_NAME_BYTES: Final = 0xFFFF
MAX_VALUE_BYTES: Final = 0xFFFFFFFF - RECORD_HEADER_SIZE - MAX_NAME_BYTES - 8
MAX_LOAD_FACTOR: Final = 0.75
"""Occupied index slots (live or tombstone) may not exceed this share."""
MAX_READ_RETRIES: Final = 1000
DEFAULT_GRACE_S: Final = 0.1
STAMP_MASK: Final = 0xFFFFFFFF

_CACHE_LIMIT: Final = 8192


class KvTableRetired(Exception):
    """The table was replaced by a bigger one (generation ``successor``):
    remap the broker's current KV segment and retry."""

    def __init__(self, generation: int, successor: int) -> None:
        super().__init__(
            f"KV table generation {generation} is retired; remap generation {successor}"
        )
        self.generation = generation
        self.successor = successor


class KvReadContended(RuntimeError):
    """``get`` saw the entry change under it ``attempts`` times in a row (the
    writer rewrote it faster than it could be copied). Not expected in
    practice; the caller may retry or ask the broker."""

    def __init__(self, bucket: str, key: str, attempts: int) -> None:
        super().__init__(f"KV read of {bucket!r}/{key!r} changed under it {attempts} times")
        self.bucket = bucket
        self.key = key
        self.attempts = attempts


def encode_name(bucket: str, key: str) -> bytes:
    """The record name of ``bucket``/``key``: utf-8, joined by a NUL byte.
    Raises ``ValueError`` for a NUL in the bucket or a name over 64 KiB."""
    if not isinstance(bucket, str) or not isinstance(key, str):
        raise TypeError(f"bucket and key must be str, got {bucket!r}, {key!r}")
    if "\0" in bucket:
        raise ValueError(f"bucket name {bucket!r} contains a NUL byte")
    name = f"{bucket}\0{key}".encode()
    if len(name) > MAX_NAME_BYTES:
        raise ValueError(f"bucket and key are {len(name)} bytes, over {MAX_NAME_BYTES}")
    return name


def hash_name(name: bytes, salt: bytes) -> int:
    """The 64-bit index hash of an encoded name under the table's salt."""
    return int.from_bytes(hashlib.blake2b(name, digest_size=8, key=salt).digest(), "little")


def index_bytes(index_slots: int) -> int:
    return index_slots * SLOT_SIZE


def required_size(index_slots: int, value_bytes: int) -> int:
    """Segment bytes for a table of ``index_slots`` slots (a power of two)
    and ``value_bytes`` of value space (rounded up to a multiple of 8)."""
    if index_slots < 2 or index_slots & (index_slots - 1):
        raise ValueError(f"index_slots must be a power of two >= 2, got {index_slots}")
    if value_bytes < 0:
        raise ValueError(f"value_bytes must be >= 0, got {value_bytes}")
    return INDEX_OFF + index_bytes(index_slots) + (value_bytes + 7) // 8 * 8


def words(buf: memoryview) -> memoryview:
    """``buf`` (bytes) seen as aligned u64 words, for single-store access."""
    usable = len(buf) // 8 * 8
    return buf[:usable].cast("Q")


@dataclass(frozen=True, slots=True)
class KvTableUsage:
    """What the header says about a table, readable from any mapping (for
    status displays; each word is current, the set is not a snapshot)."""

    generation: int
    retired_by: int
    """0 while live, else the successor's generation."""
    index_slots: int
    value_bytes: int
    live: int
    tombstones: int
    used_bytes: int


class KvTableReader:
    """Client side: lock-free lookups in a (read-only) mapped KV table.

    ``buf`` spans the whole segment (a read-only view is enough). The reader
    keeps a bounded cache of encoded names and their hashes (a miss costs a
    blake2b, ~0.6 us). ``get`` may be called from several threads at once;
    ``close`` must not race with them. One reader per mapping: after
    ``KvTableRetired``, close it and open a reader over the new mapping.
    """

    __slots__ = (
        "_buf",
        "_cache",
        "_end",
        "_index_end_word",
        "_mask",
        "_q",
        "_salt",
        "_structs",
        "_voff",
        "generation",
        "index_slots",
        "value_bytes",
    )

    def __init__(self, buf: memoryview) -> None:
        buf = buf.cast("B") if buf.format != "B" else memoryview(buf)  # our own view
        check_header(buf, KV_MAGIC, KV_VERSION)
        self.generation = read_word(buf, W_GENERATION)
        self.index_slots = read_word(buf, W_INDEX_SLOTS)
        self.value_bytes = read_word(buf, W_VALUE_BYTES)
        salt_word = read_word(buf, W_SALT)
        q = words(buf)
        voff = q[W_VALUE_OFF]
        if (
            self.index_slots < 1
            or self.index_slots & (self.index_slots - 1)
            or voff != INDEX_OFF + index_bytes(self.index_slots)
            or voff + self.value_bytes > len(buf)
        ):
            raise ValueError("KV table header describes a table that does not fit its segment")
        self._buf = buf
        self._q = q
        self._mask = self.index_slots - 1
        self._voff = voff
        self._end = voff + self.value_bytes
        self._index_end_word = voff >> 3
        self._salt = salt_word.to_bytes(8, "little")
        self._cache: dict[tuple[str, str], tuple[bytes, int, int, struct.Struct, int]] = {}
        self._structs: dict[int, struct.Struct] = {}

    def close(self) -> None:
        """Release this reader's views of the mapping, so that the caller can
        close it (``mmap.close`` refuses while views exist). The reader is
        unusable afterwards."""
        self._q.release()
        self._buf.release()

    def usage(self) -> KvTableUsage:
        q = self._q
        return KvTableUsage(
            generation=self.generation,
            retired_by=q[W_RETIRED],
            index_slots=self.index_slots,
            value_bytes=self.value_bytes,
            live=q[W_LIVE],
            tombstones=q[W_TOMBSTONES],
            used_bytes=q[W_USED_BYTES],
        )

    @property
    def retired(self) -> bool:
        """True once the broker switched to a successor table."""
        # SYNC POINT: kv.retire -- observe the retirement stored by KvTableWriter.retire.
        return self._q[W_RETIRED] != 0

    def _intern(self, bucket: str, key: str) -> tuple[bytes, int, int, struct.Struct, int]:
        name = encode_name(bucket, key)
        h = hash_name(name, self._salt)
        st = self._structs.get(len(name))
        if st is None:
            # revision, value_len, capacity, name_len, flags, pad, name
            st = struct.Struct(f"<QIIHH4x{len(name)}s")
            self._structs[len(name)] = st
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        home_word = (INDEX_OFF >> 3) + 2 * (h & self._mask)
        last_start = self._end - 8 - st.size  # the last record start with room for our name
        ent = (name, h | 1, home_word, st, last_start)
        self._cache[(bucket, key)] = ent
        return ent

    def get(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        """The value and revision of ``bucket``/``key``, or ``None`` when the
        key is absent or deleted. Never returns a torn value.

        Raises ``KvTableRetired`` once the table is retired (remap and retry),
        ``KvReadContended`` after ``MAX_READ_RETRIES`` failed validations,
        ``ValueError`` for a NUL in the bucket or an over-long name.
        """
        ent = self._cache.get((bucket, key))
        if ent is None:
            ent = self._intern(bucket, key)
        name, tag, home_word, st, last_start = ent
        q = self._q
        # SYNC POINT: kv.retire -- observe the retirement stored by KvTableWriter.retire.
        if q[W_RETIRED]:
            raise KvTableRetired(self.generation, q[W_RETIRED])
        w = home_word
        probes = attempts = 0
        while True:
            # SYNC POINT: kv.slot-tag -- observe a new key's tag (KvTableWriter._write).
            t = q[w]
            if t == tag:
                # SYNC POINT: kv.slot-ref -- observe the atomic switch; the record
                # it names was complete before it (KvTableWriter._write).
                ref = q[w + 1]
                roff = self._voff + ((ref & STAMP_MASK) << 3)
                # SYNC POINT: kv.record-seq -- observe the seq that KvTableWriter._write
                # made odd before writing the record and even after.
                seq = q[roff >> 3]
                if ref and seq & STAMP_MASK == ref >> 32:
                    if roff <= last_start:
                        rev, vlen, _cap, rnlen, flags, rname = st.unpack_from(self._buf, roff + 8)
                    else:  # a record too close to the end to hold our name
                        rnlen = -1
                    if rnlen == len(name) and rname == name:
                        if flags & FLAG_DELETED:
                            value = None
                        else:
                            start = roff + RECORD_HEADER_SIZE + rnlen
                            value = self._buf[start : start + vlen].tobytes()
                        # SYNC POINT: kv.record-seq + kv.slot-ref -- the seqlock recheck:
                        # reuse changes ref (and seq) before any byte of the copy.
                        if q[roff >> 3] == seq and q[w + 1] == ref:
                            return None if value is None else (value, rev)
                    elif q[w + 1] == ref:
                        ref = 0  # another key's record, still published: probe on
                if ref:  # the slot or its record changed under us: start over
                    attempts += 1
                    if attempts >= MAX_READ_RETRIES:
                        raise KvReadContended(bucket, key, attempts)
                    w = home_word
                    probes = 0
                    continue
            elif t == 0:
                return None
            probes += 1
            if probes > self._mask:
                return None
            w += 2
            if w >= self._index_end_word:
                w = INDEX_OFF >> 3
