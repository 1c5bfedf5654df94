"""The broker's KV store: the table segment, revisions, cas, watchers, leases.

Single writer: only the broker's event loop touches anything here. The
values live in a KV table (``layout.kv_table``) in a broker-owned segment
``/<prefix>-<pid>-kv<generation>`` that clients map read-only and read with
no round trip; every write goes through this module, which:

* assigns revisions per bucket (the bucket's write sequence: each put, each
  cas and each delete of a present key takes the next one; the first is 1).
  ``revisions`` keeps each bucket's last revision, so a bucket's sequence
  survives deletes and table growth;
* writes the table out of place (``KvTableWriter``); a put returns only after
  the value is published, so a client's ``get`` after its ``put`` sees it;
* grows the table when it is full: a segment of the next generation, sized
  by ``grow_geometry``, the live entries copied, the old table retired (its
  readers get ``KvTableRetired``, ask ``kv_info`` and remap) and unlinked.
  Growth past ``--kv-max-size`` raises ``Full`` naming the limit;
* feeds watchers: a watch is a buffer of changes the client drains with
  ``kv_watch_next`` calls, each answered at once when changes are buffered
  and otherwise held (deferred) until the next change: a stream over the
  control connection, one frame per batch of changes, in revision order.

Puts, cas and deletes come as ``KvWrite`` frames (``kv_write``), answered
by a ``KvWritten`` with the revision taken (0: a delete of an absent key) or
by a ``Result`` carrying the error. The other operations are calls
(``Call.method`` -> handler in ``KV_CALLS``; values travel inline):

==============  ===========================================  ================
method          args                                         value
==============  ===========================================  ================
kv_info                                                      name, size, gen
kv_get          bucket, key                                  [value, rev]|None
kv_keys         bucket                                       sorted keys
kv_watch        watch_id, bucket, pattern                    {rev: bucket's last}
kv_watch_next   watch_id                                     changes | None
kv_unwatch      watch_id                                     {}
kv_lease        bucket, key, ttl                             token
kv_heartbeat    bucket, key, token                           {}
kv_release      bucket, key, token                           {}
==============  ===========================================  ================

A change is ``[key, value, revision, deleted]``; ``kv_watch_next`` answers
``None`` once the watch ended.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._errors import Conflict, Full, InvalidArgument, PayloadTooLarge
from .._names import subject_matches, validate_bucket, validate_key, validate_key_pattern
from .._values import check_duration
from ..layout.kv_table import INDEX_OFF, required_size
from ..layout.kv_table_writer import KvTableFull, KvTableWriter, copy_into, grow_geometry
from ..protocol import KV_OP_DELETE, KV_OP_PUT, Call, KvWrite, Result
from ._journal import KV_DEL, KV_PUT
from ._leases import LeaseState
from ._segments import Segment

if TYPE_CHECKING:
    from ._broker import Broker, Session
    from ._config import BrokerConfig
    from ._journal import Journal

__all__ = ["KV_CALLS", "MAX_WATCH_BUFFER", "KvState", "initial_index_slots"]

log = logging.getLogger("klieo.shmd")

MAX_WATCH_BUFFER: Final = 100_000
"""Changes a watch may have buffered; past it the watch ends with ``Full``
(a watcher that stopped reading must not grow the broker without bound)."""
_SLOT_BYTES: Final = 16

Change = tuple[str, bytes, int, bool]


def initial_index_slots(size: int) -> int:
    """Index slots for a first table of ``size`` bytes: a power of two taking
    about 1/16 of the segment (one slot per 256 bytes), at least 64."""
    return 1 << max(6, (size // 256).bit_length() - 1)


class Watcher:
    """One ``watch`` of one session: its pattern and its buffered changes."""

    __slots__ = ("bucket", "buffer", "call_id", "overflow", "pattern", "session", "watch_id")

    def __init__(self, session: Session, watch_id: int, bucket: str, pattern: str) -> None:
        self.session = session
        self.watch_id = watch_id
        self.bucket = bucket
        self.pattern = pattern
        self.buffer: deque[Change] = deque()
        self.call_id: int | None = None  # a kv_watch_next waiting for changes
        self.overflow = False


class KvState:
    """The KV table, the buckets' revisions, watchers and leases."""

    def __init__(
        self, config: BrokerConfig, base: str, mode: int, gid: int | None, defer: object
    ) -> None:
        self.config = config
        self._base = base
        self._mode = mode
        self._gid = gid
        self.defer = defer
        self.revisions: dict[str, int] = {}
        self._dead: set[tuple[str, str]] = set()  # keys whose table entry is a tombstone
        self.watchers: dict[str, list[Watcher]] = {}
        self.watches: dict[Session, dict[int, Watcher]] = {}
        self.leases = LeaseState()
        self.journal: Journal | None = None
        self.seg, self.table = self._new_table(
            initial_index_slots(config.kv_size), config.kv_size, 1
        )

    # --- the table segment ---------------------------------------------------
    def _new_table(self, slots: int, size: int, generation: int) -> tuple[Segment, KvTableWriter]:
        seg = Segment(f"{self._base}-kv{generation}", size, self._mode, self._gid)
        try:
            table = KvTableWriter(seg.view, create=True, index_slots=slots, generation=generation)
        except BaseException:
            seg.destroy()
            raise
        return seg, table

    def info(self) -> dict[str, Any]:
        """What a client needs to map the current table."""
        return {"name": self.seg.name, "size": self.seg.size, "generation": self.table.generation}

    def _grow(self, exc: KvTableFull) -> None:
        """Replace the table by a bigger one (or a rebuilt one of the largest
        size allowed) that holds every live entry plus ``exc.needed`` bytes."""
        stats = self.table.stats()
        limit = self.config.kv_max_size
        slots, value_bytes = grow_geometry(stats, exc.needed)
        size = required_size(slots, value_bytes)
        if size > limit:
            size = limit
            room = limit - INDEX_OFF - slots * _SLOT_BYTES
            live = stats.used_bytes - stats.limbo_bytes
            if room < live + exc.needed:
                raise Full(f"KV table {exc.kind} (--kv-max-size)", limit) from exc
        generation = self.table.generation + 1
        try:
            seg, table = self._new_table(slots, size, generation)
        except OSError as err:
            log.error("cannot create a KV table of %d bytes: %s", size, err)
            raise Full(f"KV table {exc.kind} (cannot grow: {err})", stats.value_bytes) from err
        try:
            copy_into(self.table, table)
        except KvTableFull as err:
            table.close()
            seg.destroy()
            raise Full(f"KV table {exc.kind} (--kv-max-size)", limit) from err
        old_seg, old = self.seg, self.table
        # SYNC POINT: kv.retire -- every live entry is in the successor before
        # readers are told to switch (KvTableReader.get raises KvTableRetired).
        old.retire(generation)
        old.close()
        old_seg.destroy()
        self.seg, self.table = seg, table
        self._dead.clear()  # copy_into drops tombstones
        log.info("KV table grown to generation %d: %d bytes, %d slots", generation, size, slots)

    def _store(self, bucket: str, key: str, value: bytes | None, revision: int) -> bool:
        """Write (``value`` None: delete) into the table, growing it when full."""
        for _ in range(3):
            try:
                if value is None:
                    return self.table.delete(bucket, key, revision)
                self.table.put(bucket, key, value, revision)
                return True
            except KvTableFull as exc:
                self._grow(exc)
        raise Full("KV table", self.config.kv_max_size)

    def _journalled_store(self, bucket: str, key: str, value: bytes | None, rev: int) -> bool:
        """``_store``, with the change written to the journal first: clients
        read the table with no round trip, so a value must be on file before
        they can see it (else a restart could give its revision to another
        value someone never saw). Should the table refuse it (``Full``), a
        record putting back what was there follows."""
        journal = self.journal
        if journal is None:
            return self._store(bucket, key, value, rev)
        if value is None:
            journal.append([KV_DEL, bucket, key, rev])
        else:
            journal.append([KV_PUT, bucket, key, value, rev])
        journal.flush()
        try:
            return self._store(bucket, key, value, rev)
        except Full:  # the table refused it whole: what it holds is what was there
            before = self.table.get(bucket, key) if (bucket, key) not in self._dead else None
            if before is None:
                journal.append([KV_DEL, bucket, key, rev])
            else:
                journal.append([KV_PUT, bucket, key, before[0], before[1]])
            raise

    def close(self) -> None:
        """Drop the broker's mapping and unlink the segment (clean shutdown)."""
        self.table.close()
        self.seg.destroy()

    # --- values --------------------------------------------------------------
    def current(self, bucket: str, key: str) -> int | None:
        """The revision of the key's present value, ``None`` when absent."""
        rev = self.table.revision(bucket, key)
        if rev is not None and (bucket, key) in self._dead:
            return None
        return rev

    def put(self, bucket: str, key: str, value: bytes) -> int:
        rev = self.revisions.get(bucket, 0) + 1
        self._journalled_store(bucket, key, value, rev)
        self.revisions[bucket] = rev
        if self._dead:
            self._dead.discard((bucket, key))
        if bucket in self.watchers:
            self._notify(bucket, (key, value, rev, False))
        return rev

    def cas(self, bucket: str, key: str, value: bytes, expected: int | None) -> int:
        current = self.current(bucket, key)
        if current != expected:
            raise Conflict(
                f"key {key!r} of bucket {bucket!r} is at revision {current}, not {expected}",
                expected=expected,
                current=current,
            )
        return self.put(bucket, key, value)

    def delete(self, bucket: str, key: str) -> int:
        """The revision the delete took; 0 when the key was absent (then
        no revision is taken, and nothing is written)."""
        if self.current(bucket, key) is None:
            return 0
        rev = self.revisions.get(bucket, 0) + 1
        if not self._journalled_store(bucket, key, None, rev):
            return 0
        self.revisions[bucket] = rev
        self._dead.add((bucket, key))
        if bucket in self.watchers:
            self._notify(bucket, (key, b"", rev, True))
        return rev

    def keys(self, bucket: str) -> list[str]:
        return sorted(self.table.keys(bucket))

    # The jobs' dedup index (``_jobs.DedupIndex``): records in the KV bucket
    # ``dedup.<queue>``, visible to ``kv.get`` like any value.
    def get(self, bucket: str, key: str) -> bytes | None:
        found = self.table.get(bucket, key)
        return None if found is None else found[0]

    def create(self, bucket: str, key: str, value: bytes) -> None:
        if self.current(bucket, key) is None:
            self.put(bucket, key, value)

    # --- watchers ------------------------------------------------------------
    def watch(self, s: Session, watch_id: int, bucket: str, pattern: str) -> None:
        owned = self.watches.setdefault(s, {})
        if watch_id in owned:
            raise InvalidArgument("watch_id", watch_id, "already in use on this connection")
        w = Watcher(s, watch_id, bucket, pattern)
        current = []
        for key in self.table.keys(bucket):
            if pattern == ">" or subject_matches(pattern, key):
                found = self.table.get(bucket, key)
                if found is not None:
                    current.append((found[1], key, found[0]))
        current.sort()
        w.buffer.extend((key, value, rev, False) for rev, key, value in current)
        owned[watch_id] = w
        self.watchers.setdefault(bucket, []).append(w)

    def _notify(self, bucket: str, change: Change) -> None:
        key = change[0]
        watchers = self.watchers[bucket]
        overflow = False
        for w in watchers:
            if w.pattern == ">" or subject_matches(w.pattern, key):
                if w.call_id is not None:
                    call_id, w.call_id = w.call_id, None
                    w.session.send(Result(call_id, [list(change)]))
                elif len(w.buffer) < MAX_WATCH_BUFFER:
                    w.buffer.append(change)
                else:  # ended with Full at its next kv_watch_next
                    w.overflow = overflow = True
                    w.buffer.clear()
        if overflow:
            watchers[:] = [w for w in watchers if not w.overflow]
            if not watchers:
                del self.watchers[bucket]

    def watch_next(self, s: Session, watch_id: int, call_id: int) -> object:
        """Buffered changes now, or defer the answer until the next change."""
        w = self.watches.get(s, {}).get(watch_id)
        if w is None:
            return None  # ended
        if w.overflow:
            self._unwatch(w)
            raise Full(f"watch buffer of bucket {w.bucket!r}", MAX_WATCH_BUFFER)
        if w.buffer:
            budget = self.config.max_frame // 2
            out: list[list[object]] = []
            buf = w.buffer
            while buf and (not out or budget > len(buf[0][1])):
                change = buf.popleft()
                budget -= len(change[1]) + len(change[0]) + 32
                out.append(list(change))
            return out
        if w.call_id is not None:
            raise InvalidArgument("watch_id", watch_id, "already has a kv_watch_next waiting")
        w.call_id = call_id
        return self.defer

    def unwatch(self, s: Session, watch_id: int) -> None:
        w = self.watches.get(s, {}).get(watch_id)
        if w is not None:
            self._unwatch(w)
            if w.call_id is not None:
                s.send(Result(w.call_id, None))
                w.call_id = None

    def _unwatch(self, w: Watcher) -> None:
        owned = self.watches.get(w.session)
        if owned is not None:
            owned.pop(w.watch_id, None)
            if not owned:
                del self.watches[w.session]
        ws = self.watchers.get(w.bucket)
        if ws is not None and w in ws:
            ws.remove(w)
            if not ws:
                del self.watchers[w.bucket]

    # --- sessions and time ---------------------------------------------------
    def drop_session(self, s: Session) -> None:
        """``s`` went away: its watches end, its leases end at once."""
        for w in list(self.watches.get(s, {}).values()):
            self._unwatch(w)
        self.leases.drop_session(s)

    def tick(self, now: float) -> None:
        self.leases.tick(now)
        self.table.reclaim()

    def stats(self) -> dict[str, Any]:
        st = self.table.stats()
        return {
            "kv_generation": st.generation,
            "kv_live": st.live,
            "kv_used": st.used_bytes,
            "kv_size": self.seg.size,
            "kv_leases": len(self.leases.grants),
            "kv_watches": sum(len(ws) for ws in self.watchers.values()),
        }


# --- calls -------------------------------------------------------------------
_VALID_CACHE: Final = 10_000
_valid: set[tuple[str, str]] = set()  # (bucket, key) pairs that passed validation


def _names(a: dict[str, Any]) -> tuple[str, str]:
    return _checked(a["bucket"], a["key"])


def _checked(bucket: Any, key: Any) -> tuple[str, str]:
    if type(bucket) is str and type(key) is str and (bucket, key) in _valid:
        return bucket, key
    names = validate_bucket(bucket), validate_key(key)
    if len(_valid) >= _VALID_CACHE:
        _valid.clear()
    _valid.add(names)
    return names


def kv_write(b: Broker, ev: KvWrite) -> int:
    """Carry out a ``KvWrite``: the revision it took (0: a delete of an
    absent key). Raises the ``BusError`` its answer carries."""
    bucket, key = _checked(ev.bucket, ev.key)
    if ev.op == KV_OP_DELETE:
        return b.kv.delete(bucket, key)
    value = ev.value
    limit = b.config.max_payload
    if len(value) > limit:
        raise PayloadTooLarge(len(value), limit)
    if ev.op == KV_OP_PUT:
        return b.kv.put(bucket, key, value)
    return b.kv.cas(bucket, key, value, ev.expected)


def _int(a: dict[str, Any], name: str) -> int:
    value = a[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(name, value, "must be an int")
    return value


def _c_info(b: Broker, s: Session, ev: Call, now: float) -> object:
    return b.kv.info()


def _c_get(b: Broker, s: Session, ev: Call, now: float) -> object:
    found = b.kv.table.get(*_names(ev.args))
    return None if found is None else list(found)


def _c_keys(b: Broker, s: Session, ev: Call, now: float) -> object:
    return b.kv.keys(validate_bucket(ev.args["bucket"]))


def _c_watch(b: Broker, s: Session, ev: Call, now: float) -> object:
    a = ev.args
    bucket = validate_bucket(a["bucket"])
    pattern = validate_key_pattern(a["pattern"])
    b.kv.watch(s, _int(a, "watch_id"), bucket, pattern)
    return {"rev": b.kv.revisions.get(bucket, 0)}


def _c_watch_next(b: Broker, s: Session, ev: Call, now: float) -> object:
    return b.kv.watch_next(s, _int(ev.args, "watch_id"), ev.call_id)


def _c_unwatch(b: Broker, s: Session, ev: Call, now: float) -> object:
    b.kv.unwatch(s, _int(ev.args, "watch_id"))
    return {}


def _c_lease(b: Broker, s: Session, ev: Call, now: float) -> object:
    bucket, key = _names(ev.args)
    ttl = check_duration("ttl", ev.args["ttl"], positive=True)
    return b.kv.leases.grant(s, bucket, key, ttl, now)


def _c_heartbeat(b: Broker, s: Session, ev: Call, now: float) -> object:
    bucket, key = _names(ev.args)
    b.kv.leases.heartbeat(s, bucket, key, _int(ev.args, "token"), now)
    return {}


def _c_release(b: Broker, s: Session, ev: Call, now: float) -> object:
    bucket, key = _names(ev.args)
    b.kv.leases.release(s, bucket, key, _int(ev.args, "token"), now)
    return {}


KV_CALLS: Final[dict[str, Callable[[Broker, Session, Call, float], object]]] = {
    "kv_info": _c_info,
    "kv_get": _c_get,
    "kv_keys": _c_keys,
    "kv_watch": _c_watch,
    "kv_watch_next": _c_watch_next,
    "kv_unwatch": _c_unwatch,
    "kv_lease": _c_lease,
    "kv_heartbeat": _c_heartbeat,
    "kv_release": _c_release,
}
"""The KV calls, merged into the broker's call table."""
