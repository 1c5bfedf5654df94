"""One NATS connection and the JetStream objects a bus keeps on it.

:class:`Connection` owns the nats-py client, the bus's :class:`Namespace`,
the payload limit, and creates the streams and KV buckets on first use
(idempotently: several buses, in several processes, may race to create
them). :func:`open_bus` builds a :class:`~klieo_shm.Bus` from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Final, Protocol

import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from .._bus import Bus
from .._errors import Closed, PayloadTooLarge
from ._errors import translated
from ._names import Namespace, NatsOptions, parse_url
from ._puller import Puller

__all__ = ["Connection", "Part", "open_bus"]

_HEADER_ROOM: Final = 4096
"""Bytes of NATS max_payload kept for headers when no max_payload is given."""
_STREAM_IN_USE: Final = 10058  # stream name already in use with another config


class Part(Protocol):
    """A piece of the bus that holds resources to end on close."""

    async def shutdown(self) -> None: ...


class Connection:
    """A bus's NATS connection, namespace and lazily created streams/buckets."""

    def __init__(self, url: str, options: NatsOptions, nc: Client) -> None:
        self.url = url
        self.options = options
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.ns = Namespace(options.prefix)
        self.api_prefix = "$JS.API"
        server_limit = max(nc.max_payload - _HEADER_ROOM, 1)
        self.max_payload = options.max_payload or server_limit
        self.storage = (
            api.StorageType.MEMORY if options.storage == "memory" else api.StorageType.FILE
        )
        self._ready: set[str] = set()
        self._buckets: dict[str, KeyValue] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.pullers: weakref.WeakSet[Puller] = weakref.WeakSet()
        self.closed = False

    async def reconnected(self) -> None:
        """nats-py reconnected (after a server restart, say)."""
        for puller in list(self.pullers):
            puller.reconnected()

    async def puller(self, stream: str, consumer: str) -> Puller:
        """A started :class:`Puller` on ``stream``/``consumer``, reset on reconnects."""
        puller = Puller(self.nc, self.api_prefix, stream, consumer)
        await puller.start()
        self.pullers.add(puller)
        return puller

    # -- guards -----------------------------------------------------------
    def check_open(self) -> None:
        if self.closed or self.nc.is_closed:
            raise Closed(self.url)

    def check_payload(self, payload: bytes) -> None:
        if len(payload) > self.max_payload:
            raise PayloadTooLarge(len(payload), self.max_payload)

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    # -- streams ----------------------------------------------------------
    async def ensure_stream(self, config: api.StreamConfig) -> None:
        """Create the stream ``config.name`` unless this connection did already."""
        name = config.name
        assert name is not None
        if name in self._ready:
            return
        async with self._lock(name):
            if name in self._ready:
                return
            with translated(f"create stream {name}", url=self.url):
                try:
                    await self.js.add_stream(config)
                except nats.js.errors.BadRequestError as exc:
                    if exc.err_code != _STREAM_IN_USE:
                        raise
            self._ready.add(name)

    async def pubsub_stream(self) -> str:
        await self.ensure_stream(
            api.StreamConfig(
                name=self.ns.pubsub_stream,
                subjects=[self.ns.pubsub_subjects],
                retention=api.RetentionPolicy.INTEREST,
                storage=self.storage,
            )
        )
        return self.ns.pubsub_stream

    async def jobs_stream(self) -> str:
        await self.ensure_stream(
            api.StreamConfig(
                name=self.ns.jobs_stream,
                subjects=[self.ns.jobs_subjects],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=self.storage,
            )
        )
        return self.ns.jobs_stream

    async def dlq_stream(self) -> str:
        await self.ensure_stream(
            api.StreamConfig(
                name=self.ns.dlq_stream,
                subjects=[self.ns.dlq_subjects],
                retention=api.RetentionPolicy.LIMITS,
                max_msgs_per_subject=1,
                storage=self.storage,
            )
        )
        return self.ns.dlq_stream

    # -- KV buckets -------------------------------------------------------
    async def bucket(self, nats_bucket: str, *, create: bool) -> KeyValue | None:
        """The KV bucket ``nats_bucket``; made if ``create``, else ``None`` if missing."""
        kv = self._buckets.get(nats_bucket)
        if kv is not None:
            return kv
        async with self._lock("$KV." + nats_bucket):
            kv = self._buckets.get(nats_bucket)
            if kv is not None:
                return kv
            with translated(f"open bucket {nats_bucket}", url=self.url):
                try:
                    kv = await self.js.key_value(nats_bucket)
                except nats.js.errors.BucketNotFoundError:
                    if not create:
                        return None
                    kv = await self.js.create_key_value(
                        api.KeyValueConfig(
                            bucket=nats_bucket, history=1, storage=self.storage, direct=True
                        )
                    )
            self._buckets[nats_bucket] = kv
            return kv

    async def settle_interest(self, timeout: int = 10) -> None:
        """Return once the server routes by this connection's latest
        subscribe or unsubscribe. Two round trips: after one, nats-server
        2.15 was seen to route as before (a new queue subscription got "no
        responders" in 18 of 300 tries under load; a removed one got the
        next request in 5-10 of 300, which nats-py then dropped); after two,
        never in 300 and 900 tries."""
        await self.nc.flush(timeout=timeout)
        await self.nc.flush(timeout=timeout)

    # -- lifetime ---------------------------------------------------------
    async def close(self, parts: list[Part]) -> None:
        """End every part's resources, then the connection."""
        if self.closed:
            return
        self.closed = True
        for part in parts:
            with contextlib.suppress(Exception):
                await part.shutdown()
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await self.nc.close()


async def _quiet(_: Exception) -> None:
    """nats-py reports connection trouble through this callback; klieo
    surfaces it as ``Closed`` on the next operation instead."""


async def open_bus(url: str) -> Bus:
    """Connect to the NATS server of ``url`` and return a bus over it."""
    from ._jobs import NatsJobs
    from ._kv import NatsKv
    from ._pubsub import NatsPubsub
    from ._requests import NatsRequests

    options = parse_url(url)
    nc = Client()
    conns: list[Connection] = []

    async def reconnected() -> None:
        for conn in conns:
            await conn.reconnected()

    # nats-py retries the first connect as often as later reconnects (here:
    # forever), so the first connect is bounded from outside.
    try:
        await asyncio.wait_for(
            nc.connect(
                options.servers,
                name="klieo_shm",
                connect_timeout=max(1, round(options.connect_timeout)),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=_quiet,
                reconnected_cb=reconnected,
            ),
            options.connect_timeout,
        )
    except Exception as exc:
        with contextlib.suppress(Exception):
            await nc.close()
        raise Closed(url, f"cannot connect: {type(exc).__name__}: {exc}") from exc
    conn = Connection(url, options, nc)
    conns.append(conn)
    pubsub = NatsPubsub(conn)
    requests = NatsRequests(conn)
    kv = NatsKv(conn)
    jobs = NatsJobs(conn, kv)
    parts: list[Part] = [pubsub, requests, jobs, kv]

    async def close() -> None:
        await conn.close(parts)

    return Bus(url, pubsub, requests, kv, jobs, close)
