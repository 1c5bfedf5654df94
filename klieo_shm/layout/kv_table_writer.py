"""The broker's side of the KV table: the single writer.

The byte map, the publish protocol and the reclamation argument are in
``kv_table``'s opening comment; this module follows them. Every word a reader
loads is stored here with one aligned store through ``self._q`` (the segment
seen as u64 words); record bodies are written while the record is
unpublished, behind an odd ``seq``.

Contract for the broker: call the writer from one thread only (the event
loop). A method that raises ``KvTableFull`` or ``ValueError`` changed nothing
a reader can see, and the table stays usable. ``put`` and ``delete`` store the
revision they are given; assigning per-bucket revisions, checking ``cas``
expectations and journalling are the broker's business.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from .._errors import Full
from ._header import HEADER_SIZE, LayoutError, check_header, read_word, write_header, write_word
from .kv_table import (
    DEFAULT_GRACE_S,
    FLAG_DELETED,
    INDEX_OFF,
    KV_MAGIC,
    KV_VERSION,
    MAX_LOAD_FACTOR,
    MAX_VALUE_BYTES,
    RECORD,
    RECORD_HEADER_SIZE,
    STAMP_MASK,
    W_GENERATION,
    W_INDEX_SLOTS,
    W_LAST_STAMP,
    W_LIVE,
    W_RETIRED,
    W_SALT,
    W_TOMBSTONES,
    W_TOTAL_SIZE,
    W_USED_BYTES,
    W_VALUE_BYTES,
    W_VALUE_OFF,
    KvTableRetired,
    encode_name,
    hash_name,
    index_bytes,
    words,
)
from .kv_table_space import MIN_BLOCK, ValueSpace

__all__ = [
    "KvTableFull",
    "KvTableStats",
    "KvTableWriter",
    "copy_into",
    "grow_geometry",
]

_REST: Final = struct.Struct("<QIIHHI")
"""The record header after ``seq``: revision, value_len, capacity, name_len, flags, pad."""


class KvTableFull(Full):
    """The table cannot take this write; raised before anything changed.

    ``kind`` is ``"index"`` (no slot for a new key within the load limit;
    tombstones count until a rebuild drops them) or ``"value space"`` (no
    ``needed`` contiguous bytes; ``free`` is the free total, so a small
    ``free`` means grow and a large one fragmentation: rebuild at the same
    size). ``limit`` is the slot limit or the value space size; ``resource``
    (from ``Full``) reads ``"KV table index"`` or ``"KV table value space"``.
    ``grow_geometry(writer.stats(), exc.needed)`` sizes the successor."""

    def __init__(
        self, kind: Literal["index", "value space"], limit: int, needed: int, free: int
    ) -> None:
        super().__init__(f"KV table {kind}", limit)
        self.kind = kind
        self.needed = needed
        self.free = free


@dataclass(frozen=True, slots=True)
class KvTableStats:
    """The writer's view of its table (exact, unlike ``KvTableUsage``)."""

    generation: int
    index_slots: int
    max_occupied: int
    """Slots that may hold a key (live or tombstone): the index's limit."""
    live: int
    tombstones: int
    value_bytes: int
    used_bytes: int
    """Value space held by records, limbo included."""
    limbo_bytes: int
    free_bytes: int
    early_reuses: int
    """Records reused before their grace period ended, under memory pressure."""


class _Entry:
    __slots__ = ("cap", "deleted", "name", "off", "revision", "slot")

    def __init__(
        self, name: bytes, slot: int, off: int, cap: int, revision: int, deleted: bool
    ) -> None:
        self.name = name
        self.slot = slot
        self.off = off  # offset in the value space
        self.cap = cap
        self.revision = revision
        self.deleted = deleted


class KvTableWriter:
    """The single writer of one KV table segment.

    ``create=True`` formats ``buf`` (the whole segment) as an empty table of
    ``index_slots`` slots (a power of two); the value space is the rest of
    ``buf``. ``create=False`` opens a table this or an earlier broker
    formatted and rebuilds the in-memory state from the index (after a broker
    restart). ``grace_s`` is how long a replaced record waits before its space
    is reused; ``clock`` gives seconds (monotonic).
    """

    def __init__(
        self,
        buf: memoryview,
        *,
        create: bool,
        index_slots: int | None = None,
        generation: int = 1,
        grace_s: float = DEFAULT_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
        salt: bytes | None = None,
    ) -> None:
        buf = buf.cast("B") if buf.format != "B" else memoryview(buf)  # our own view
        if buf.readonly:
            raise ValueError("the KV table writer needs a writable mapping")
        self._buf = buf
        self._clock = clock
        if create:
            self._format(buf, index_slots, generation, salt)
        else:
            check_header(buf, KV_MAGIC, KV_VERSION)
        self.generation = read_word(buf, W_GENERATION)
        self.index_slots = read_word(buf, W_INDEX_SLOTS)
        self.value_bytes = read_word(buf, W_VALUE_BYTES)
        self._salt = read_word(buf, W_SALT).to_bytes(8, "little")
        self._q = q = words(buf)
        self._voff = q[W_VALUE_OFF]
        if self._voff != INDEX_OFF + index_bytes(self.index_slots):
            raise ValueError("KV table header has an inconsistent value offset")
        self._mask = self.index_slots - 1
        self.max_occupied = min(int(self.index_slots * MAX_LOAD_FACTOR), self.index_slots - 1)
        self._space = ValueSpace(self.value_bytes, grace_s)
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._tombs: dict[int, tuple[str, str]] = {}  # slot -> key of a deleted entry
        self._buckets: dict[str, dict[str, None]] = {}  # live keys per bucket
        self._occupied = 0
        self._stamp = q[W_LAST_STAMP]
        self._retired_by = q[W_RETIRED]
        self._packers: dict[int, struct.Struct] = {}
        if create:
            self._space.release(0, self.value_bytes)
        else:
            self._recover()
        self._store_stats()

    # -- formatting and recovery -------------------------------------------

    @staticmethod
    def _format(
        buf: memoryview, index_slots: int | None, generation: int, salt: bytes | None
    ) -> None:
        if index_slots is None or index_slots < 2 or index_slots & (index_slots - 1):
            raise ValueError(f"index_slots must be a power of two >= 2, got {index_slots}")
        if generation < 1:
            raise ValueError(f"generation must be >= 1, got {generation}")
        salt = secrets.token_bytes(8) if salt is None else salt
        if len(salt) != 8:
            raise ValueError("salt must be 8 bytes")
        voff = INDEX_OFF + index_bytes(index_slots)
        value_bytes = (len(buf) - voff) // 8 * 8
        if value_bytes < MIN_BLOCK:
            raise ValueError(f"a segment of {len(buf)} bytes leaves no value space")
        if value_bytes >> 3 > STAMP_MASK:
            raise ValueError("value space over 32 GiB cannot be addressed by a slot ref")
        total = voff + value_bytes
        write_header(buf, KV_MAGIC, KV_VERSION, total - HEADER_SIZE)
        buf[HEADER_SIZE:voff] = bytes(voff - HEADER_SIZE)  # KV header and empty index
        write_word(buf, W_GENERATION, generation)
        write_word(buf, W_INDEX_SLOTS, index_slots)
        write_word(buf, W_VALUE_BYTES, value_bytes)
        write_word(buf, W_SALT, int.from_bytes(salt, "little"))
        q = words(buf)
        q[W_TOTAL_SIZE] = total
        q[W_VALUE_OFF] = voff

    def _recover(self) -> None:
        q, buf, voff = self._q, self._buf, self._voff
        live: list[tuple[int, int]] = []
        for slot in range(self.index_slots):
            w = (INDEX_OFF >> 3) + 2 * slot
            tag, ref = q[w], q[w + 1]
            if tag == 0:
                continue
            if ref == 0:  # died between storing the tag and the ref of a new key
                q[w] = 0
                continue
            off = (ref & STAMP_MASK) << 3
            seq, rev, _vlen, cap, nlen, flags, _ = RECORD.unpack_from(buf, voff + off)
            if seq & STAMP_MASK != ref >> 32 or seq & 1 or off + cap > self.value_bytes:
                raise LayoutError(f"KV table slot {slot} points at a damaged record")
            name = bytes(
                buf[voff + off + RECORD_HEADER_SIZE : voff + off + RECORD_HEADER_SIZE + nlen]
            )
            real_tag = hash_name(name, self._salt) | 1
            if tag != real_tag:  # died while a new key took over a tombstone's slot
                q[w] = real_tag
            bucket, key = (part.decode() for part in name.split(b"\0", 1))
            deleted = bool(flags & FLAG_DELETED)
            self._entries[(bucket, key)] = _Entry(name, slot, off, cap, rev, deleted)
            if deleted:
                self._tombs[slot] = (bucket, key)
            else:
                self._buckets.setdefault(bucket, {})[key] = None
            self._occupied += 1
            self._stamp = max(self._stamp, seq)
            live.append((off, cap))
        pos = 0
        for off, cap in sorted(live):
            if off > pos:
                self._space.release(pos, off - pos)
            pos = off + cap
        if pos < self.value_bytes:
            self._space.release(pos, self.value_bytes - pos)
        self._stamp += self._stamp & 1

    # -- writes --------------------------------------------------------------

    def put(
        self, bucket: str, key: str, value: bytes | bytearray | memoryview, revision: int
    ) -> None:
        """Store ``value`` under ``bucket``/``key`` with ``revision``; readers
        see either the previous value or this one, whole. Raises
        ``KvTableFull`` (nothing changed) or ``ValueError`` for a bad name or
        a value over the record limit."""
        self._write(bucket, key, memoryview(value).cast("B"), revision, 0)

    def delete(self, bucket: str, key: str, revision: int) -> bool:
        """Replace a live value by a tombstone carrying ``revision``; readers
        then get ``None``. Returns False (and writes nothing) when the key is
        absent or already deleted."""
        ent = self._entries.get((bucket, key))
        if ent is None or ent.deleted:
            return False
        self._write(bucket, key, memoryview(b""), revision, FLAG_DELETED)
        return True

    def _write(self, bucket: str, key: str, value: memoryview, revision: int, flags: int) -> None:
        if self._retired_by:
            raise KvTableRetired(self.generation, self._retired_by)
        ent = self._entries.get((bucket, key))
        name = encode_name(bucket, key) if ent is None else ent.name
        if not 0 <= revision <= 0xFFFF_FFFF_FFFF_FFFF:
            raise ValueError(f"revision {revision} is not a u64")
        vlen = value.nbytes
        if vlen > MAX_VALUE_BYTES:
            raise ValueError(f"value of {vlen} bytes is over the record limit {MAX_VALUE_BYTES}")
        nlen = len(name)
        need = (RECORD_HEADER_SIZE + nlen + vlen + 7) // 8 * 8
        now = self._clock()
        space = self._space
        stolen: tuple[str, str] | None = None
        tag = 0
        if ent is None:
            h = hash_name(name, self._salt)
            tag = h | 1
            slot, stolen = self._find_slot(h)
        else:
            slot = ent.slot
        got = None
        if space.limbo and space.limbo[0][0] <= now:
            got = space.reuse(need, now)
            space.reclaim(now)
        if got is None:
            got = space.alloc(need)
        if got is None and space.limbo:
            space.flush()
            got = space.alloc(need)
        if got is None:
            raise KvTableFull("value space", self.value_bytes, need, space.free_bytes)
        off, cap = got
        stamp = self._stamp + 2
        if stamp & STAMP_MASK == 0:
            stamp += 2
        self._stamp = stamp
        q = self._q
        buf = self._buf
        q[W_LAST_STAMP] = stamp
        base = self._voff + off
        # SYNC POINT: kv.record-seq -- odd seq before any byte of the record
        # (observed by KvTableReader.get, first load and recheck).
        q[base >> 3] = stamp - 1
        packer = self._packers.get(nlen)
        if packer is None:
            packer = self._packers[nlen] = struct.Struct(f"<QIIHHI{nlen}s")
        packer.pack_into(buf, base + 8, revision, vlen, cap, nlen, flags, 0, name)
        if vlen:
            body = base + RECORD_HEADER_SIZE + nlen
            buf[body : body + vlen] = value
        # SYNC POINT: kv.record-seq -- record complete, seq even (KvTableReader.get).
        q[base >> 3] = stamp
        w = (INDEX_OFF >> 3) + 2 * slot
        if ent is None:
            if stolen is not None:
                old = self._entries.pop(stolen)
                del self._tombs[slot]
                space.retire(old.off, old.cap, now)
            else:
                self._occupied += 1
            # SYNC POINT: kv.slot-tag -- tag before ref (observed by KvTableReader.get).
            q[w] = tag
        # SYNC POINT: kv.slot-ref -- the atomic switch, after the record is
        # complete and before the old record enters limbo (KvTableReader.get).
        q[w + 1] = (stamp & STAMP_MASK) << 32 | off >> 3
        deleted = flags & FLAG_DELETED != 0
        if ent is None:
            self._entries[(bucket, key)] = _Entry(name, slot, off, cap, revision, deleted)
        else:
            space.retire(ent.off, ent.cap, now)
            if ent.deleted:
                del self._tombs[slot]
            elif deleted:
                keys = self._buckets[bucket]
                del keys[key]
                if not keys:
                    del self._buckets[bucket]
            was_live = not ent.deleted
            ent.off, ent.cap, ent.revision, ent.deleted = off, cap, revision, deleted
            if was_live and not deleted:  # a plain overwrite: counts unchanged
                q[W_USED_BYTES] = self.value_bytes - space.free_bytes
                return
        if deleted:
            self._tombs[slot] = (bucket, key)
        else:
            self._buckets.setdefault(bucket, {})[key] = None
        self._store_stats()

    def _find_slot(self, h: int) -> tuple[int, tuple[str, str] | None]:
        """The slot for a new key: the first tombstone or empty slot on its
        probe chain. Raises ``KvTableFull`` when taking an empty slot would
        pass the load limit."""
        q, mask, tombs = self._q, self._mask, self._tombs
        i = h & mask
        for _ in range(self.index_slots):
            stolen = tombs.get(i)
            if stolen is not None:
                return i, stolen
            if q[(INDEX_OFF >> 3) + 2 * i] == 0:
                if self._occupied >= self.max_occupied:
                    break
                return i, None
            i = (i + 1) & mask
        raise KvTableFull("index", self.max_occupied, 1, self.max_occupied - self._occupied)

    def _store_stats(self) -> None:
        q = self._q
        q[W_LIVE] = len(self._entries) - len(self._tombs)
        q[W_TOMBSTONES] = len(self._tombs)
        q[W_USED_BYTES] = self.value_bytes - self._space.free_bytes

    def reclaim(self) -> None:
        """Free replaced records whose grace period is over (``put`` and
        ``delete`` do this too; call it from a timer when writes are rare)."""
        self._space.reclaim(self._clock())
        self._store_stats()

    def close(self) -> None:
        """Release the writer's views of the mapping (see ``KvTableReader.close``)."""
        self._q.release()
        self._buf.release()

    def retire(self, successor: int) -> None:
        """Tell readers the table is replaced by generation ``successor``.
        Call it after the successor holds every entry; write only there after."""
        if successor <= self.generation:
            raise ValueError(f"successor generation {successor} must be > {self.generation}")
        # SYNC POINT: kv.retire -- observed by KvTableReader.get and .retired.
        self._q[W_RETIRED] = successor
        self._retired_by = successor

    # -- reads (the writer's own view; no seqlock needed) ---------------------

    def get(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        """Same answer as ``KvTableReader.get``, from the writer's state."""
        ent = self._entries.get((bucket, key))
        if ent is None or ent.deleted:
            return None
        return self._value(ent), ent.revision

    def revision(self, bucket: str, key: str) -> int | None:
        """The revision stored for the key, a deleted key's tombstone included."""
        ent = self._entries.get((bucket, key))
        return None if ent is None else ent.revision

    def _value(self, ent: _Entry) -> bytes:
        base = self._voff + ent.off
        _rev, vlen, _cap, nlen, _flags, _ = _REST.unpack_from(self._buf, base + 8)
        start = base + RECORD_HEADER_SIZE + nlen
        return self._buf[start : start + vlen].tobytes()

    def keys(self, bucket: str) -> list[str]:
        """The bucket's live keys, in the order they were first stored."""
        return list(self._buckets.get(bucket, ()))

    def buckets(self) -> list[str]:
        """Buckets with at least one live key."""
        return list(self._buckets)

    def items(self) -> Iterator[tuple[str, str, bytes, int]]:
        """Every live (bucket, key, value, revision). Do not write while iterating."""
        for (bucket, key), ent in self._entries.items():
            if not ent.deleted:
                yield bucket, key, self._value(ent), ent.revision

    def stats(self) -> KvTableStats:
        space = self._space
        return KvTableStats(
            generation=self.generation,
            index_slots=self.index_slots,
            max_occupied=self.max_occupied,
            live=len(self._entries) - len(self._tombs),
            tombstones=len(self._tombs),
            value_bytes=self.value_bytes,
            used_bytes=self.value_bytes - space.free_bytes,
            limbo_bytes=space.limbo_bytes,
            free_bytes=space.free_bytes,
            early_reuses=space.early_reuses,
        )


def grow_geometry(stats: KvTableStats, needed: int = 0) -> tuple[int, int]:
    """(index_slots, value_bytes) for a successor table holding the live
    entries of ``stats`` plus ``needed`` bytes with room to spare: live keys
    at most half the slot limit, live bytes at most half the value space, and
    never smaller than the current table."""
    slots = stats.index_slots
    while (stats.live + 1) * 2 > min(int(slots * MAX_LOAD_FACTOR), slots - 1):
        slots *= 2
    live_bytes = stats.used_bytes - stats.limbo_bytes
    value_bytes = stats.value_bytes
    while (live_bytes + needed) * 2 > value_bytes:
        value_bytes *= 2
    return slots, value_bytes


def copy_into(src: KvTableWriter, dst: KvTableWriter) -> int:
    """Copy every live entry of ``src`` into the empty table ``dst`` (tombstones
    are dropped); return how many. Raises ``KvTableFull`` if ``dst`` is too
    small. Then ``src.retire(dst.generation)`` switches the readers over."""
    n = 0
    for bucket, key, value, revision in src.items():
        dst.put(bucket, key, value, revision)
        n += 1
    return n
