"""``KvStore`` over the broker, on top of ``ShmClient``.

Reads take no round trip: ``get`` looks the key up in the broker's KV table,
mapped read-only (``layout.kv_table.KvTableReader``: written out of place by
the broker, published by an atomic switch, read with a seqlock-style
recheck, never torn). The table is mapped lazily, on the first ``get``; when
the broker grows the table the old one reports ``KvTableRetired`` and the
client asks ``kv_info`` for the current segment and remaps. A ``get`` that
keeps racing a writer (``KvReadContended``, not expected in practice) asks
the broker instead.

Writes (put, cas, delete) are ``KvWrite`` frames, answered by the revision
taken (a fixed layout each way, no msgpack); ``keys``, watches and leases
are calls to the broker (see ``daemon._kv``). Values travel inline in the
frame (one copy through the socket, bounded by ``max_payload``), not through
the tx arena: the arena's ring is freed in publish-ack order, which a KV
write does not follow.

A watch is a stream the broker feeds over the control connection: a pump
task keeps one ``kv_watch_next`` call outstanding, which the broker answers
with the next batch of changes as soon as there is one.

Lifetimes: the mapping and its reader live until the bus closes, the
connection is lost, or the table is retired; ``get`` returns fresh ``bytes``.

Reconnection (see ``_client``): a watch survives a broker restart. Its pump
waits for the new connection, on which the watch was registered again; the
broker then sends the current values and live changes, and the pump drops
every change whose revision is not above the last one it queued (revisions
survive a restart), so the watcher sees no duplicate. A lease keeps its
token: ``heartbeat``/``release`` after a reconnect go out on the new
connection, where the broker accepts them from the same process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any, Final

import posix_ipc

from .._errors import BusError, Closed, Conflict, InvalidArgument, PayloadTooLarge
from .._handles import KvWatch, Lease
from .._interfaces import KvStore
from .._names import validate_bucket, validate_key, validate_key_pattern
from .._values import (
    NEEDS_ROUND_TRIP,
    KvChange,
    KvEntry,
    Revision,
    _NeedsRoundTrip,
    as_bytes,
    check_duration,
)
from ..layout.kv_table import KvReadContended, KvTableReader, KvTableRetired
from ..protocol import KV_OP_CAS, KV_OP_DELETE, KV_OP_PUT
from ._client import ConnectionInterrupted, ShmClient
from ._maps import Mapping
from ._queue import ItemQueue

__all__ = ["ShmKvStore"]

_VALID_CACHE: Final = 10_000
_REMAP_ATTEMPTS: Final = 16
_U64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF


class _Watch(ItemQueue[KvChange]):
    """One watch's queue of changes (the ``KvWatch`` impl)."""

    def __init__(self, owner: ShmKvStore, watch_id: int, bucket: str) -> None:
        super().__init__()
        self._owner = owner
        self.watch_id = watch_id
        self.bucket = bucket
        self.args: dict[str, Any] = {}  # the kv_watch call's arguments, to watch again
        self.last_rev = 0  # the highest revision queued: later changes must be above it
        self.pump: asyncio.Task[None] | None = None

    async def _detach(self) -> None:
        await self._owner._unwatch(self)

    async def run_pump(self, client: ShmClient) -> None:
        """Keep one ``kv_watch_next`` outstanding; queue what it brings."""
        bucket, args = self.bucket, {"watch_id": self.watch_id}
        try:
            while not self.closed:
                try:
                    changes = await client.call("kv_watch_next", args, waits=True)
                except ConnectionInterrupted:
                    continue  # the next call waits for the new connection
                if changes is None:
                    self.closed = True
                    break
                items = self.items
                last = self.last_rev
                for key, value, revision, deleted in changes:
                    if revision <= last:
                        continue  # seen before the connection was lost
                    last = revision
                    if deleted:
                        items.append(KvChange(bucket, key, b"", revision, "delete"))
                    else:
                        items.append(KvChange(bucket, key, value, revision))
                self.last_rev = last
                self.wake()
        except BusError as exc:
            if not self.closed:
                self.error = exc
        finally:
            self.wake()


class _LeaseImpl:
    __slots__ = ("_args", "_client")

    def __init__(self, client: ShmClient, bucket: str, key: str, token: int) -> None:
        self._client = client
        self._args = {"bucket": bucket, "key": key, "token": token}

    async def heartbeat(self) -> None:
        await self._client.call("kv_heartbeat", self._args)

    async def release(self) -> None:
        await self._client.call("kv_release", self._args)


class ShmKvStore(KvStore):
    """KvStore over one ``ShmClient``."""

    def __init__(self, client: ShmClient) -> None:
        self._client = client
        self._reader: KvTableReader | None = None
        self._map: Mapping | None = None
        self._mapped_gen = -1  # the client's connection generation the table was mapped on
        self._valid: set[tuple[str, str]] = set()
        self._watches: dict[int, _Watch] = {}
        self._ids = itertools.count(1)

    # --- reads ---------------------------------------------------------------
    def _check(self, bucket: str, key: str) -> None:
        validate_bucket(bucket)
        validate_key(key)
        valid = self._valid
        if len(valid) >= _VALID_CACHE:
            valid.clear()
        valid.add((bucket, key))

    async def get(self, bucket: str, key: str) -> KvEntry | None:
        # The hot path: no await that suspends, no syscall (see the bench's W4).
        reader = self._reader
        client = self._client
        if reader is None or self._mapped_gen != client.gen or client._lost is not None:
            return await self._get_slow(bucket, key)
        if type(bucket) is not str or type(key) is not str or (bucket, key) not in self._valid:
            self._check(bucket, key)
        try:
            found = reader.get(bucket, key)
        except KvTableRetired:
            return await self._get_slow(bucket, key)
        except KvReadContended:
            return await self._get_from_broker(bucket, key)
        return None if found is None else KvEntry(found[0], found[1])

    def get_local(self, bucket: str, key: str) -> KvEntry | _NeedsRoundTrip | None:
        """``get`` from any thread, without the event loop: the entry or
        ``None`` read from the mapped table, or ``NEEDS_ROUND_TRIP`` when only
        the loop can answer (table not mapped yet or retired, names not yet
        validated, a contended read, a lost connection). Only reads shared
        memory: mapping, remapping and validation stay on the loop thread.
        A reader closed by the loop meanwhile raises ``ValueError`` (released
        views; the mapping itself outlives any view in use): a round trip too.
        """
        reader = self._reader
        client = self._client
        if (
            reader is None
            or self._mapped_gen != client.gen
            or client._lost is not None
            or type(bucket) is not str
            or type(key) is not str
            or (bucket, key) not in self._valid
        ):
            return NEEDS_ROUND_TRIP
        try:
            found = reader.get(bucket, key)
        except (KvTableRetired, KvReadContended, ValueError):
            return NEEDS_ROUND_TRIP
        return None if found is None else KvEntry(found[0], found[1])

    async def _get_slow(self, bucket: str, key: str) -> KvEntry | None:
        self._check(bucket, key)
        for _ in range(_REMAP_ATTEMPTS):
            reader = await self._current_reader()
            try:
                found = reader.get(bucket, key)
            except KvTableRetired:
                continue  # grown again meanwhile
            except KvReadContended:
                break
            return None if found is None else KvEntry(found[0], found[1])
        return await self._get_from_broker(bucket, key)

    async def _get_from_broker(self, bucket: str, key: str) -> KvEntry | None:
        found = await self._client.call("kv_get", {"bucket": bucket, "key": key})
        return None if found is None else KvEntry(found[0], found[1])

    async def _current_reader(self) -> KvTableReader:
        """A reader over the broker's live table, (re)mapping as needed."""
        client = self._client
        await client.ensure()
        reader = self._reader
        if reader is not None and self._mapped_gen == client.gen and not reader.retired:
            return reader
        self._unmap()
        for _ in range(_REMAP_ATTEMPTS):
            info = await client.call("kv_info", {})
            try:
                mapping = Mapping(str(info["name"]), int(info["size"]), writable=False)
            except posix_ipc.ExistentialError:
                continue  # the broker replaced that table between the answer and now
            except (posix_ipc.Error, OSError, ValueError) as exc:
                raise Closed(client.socket_path, f"cannot map the KV table: {exc}") from exc
            try:
                reader = KvTableReader(mapping.view)
            except ValueError as exc:
                mapping.close()
                raise Closed(client.socket_path, f"bad KV table segment: {exc}") from exc
            if self._reader is not None:  # another task mapped it meanwhile
                reader.close()
                mapping.close()
                return self._reader
            self._reader, self._map, self._mapped_gen = reader, mapping, client.gen
            return reader
        raise Closed(client.socket_path, "the KV table kept changing while being mapped")

    def _unmap(self) -> None:
        reader, mapping = self._reader, self._map
        self._reader = self._map = None
        self._mapped_gen = -1
        if reader is not None:
            reader.close()
        if mapping is not None:
            mapping.close()

    # --- writes --------------------------------------------------------------
    def _data(self, bucket: str, key: str, value: bytes) -> bytes:
        if type(bucket) is not str or type(key) is not str or (bucket, key) not in self._valid:
            self._check(bucket, key)
        return value if type(value) is bytes else as_bytes(value, "value")

    def _check_size(self, data: bytes) -> None:
        client = self._client
        if len(data) > client.max_payload:
            raise PayloadTooLarge(len(data), client.max_payload)

    async def put(self, bucket: str, key: str, value: bytes) -> Revision:
        data = self._data(bucket, key, value)
        client = self._client
        if not client.connected:
            await client.ensure()
        self._check_size(data)
        return await client.kv_write(KV_OP_PUT, bucket, key, data)

    async def cas(self, bucket: str, key: str, value: bytes, expected: Revision | None) -> Revision:
        if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
            raise InvalidArgument("expected", expected, "must be a revision (int) or None")
        data = self._data(bucket, key, value)
        client = self._client
        if not client.connected:
            await client.ensure()
        self._check_size(data)
        # the frame carries a u64; no revision lies outside it, nor is 0
        wire = expected if expected is None or 0 <= expected <= _U64_MAX else 0
        try:
            return await client.kv_write(KV_OP_CAS, bucket, key, data, wire)
        except Conflict as exc:
            if wire == expected:
                raise
            raise Conflict(
                f"key {key!r} of bucket {bucket!r} is at revision {exc.current}, not {expected}",
                expected=expected,
                current=exc.current,
            ) from None

    async def delete(self, bucket: str, key: str) -> None:
        self._check(bucket, key)
        await self._client.kv_write(KV_OP_DELETE, bucket, key, b"")

    async def keys(self, bucket: str) -> list[str]:
        validate_bucket(bucket)
        return [str(k) for k in await self._client.call("kv_keys", {"bucket": bucket})]

    # --- watches -------------------------------------------------------------
    async def watch(self, bucket: str, pattern: str = ">") -> KvWatch:
        validate_bucket(bucket)
        validate_key_pattern(pattern)
        client = self._client
        await client.ensure()
        w = _Watch(self, next(self._ids), bucket)
        self._watches[w.watch_id] = w
        args: dict[str, Any] = {"watch_id": w.watch_id, "bucket": bucket, "pattern": pattern}
        w.args = args
        try:
            await client.call("kv_watch", args)
        except BaseException:
            self._watches.pop(w.watch_id, None)
            raise
        w.pump = asyncio.get_running_loop().create_task(w.run_pump(client))
        return KvWatch(w)

    async def _unwatch(self, w: _Watch) -> None:
        if self._watches.pop(w.watch_id, None) is None:
            return
        client = self._client
        if client.connected:
            # the broker answers the pump's outstanding call with "ended"
            with contextlib.suppress(BusError):
                await client.call("kv_unwatch", {"watch_id": w.watch_id})
        if w.pump is not None and not w.pump.done():
            w.pump.cancel()

    # --- leases --------------------------------------------------------------
    async def lease(self, bucket: str, key: str, ttl: float) -> Lease:
        self._check(bucket, key)
        ttl = check_duration("ttl", ttl, positive=True)
        client = self._client
        token = int(await client.call("kv_lease", {"bucket": bucket, "key": key, "ttl": ttl}))
        return Lease(bucket, key, ttl, token, _LeaseImpl(client, bucket, key, token))

    # --- lifetime ------------------------------------------------------------
    async def restore(self) -> None:
        """On a new connection: forget the old broker's table (mapped again
        on the next ``get``) and register every open watch again. A watch
        the broker refuses now ends with the broker's error."""
        self._unmap()
        kept = await self._client.register_again(
            list(self._watches.values()),
            lambda w: ("kv_watch", w.args),
            lambda w: ("kv_unwatch", {"watch_id": w.watch_id}),
            lambda w: self._watches.get(w.watch_id) is w,
        )
        for w, answer in kept:
            if isinstance(answer, BaseException):
                if self._watches.pop(w.watch_id, None) is w:
                    w.error = answer if isinstance(answer, BusError) else BusError(str(answer))
                    if w.pump is not None and not w.pump.done():
                        w.pump.cancel()
                    w.wake()
            elif (
                isinstance(answer, dict)
                and isinstance(answer.get("rev"), int)
                and answer["rev"] < w.last_rev
            ):
                # A broker that says where the bucket's revisions stand, and
                # stands behind what this watch saw, lost its state (no
                # journal): its revisions start again, nothing may be dropped.
                w.last_rev = 0

    def end_all(self, error: BusError | None) -> None:
        """End every watch (quietly, or raising ``error``) and unmap the table."""
        watches, self._watches = self._watches, {}
        for w in watches.values():
            if error is None:
                w.closed = True
            else:
                w.error = error
            if w.pump is not None and not w.pump.done():
                w.pump.cancel()
            w.wake()
        self._unmap()
