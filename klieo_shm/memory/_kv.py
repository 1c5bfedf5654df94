"""The KV store of a memory world: buckets, revisions, watches, leases.

A bucket's revision is its write sequence: each put, each cas and each
delete of a present key (a tombstone, as in NATS KV) takes the next one, so
the first write returns 1. Deleting an absent key writes nothing and takes
no revision. A watch gets a snapshot of the matching present keys (by
revision), then every later put and delete; it buffers without bound.

Leases live beside the values and never touch them. Each grant of a key takes
the key's next fencing token (tokens never repeat for a key). A lease is held
until released, until its bus closes, or until ``ttl`` passes without a
heartbeat; expiry is checked when someone looks (there is nothing to do at the
moment a lease runs out, so no timer is needed).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from .._errors import Conflict, InvalidArgument
from .._handles import KvWatch, Lease
from .._interfaces import KvStore
from .._names import subject_matches, validate_bucket, validate_key, validate_key_pattern
from .._values import KvChange, KvEntry, Revision, check_duration
from ._core import Session, WaitSet
from ._world import World, check_open

__all__ = ["KvState", "MemoryKvStore"]


@dataclass(slots=True, eq=False)
class _Watcher:
    bucket: str
    pattern: str
    session: Session
    buffer: deque[KvChange] = field(default_factory=deque)
    waiters: WaitSet = field(default_factory=WaitSet)
    closed: bool = False


@dataclass(slots=True, eq=False)
class _Grant:
    token: int
    session: Session
    ttl: float
    deadline: float

    def held(self, now: float) -> bool:
        return not self.session.closed and now < self.deadline


@dataclass(slots=True, eq=False)
class _Bucket:
    revision: int = 0
    entries: dict[str, KvEntry] = field(default_factory=dict)
    watchers: set[_Watcher] = field(default_factory=set)
    grants: dict[str, _Grant] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)


class KvState:
    """Every bucket of one world (guarded by ``world.lock``)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.buckets: dict[str, _Bucket] = {}
        self.watchers: dict[Session, set[_Watcher]] = {}

    def bucket(self, name: str) -> _Bucket:
        found = self.buckets.get(name)
        if found is None:
            found = self.buckets[name] = _Bucket()
        return found

    def get(self, bucket: str, key: str) -> KvEntry | None:
        found = self.buckets.get(bucket)
        return None if found is None else found.entries.get(key)

    def _write(self, bucket: str, key: str, value: bytes | None) -> Revision:
        b = self.bucket(bucket)
        b.revision += 1
        if value is None:
            del b.entries[key]
            change = KvChange(bucket, key, b"", b.revision, "delete")
        else:
            b.entries[key] = KvEntry(value, b.revision)
            change = KvChange(bucket, key, value, b.revision, "put")
        for watcher in b.watchers:
            if subject_matches(watcher.pattern, key):
                watcher.buffer.append(change)
                watcher.waiters.wake_all()
        return b.revision

    def put(self, bucket: str, key: str, value: bytes) -> Revision:
        return self._write(bucket, key, value)

    def cas(self, bucket: str, key: str, value: bytes, expected: Revision | None) -> Revision:
        entry = self.get(bucket, key)
        current = None if entry is None else entry.revision
        if current != expected:
            raise Conflict(
                f"key {key!r} of bucket {bucket!r} is at revision {current}, not {expected}",
                expected=expected,
                current=current,
            )
        return self._write(bucket, key, value)

    def delete(self, bucket: str, key: str) -> None:
        if self.get(bucket, key) is not None:
            self._write(bucket, key, None)

    def watch(self, session: Session, bucket: str, pattern: str) -> _Watcher:
        b = self.bucket(bucket)
        watcher = _Watcher(bucket, pattern, session)
        current = sorted(
            (e.revision, k, e.value) for k, e in b.entries.items() if subject_matches(pattern, k)
        )
        watcher.buffer.extend(KvChange(bucket, k, v, rev) for rev, k, v in current)
        b.watchers.add(watcher)
        self.watchers.setdefault(session, set()).add(watcher)
        return watcher

    def unwatch(self, watcher: _Watcher) -> None:
        watcher.closed = True
        watcher.buffer.clear()
        self.bucket(watcher.bucket).watchers.discard(watcher)
        owned = self.watchers.get(watcher.session)
        if owned is not None:
            owned.discard(watcher)
        watcher.waiters.wake_all()

    def grant(self, session: Session, bucket: str, key: str, ttl: float) -> int:
        b = self.bucket(bucket)
        now = time.monotonic()
        holder = b.grants.get(key)
        if holder is not None and holder.held(now):
            raise Conflict(
                f"lease on key {key!r} of bucket {bucket!r} is held (token {holder.token})",
                current=holder.token,
            )
        token = b.tokens.get(key, 0) + 1
        b.tokens[key] = token
        b.grants[key] = _Grant(token, session, ttl, now + ttl)
        return token

    def _holder(self, session: Session, bucket: str, key: str, token: int) -> _Grant | None:
        """The live grant of ``key``, ``Conflict`` if it is someone else's."""
        check_open(session)
        b = self.bucket(bucket)
        grant = b.grants.get(key)
        if grant is not None and not grant.held(time.monotonic()):
            del b.grants[key]
            grant = None
        if grant is not None and grant.token != token:
            raise Conflict(
                f"lease on key {key!r} of bucket {bucket!r} was taken over "
                f"(token {token} is stale)",
                expected=token,
                current=grant.token,
            )
        return grant

    def heartbeat(self, session: Session, bucket: str, key: str, token: int) -> None:
        grant = self._holder(session, bucket, key, token)
        if grant is None:
            raise Conflict(
                f"lease on key {key!r} of bucket {bucket!r} expired (token {token})",
                expected=token,
                current=None,
            )
        grant.deadline = time.monotonic() + grant.ttl

    def release(self, session: Session, bucket: str, key: str, token: int) -> None:
        if self._holder(session, bucket, key, token) is not None:
            del self.bucket(bucket).grants[key]

    def drop_session(self, session: Session) -> None:
        for watcher in list(self.watchers.pop(session, ())):
            self.unwatch(watcher)
        for b in self.buckets.values():
            for key in [k for k, g in b.grants.items() if g.session is session]:
                del b.grants[key]


class _WatchImpl:
    __slots__ = ("_state", "_watcher")

    def __init__(self, state: KvState, watcher: _Watcher) -> None:
        self._state = state
        self._watcher = watcher

    def _take(self) -> tuple[bool, KvChange | None]:
        watcher = self._watcher
        if watcher.closed or watcher.session.closed:
            return True, None
        if watcher.buffer:
            return True, watcher.buffer.popleft()
        return False, None

    async def next(self) -> KvChange | None:
        watcher = self._watcher
        _, change = await self._state.world.poll(watcher.session, self._take, watcher.waiters, None)
        return change

    async def close(self) -> None:
        with self._state.world.lock:
            self._state.unwatch(self._watcher)


class _LeaseImpl:
    __slots__ = ("_bucket", "_key", "_session", "_state", "_token")

    def __init__(self, state: KvState, session: Session, bucket: str, key: str, token: int):
        self._state = state
        self._session = session
        self._bucket = bucket
        self._key = key
        self._token = token

    async def heartbeat(self) -> None:
        with self._state.world.lock:
            self._state.heartbeat(self._session, self._bucket, self._key, self._token)

    async def release(self) -> None:
        with self._state.world.lock:
            self._state.release(self._session, self._bucket, self._key, self._token)


class MemoryKvStore(KvStore):
    """``KvStore`` of one bus on a memory world."""

    def __init__(self, world: World, session: Session) -> None:
        self._world = world
        self._state = world.kv
        self._session = session

    async def get(self, bucket: str, key: str) -> KvEntry | None:
        validate_bucket(bucket)
        validate_key(key)
        with self._world.lock:
            check_open(self._session)
            return self._state.get(bucket, key)

    async def put(self, bucket: str, key: str, value: bytes) -> Revision:
        validate_bucket(bucket)
        validate_key(key)
        data = self._world.check_payload(value, "value")
        with self._world.lock:
            check_open(self._session)
            return self._state.put(bucket, key, data)

    async def cas(self, bucket: str, key: str, value: bytes, expected: Revision | None) -> Revision:
        validate_bucket(bucket)
        validate_key(key)
        if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
            raise InvalidArgument("expected", expected, "must be a revision (int) or None")
        data = self._world.check_payload(value, "value")
        with self._world.lock:
            check_open(self._session)
            return self._state.cas(bucket, key, data, expected)

    async def delete(self, bucket: str, key: str) -> None:
        validate_bucket(bucket)
        validate_key(key)
        with self._world.lock:
            check_open(self._session)
            self._state.delete(bucket, key)

    async def keys(self, bucket: str) -> list[str]:
        validate_bucket(bucket)
        with self._world.lock:
            check_open(self._session)
            found = self._state.buckets.get(bucket)
            return [] if found is None else sorted(found.entries)

    async def watch(self, bucket: str, pattern: str = ">") -> KvWatch:
        validate_bucket(bucket)
        validate_key_pattern(pattern)
        with self._world.lock:
            check_open(self._session)
            watcher = self._state.watch(self._session, bucket, pattern)
        return KvWatch(_WatchImpl(self._state, watcher))

    async def lease(self, bucket: str, key: str, ttl: float) -> Lease:
        validate_bucket(bucket)
        validate_key(key)
        ttl = check_duration("ttl", ttl, positive=True)
        with self._world.lock:
            check_open(self._session)
            token = self._state.grant(self._session, bucket, key, ttl)
        return Lease(
            bucket, key, ttl, token, _LeaseImpl(self._state, self._session, bucket, key, token)
        )
