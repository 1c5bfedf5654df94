"""KvStore on JetStream KV.

- A klieo bucket ``b`` is the NATS KV bucket ``P_`` + ``escape_name(b)``
  (history 1), made on the first write or watch; reads of a bucket that
  does not exist find nothing and make nothing.
- Revisions are NATS KV revisions, i.e. the bucket stream's sequence: the
  first write of a bucket is 1 and they grow across its keys, as the
  contract says.
- ``cas(expected=None)`` is KV ``create`` (which also re-creates a deleted
  key over its tombstone); ``cas(expected=rev)`` is KV ``update(last=rev)``.
  On a mismatch the current revision is read back for the ``Conflict``.
  One corner NATS decides differently: ``update(last=rev)`` also succeeds
  when ``rev`` is the revision of the key's delete marker.
- ``delete`` writes a delete marker only when the key is present (with
  ``last=rev``, retried on a race), so deleting a missing key changes
  nothing, as on the other backends.
- ``watch`` is KV ``watch``: the current values (delete markers skipped),
  then every put and delete (``KvChange.operation == "delete"``).
"""

from __future__ import annotations

import contextlib
from typing import Final

import nats.js.errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from .._errors import Conflict, InvalidArgument
from .._handles import KvWatch, Lease
from .._interfaces import KvStore
from .._names import validate_bucket, validate_key, validate_key_pattern
from .._values import KvChange, KvEntry, Revision, as_bytes
from ._connection import Connection
from ._errors import is_wrong_last, translated
from ._leases import Leases

__all__ = ["NatsKv"]

_RETRIES: Final = 20


class NatsKv(KvStore):
    """:class:`~klieo_shm.KvStore` over NATS KV (see the module docstring)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.leases = Leases(conn)
        self._watches: set[_Watch] = set()

    async def _bucket(self, bucket: str, *, create: bool) -> KeyValue | None:
        validate_bucket(bucket)
        self.conn.check_open()
        return await self.conn.bucket(self.conn.ns.bucket(bucket), create=create)

    async def _entry(self, kv: KeyValue, key: str) -> KvEntry | None:
        with translated("get", url=self.conn.url):
            try:
                entry = await kv.get(key, validate_keys=False)
            except nats.js.errors.KeyNotFoundError:
                return None
        return KvEntry(bytes(entry.value or b""), entry.revision or 0)

    async def get(self, bucket: str, key: str) -> KvEntry | None:
        validate_key(key)
        kv = await self._bucket(bucket, create=False)
        return None if kv is None else await self._entry(kv, key)

    async def put(self, bucket: str, key: str, value: bytes) -> Revision:
        validate_key(key)
        data = as_bytes(value, "value")
        self.conn.check_payload(data)
        kv = await self._bucket(bucket, create=True)
        assert kv is not None
        with translated("put", url=self.conn.url):
            return await kv.put(key, data, validate_keys=False)

    async def cas(self, bucket: str, key: str, value: bytes, expected: Revision | None) -> Revision:
        validate_key(key)
        data = as_bytes(value, "value")
        if expected is not None and (
            isinstance(expected, bool) or not isinstance(expected, int) or expected < 0
        ):
            raise InvalidArgument("expected", expected, "must be a revision (int >= 0) or None")
        self.conn.check_payload(data)
        kv = await self._bucket(bucket, create=True)
        assert kv is not None
        for _ in range(_RETRIES):
            if expected is not None and expected < 1:
                current = await self._entry(kv, key)
                raise Conflict(
                    f"cas on {bucket}/{key}: no key has revision {expected}",
                    expected=expected,
                    current=None if current is None else current.revision,
                )
            try:
                with translated("cas", url=self.conn.url):
                    if expected is None:
                        return await kv.create(key, data, validate_keys=False)
                    return await kv.update(key, data, last=expected, validate_keys=False)
            except Conflict:
                raise
            except Exception as exc:
                if not is_wrong_last(exc):
                    raise
            current = await self._entry(kv, key)
            if expected is None and current is None:
                continue  # deleted between the write and the read: try again
            raise Conflict(
                f"cas on {bucket}/{key}: expected revision {expected}, found "
                f"{None if current is None else current.revision}",
                expected=expected,
                current=None if current is None else current.revision,
            )
        raise Conflict(f"cas on {bucket}/{key}: too much contention", expected=expected)

    async def delete(self, bucket: str, key: str) -> None:
        validate_key(key)
        kv = await self._bucket(bucket, create=False)
        if kv is None:
            return
        for _ in range(_RETRIES):
            current = await self._entry(kv, key)
            if current is None:
                return
            try:
                with translated("delete", url=self.conn.url):
                    await kv.delete(key, last=current.revision, validate_keys=False)
                return
            except Exception as exc:
                if not is_wrong_last(exc):
                    raise
        with translated("delete", url=self.conn.url):
            await kv.delete(key, validate_keys=False)

    async def keys(self, bucket: str) -> list[str]:
        kv = await self._bucket(bucket, create=False)
        if kv is None:
            return []
        with translated("keys", url=self.conn.url):
            try:
                return sorted(set(await kv.keys()))
            except nats.js.errors.NoKeysError:
                return []

    async def watch(self, bucket: str, pattern: str = ">") -> KvWatch:
        validate_key_pattern(pattern)
        kv = await self._bucket(bucket, create=True)
        assert kv is not None
        with translated("watch", url=self.conn.url):
            # the bucket's last revision before the watch: a delete marker up
            # to it belongs to the current values, whatever nats-py's marker
            # of their end says (it can come before them: see _Watch.next)
            floor = (await kv.status()).stream_info.state.last_seq or 0
            watcher = await kv.watch(pattern)
        impl = _Watch(self, bucket, watcher, floor)
        self._watches.add(impl)
        return KvWatch(impl)

    async def lease(self, bucket: str, key: str, ttl: float) -> Lease:
        validate_bucket(bucket)
        validate_key(key)
        return await self.leases.take(bucket, key, ttl)

    async def shutdown(self) -> None:
        for watch in list(self._watches):
            await watch.close()
        await self.leases.shutdown()


class _Watch:
    """A :class:`~klieo_shm.KvWatch` impl over a nats-py ``KeyWatcher``."""

    def __init__(
        self, owner: NatsKv, bucket: str, watcher: KeyValue.KeyWatcher, floor: int
    ) -> None:
        """``floor``: the bucket's last revision before the watch began."""
        self._owner = owner
        self._bucket = bucket
        self._watcher = watcher
        self._floor = floor
        self._closed = False

    async def next(self) -> KvChange | None:
        while not self._closed:
            try:
                entry = await anext(self._watcher)
            except StopAsyncIteration:
                return None
            if entry is None:  # nats-py's end of the current values: not relied on
                continue  # (under load it can come before the last of them)
            deleted = entry.operation in (KV_DEL, KV_PURGE)
            if deleted and (entry.revision or 0) <= self._floor:
                continue  # a key deleted before the watch: not a current value
            return KvChange(
                bucket=self._bucket,
                key=entry.key,
                value=b"" if deleted else bytes(entry.value or b""),
                revision=entry.revision or 0,
                operation="delete" if deleted else "put",
            )
        return None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._owner._watches.discard(self)
        with contextlib.suppress(Exception):
            await self._watcher.stop()  # type: ignore[no-untyped-call]
