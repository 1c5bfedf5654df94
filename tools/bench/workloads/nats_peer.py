"""NATS peers through nats-py against a local nats-server with JetStream (file store).

* ``nats-js-sync``: ``await js.publish`` per message (waits for each PubAck).
* ``nats-js``: pipelined publishes with ``js.publish_async`` (nats-py >= 2.10; older
  versions fall back to gathering batches of ``js.publish``), then waiting for every ack.
* Consumers are durable pull consumers: ``fetch`` batches of 100 (10 for 1 MiB), ack
  each message, and flush so the acks have reached the server before the clock stops.
* W5: a work-queue-retention stream with one durable pull consumer shared by 2 workers.
* ``nats-core``: W3 core request/reply. ``nats-kv``: W4 KV get / put / update.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from tools.bench.workloads.base import (
    Impl,
    Latencies,
    Peer,
    Role,
    RoleContext,
    RoleResult,
    RunParams,
    counter_shared,
    job_counter,
    now,
    payload,
    warmup_count,
)

_BIG = 64 * 1024
_WINDOW = 100  # pipelining window of the fallback path
# Bytes in flight for publish_async. nats-py allows 4000 unacked publishes; with 1 MiB
# payloads that overflows nats-server's stream ingest queue, which then drops messages
# ("Dropping messages due to excessive stream ingest rate ... IPQ size limit reached").
_MAX_INFLIGHT_BYTES = 32 * 1024 * 1024


def _stream(params: RunParams) -> str:
    return params.name("S")


def _subject(params: RunParams) -> str:
    return f"bench.{params.run_id}.m"


_EVENTS: list[str] = []  # connection errors of this role process, for failure reasons


async def _connect(url: str) -> Any:
    import nats

    async def on_error(exc: Exception) -> None:
        _EVENTS.append(f"{type(exc).__name__}: {exc}")

    async def on_disconnect() -> None:
        _EVENTS.append("disconnected")

    return await nats.connect(
        url,
        connect_timeout=5,
        allow_reconnect=False,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
    )


def _check_conn(rc: RoleContext, nc: Any, what: str) -> None:
    if nc.is_closed or _EVENTS:
        raise ConnectionError(f"{what}: connection lost ({'; '.join(_EVENTS[-3:])})")
    rc.check(what)


def _run_admin(params: RunParams, coro_fn: Any) -> None:
    async def go() -> None:
        nc = await _connect(params.urls["nats"])
        try:
            await coro_fn(nc.jetstream(timeout=10))
        finally:
            await nc.close()

    asyncio.run(asyncio.wait_for(go(), 30.0))


def _setup_stream(durables: int, work_queue: bool, params: RunParams) -> None:
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType

    async def admin(js: Any) -> None:
        await js.add_stream(
            name=_stream(params),
            subjects=[f"bench.{params.run_id}.>"],
            storage=StorageType.FILE,
            retention=RetentionPolicy.WORK_QUEUE if work_queue else RetentionPolicy.LIMITS,
        )
        for d in range(durables):
            cfg = ConsumerConfig(durable_name=f"d{d}", ack_policy=AckPolicy.EXPLICIT, ack_wait=60)
            await js.add_consumer(_stream(params), cfg)

    _run_admin(params, admin)


def _teardown_stream(params: RunParams) -> None:
    async def admin(js: Any) -> None:
        await js.delete_stream(_stream(params))

    _run_admin(params, admin)


# ------------------------------------------------------------------------------ pub/sub


async def js_publisher(rc: RoleContext) -> RoleResult:
    nc = await _connect(rc.params.urls["nats"])
    pending = max(1, min(4000, _MAX_INFLIGHT_BYTES // max(1, rc.size)))
    js = nc.jetstream(timeout=10, publish_async_max_pending=pending)
    subject, data = _subject(rc.params), payload(rc.size)
    mode = rc.options["mode"]
    await rc.aready()
    t0 = now()
    if mode == "sync":
        for i in range(rc.count):
            await js.publish(subject, data)
            if not i & 255:
                rc.check("publishing")
    elif hasattr(js, "publish_async"):
        futures = []
        for i in range(rc.count):
            # no wait_stall: with a timeout every call would go through asyncio.wait_for
            futures.append(await js.publish_async(subject, data))
            if not i & 255:
                rc.check("publishing")
        try:
            async with asyncio.timeout(max(0.01, rc.remaining())):
                await asyncio.gather(*futures)  # raises if any publish was refused
        except TimeoutError:
            _check_conn(rc, nc, f"waiting for {js.publish_async_pending()} PubAcks")
            raise
    else:
        for start in range(0, rc.count, _WINDOW):
            n = min(_WINDOW, rc.count - start)
            await asyncio.gather(*(js.publish(subject, data) for _ in range(n)))
            rc.check("publishing")
    await nc.close()
    return {"t0": t0}


async def js_consumer(rc: RoleContext) -> RoleResult:
    """Durable pull consumer; ``jobs`` mode stops when the shared total is reached."""
    nc = await _connect(rc.params.urls["nats"])
    js = nc.jetstream(timeout=10)
    psub = await js.pull_subscribe_bind(durable=rc.options["durable"], stream=_stream(rc.params))
    counter = job_counter(rc, chunk=1) if rc.options.get("jobs") else None
    batch = 100 if rc.size < _BIG else 10
    await rc.aready()
    got = 0
    t1 = 0.0
    while counter is not None or got < rc.count:
        try:
            msgs = await psub.fetch(batch, timeout=max(0.05, min(1.0, rc.remaining())))
        except TimeoutError:  # nats.errors.TimeoutError, or asyncio's from inside fetch
            if counter is not None and counter.done():
                break
            _check_conn(rc, nc, f"consuming ({got} of {rc.count})")
            continue
        for msg in msgs:
            await msg.ack()
        await nc.flush(timeout=10)
        t1 = now()
        got += len(msgs)
        if counter is not None:
            counter.add(len(msgs))
            if counter.done():
                break
    await nc.close()
    return {"t1": t1, "n": got} if got else {"n": 0}


def _pubsub(mode: str, subscribers: int) -> Impl:
    return Impl(
        (
            Role("publisher", js_publisher, {"mode": mode}),
            *(
                Role(f"subscriber{i}", js_consumer, {"durable": f"d{i}"})
                for i in range(subscribers)
            ),
        ),
        setup=functools.partial(_setup_stream, subscribers, False),
        teardown=_teardown_stream,
    )


_JOBS = Impl(
    (
        Role("producer", js_publisher, {"mode": "async"}),
        Role("worker1", js_consumer, {"durable": "d0", "jobs": True}),
        Role("worker2", js_consumer, {"durable": "d0", "jobs": True}),
    ),
    make_shared=counter_shared,
    setup=functools.partial(_setup_stream, 1, True),
    teardown=_teardown_stream,
)


# ------------------------------------------------------------------------ request/reply


async def core_server(rc: RoleContext) -> RoleResult:
    nc = await _connect(rc.params.urls["nats"])
    total = rc.count + warmup_count(rc.count)
    served = 0
    finished = asyncio.Event()

    async def handler(msg: Any) -> None:
        nonlocal served
        await msg.respond(msg.data)
        served += 1
        if served >= total:
            finished.set()

    await nc.subscribe(_subject(rc.params), cb=handler)
    await nc.flush(timeout=10)
    await rc.aready()
    try:
        async with asyncio.timeout(max(0.01, rc.remaining())):
            await finished.wait()
    except TimeoutError:
        raise TimeoutError(f"served {served} of {total} requests before the deadline") from None
    await nc.close()
    return {}


async def core_client(rc: RoleContext) -> RoleResult:
    nc = await _connect(rc.params.urls["nats"])
    subject, data = _subject(rc.params), payload(rc.size)
    lat = Latencies()
    clock = time.perf_counter_ns
    await rc.aready()
    for _ in range(warmup_count(rc.count)):
        await nc.request(subject, data, timeout=5)
    for i in range(rc.count):
        t = clock()
        await nc.request(subject, data, timeout=5)
        lat.add(clock() - t)
        if not i & 1023:
            rc.check("requesting")
    await nc.close()
    return lat.summary("rtt")


_RR = Impl((Role("server", core_server), Role("client", core_client)))


# ----------------------------------------------------------------------------------- kv


def _setup_kv(params: RunParams) -> None:
    from nats.js.api import StorageType

    async def admin(js: Any) -> None:
        await js.create_key_value(bucket=params.name("B"), history=1, storage=StorageType.FILE)

    _run_admin(params, admin)


def _teardown_kv(params: RunParams) -> None:
    async def admin(js: Any) -> None:
        await js.delete_key_value(params.name("B"))

    _run_admin(params, admin)


async def kv_client(rc: RoleContext) -> RoleResult:
    nc = await _connect(rc.params.urls["nats"])
    kv = await nc.jetstream(timeout=10).key_value(rc.params.name("B"))
    value = payload(rc.size)
    rev = await kv.put("k", value)
    for _ in range(warmup_count(rc.count)):
        await kv.get("k")
    clock = time.perf_counter_ns
    await rc.aready()
    out: RoleResult = {}
    lat = Latencies()
    for _ in range(rc.count):
        t = clock()
        await kv.get("k")
        lat.add(clock() - t)
    out.update(lat.summary("get"))
    rc.check("getting")
    lat = Latencies()
    for _ in range(rc.count):
        t = clock()
        rev = await kv.put("k", value)
        lat.add(clock() - t)
    out.update(lat.summary("put"))
    rc.check("putting")
    lat = Latencies()
    for _ in range(rc.count):
        t = clock()
        rev = await kv.update("k", value, last=rev)
        lat.add(clock() - t)
    out.update(lat.summary("cas"))
    await nc.close()
    return out


_KV = Impl((Role("client", kv_client),), setup=_setup_kv, teardown=_teardown_kv)

_REQ = ("nats",)
_SRV = ("nats",)
PEERS = [
    Peer(
        name="nats-js",
        family="nats",
        label="durable",
        what="JetStream publish_async pipelined; durable pull consumers, fetch 100 + ack",
        impls={
            "W1": _pubsub("async", 1),
            "W2": _pubsub("async", 1),
            "W5": _JOBS,
            "W6": _pubsub("async", 3),
        },
        requires=_REQ,
        servers=_SRV,
    ),
    Peer(
        name="nats-js-sync",
        family="nats",
        label="durable",
        what="JetStream await js.publish per message; durable pull consumers",
        impls={"W1": _pubsub("sync", 1), "W2": _pubsub("sync", 1), "W6": _pubsub("sync", 3)},
        requires=_REQ,
        servers=_SRV,
    ),
    Peer(
        name="nats-core",
        family="nats",
        label="fire-and-forget",
        what="core NATS request/reply (not persisted)",
        impls={"W3": _RR},
        requires=_REQ,
        servers=_SRV,
    ),
    Peer(
        name="nats-kv",
        family="nats",
        label="durable",
        what="JetStream KV get / put / update(last=rev)",
        impls={"W4": _KV},
        requires=_REQ,
        servers=_SRV,
    ),
]
