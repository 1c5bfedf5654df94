"""The klieo_shm adapter: only the package's public API.

* ``klieo``: the asyncio API (``bus = await klieo_shm.connect(url)``) for W1-W6.
  Publishes and enqueues are pipelined as the NATS peer's ``publish_async``: futures
  (``publish_async``, ``enqueue_async``), up to 4000 or 32 MiB in flight; consumers
  take up to 100 messages (jobs) at a time with ``next_many`` (``claim_many``) and
  ack them with ``ack_many``, as the Redis peer's XREADGROUP COUNT 100 + XACK; W2's
  1 MiB messages are taken one at a time (``async for`` + ``ack``).
* ``klieo-permsg`` / ``klieo-perjob``: the ``klieo`` consumers of W1 and W6 / W5
  one message (job) at a time: ``async for`` + ``ack`` (``claim`` + ``ack``).
* ``klieo-sync``: the blocking API (``klieo_shm.sync.connect(url)``) for the
  call-and-return workloads W3 (client side), W4 and W5.
* ``klieo-nojournal``: the ``klieo`` roles against a second ``klieo-shmd`` started with
  ``--no-state`` (no journal), for the workloads in ``NOJOURNAL_WORKLOADS``. The
  ``klieo`` daemon runs with its defaults (journal in ``<socket stem>.state`` beside
  its socket), so the two rows of a workload give the journal's cost in one run.
* ``klieo-spin`` / ``klieo-spin-sync``: the ``klieo`` / ``klieo-sync`` roles of the
  round-trip workloads (``SPIN_WORKLOADS``) with spinning on: against a third
  ``klieo-shmd`` started with ``--spin-us``, asyncio roles on
  ``klieo_shm.spinning_loop``, blocking ones with ``?spin_us=`` in their URL. Each
  spinning process keeps a core busy while it waits for an answer.

To benchmark a new API (for example batch publishes), add a role function and an
``Impl`` here and list it in a ``Peer``: the suite picks up every peer in ``PEERS``.
The backend is the server URL named by the role's ``server`` option (``klieo`` unless
said otherwise): by default a ``klieo-shmd`` started for the run, or ``--klieo-url``
(which may also be ``memory://`` or ``nats://...``) for ``klieo``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable
from multiprocessing.context import SpawnContext
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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

FAMILY = "klieo"
NOJOURNAL = "klieo-nojournal"  # peer, family and server name of the variant
# The bar (the journal costs at most 20%) is on W1 and W5; W2 shows what large
# payloads cost, W4 what a put costs. W3 and W6 are left out to keep a full run
# within its budget (their journal cost was 0.85x and 0.81x when last measured).
NOJOURNAL_WORKLOADS = ("W1", "W2", "W4", "W5")
SERVER = "klieo"  # the server key a role connects to unless its options say otherwise
SPIN = "klieo-spin"  # peer and server name of the spinning variant
SPIN_WORKLOADS = ("W3", "W4")  # W5 measured no different; W1/W2/W6 are not round trips
SPIN_US = 100
INFLIGHT_BYTES = 32 * 1024 * 1024  # publish_async's window in bytes, as the NATS peer's
LEASE_TTL = 30.0
JOB_BATCH = 100  # W5 claim_many/ack_many batch, as the Redis peer's XREADGROUP COUNT
MSG_BATCH = 100  # W1/W2/W6 next_many/ack_many batch, as the Redis peer's XREADGROUP COUNT


# A BusError whose text says the backend does not offer the operation yet is reported
# as "skipped" (via NotImplementedError), not as a failure. Raising NotImplementedError
# (or a dedicated BusError subclass) from klieo_shm would make this text match unneeded.
_UNSUPPORTED_HINTS = ("not served", "not supported", "not implemented")

AsyncRole = Callable[[RoleContext], Awaitable[RoleResult]]
SyncRole = Callable[[RoleContext], RoleResult]


def _unsupported(exc: Exception) -> bool:
    import klieo_shm

    text = str(exc).lower()
    return isinstance(exc, klieo_shm.BusError) and any(h in text for h in _UNSUPPORTED_HINTS)


def _arole(fn: AsyncRole) -> AsyncRole:
    @functools.wraps(fn)
    async def role(rc: RoleContext) -> RoleResult:
        try:
            return await fn(rc)
        except Exception as exc:
            if _unsupported(exc):
                raise NotImplementedError(f"klieo_shm: {exc}") from exc
            raise

    return role


def _srole(fn: SyncRole) -> SyncRole:
    @functools.wraps(fn)
    def role(rc: RoleContext) -> RoleResult:
        try:
            return fn(rc)
        except Exception as exc:
            if _unsupported(exc):
                raise NotImplementedError(f"klieo_shm: {exc}") from exc
            raise

    return role


async def _maybe(value: Any) -> Any:
    """The contract leaves some calls (subscribe, serve, stop, close) sync or async."""
    return await value if inspect.isawaitable(value) else value


def _url(rc: RoleContext) -> str:
    return rc.params.urls[rc.options.get("server", SERVER)]


async def _connect(rc: RoleContext) -> Any:
    import klieo_shm

    return await klieo_shm.connect(_url(rc))


def _sync_connect(rc: RoleContext) -> Any:
    import klieo_shm.sync

    url, spin = _url(rc), rc.options.get("spin_us")
    if spin:  # added to whatever query the URL has
        parts = urlsplit(url)
        query = urlencode([*parse_qsl(parts.query), ("spin_us", str(spin))])
        url = urlunsplit(parts._replace(query=query))
    return klieo_shm.sync.connect(url)


def _subject(params: RunParams) -> str:
    return f"bench.{params.run_id}.m"


def _done_shared(ctx: SpawnContext, params: RunParams) -> dict[str, Any]:
    return {"client_done": ctx.Event()}


# -------------------------------------------------------------------------------- probe


async def probe(rc: RoleContext) -> RoleResult:
    bus = await _connect(rc)
    try:
        missing = [n for n in ("pubsub", "requests", "kv", "jobs") if not hasattr(bus, n)]
        if missing:
            raise RuntimeError(f"Bus lacks {', '.join(missing)}")
        await rc.aready()
    finally:
        await _maybe(bus.close())
    return {}


def probe_impl(server: str = SERVER) -> Impl:
    return Impl((Role("probe", probe, {"server": server}),))


# ------------------------------------------------------------------------------ pub/sub


async def _pipelined(rc: RoleContext, start: Callable[[], Any], what: str) -> None:
    """Start ``rc.count`` operations, each returning a future, keeping up to
    4000 (or 32 MiB) unfinished, as the NATS peer's publish_async window."""
    window = max(1, min(4000, INFLIGHT_BYTES // max(1, rc.size)))
    inflight: deque[Any] = deque()
    for i in range(rc.count):
        inflight.append(start())
        if len(inflight) >= window:
            await inflight.popleft()
        if not i & 255:
            rc.check(what)
    await asyncio.gather(*inflight)  # raises if any was refused


@_arole
async def publisher(rc: RoleContext) -> RoleResult:
    """JetStream-style pipelining, as the NATS peer does it: publish_async
    (a future per message, no task)."""
    bus = await _connect(rc)
    subject, data = _subject(rc.params), payload(rc.size)
    publish = bus.pubsub.publish_async
    await rc.aready()
    t0 = now()
    async with asyncio.timeout(max(0.01, rc.remaining())):
        await _pipelined(rc, lambda: publish(subject, data), "publishing")
    await _maybe(bus.close())
    return {"t0": t0}


@_arole
async def subscriber(rc: RoleContext) -> RoleResult:
    """``next_many`` up to ``batch`` messages + ``Pubsub.ack_many`` (as the
    Redis peer's XREADGROUP COUNT 100 + XACK); with ``batch`` 1, ``async
    for`` + ``ack`` per message."""
    bus = await _connect(rc)
    durable = f"d{rc.options['durable']}{rc.params.run_id}"
    stream = await _maybe(bus.pubsub.subscribe(_subject(rc.params), durable))
    batch = int(rc.options.get("batch", 1))
    await rc.aready()
    got = 0
    async with asyncio.timeout(max(0.01, rc.remaining())):
        if batch > 1:
            ack_many = bus.pubsub.ack_many
            while got < rc.count:
                msgs = await stream.next_many(min(batch, rc.count - got))
                if not msgs:
                    break  # the stream ended
                await ack_many(msgs)
                got += len(msgs)
        else:
            async for msg in stream:
                await msg.ack()
                got += 1
                if got >= rc.count:
                    break
    t1 = now()
    await _maybe(stream.close())
    await _maybe(bus.close())
    return {"t1": t1, "n": got}


def _pubsub(subscribers: int, server: str = SERVER, **extra: Any) -> Impl:
    opts = {"server": server, **extra}
    return Impl(
        (
            Role("publisher", publisher, opts),
            *(
                Role(f"subscriber{i}", subscriber, {"durable": i, **opts})
                for i in range(subscribers)
            ),
        )
    )


# ------------------------------------------------------------------------ request/reply


def _echo(data: bytes) -> bytes:
    return data


@_arole
async def server_role(rc: RoleContext) -> RoleResult:
    bus = await _connect(rc)
    service = await _maybe(bus.requests.serve(_subject(rc.params), _echo))
    await rc.aready()
    done = rc.shared["client_done"]
    if not await asyncio.to_thread(done.wait, max(0.01, rc.remaining())):
        raise TimeoutError("the client did not finish before the deadline")
    await _maybe(service.stop())
    await _maybe(bus.close())
    return {}


@_arole
async def client(rc: RoleContext) -> RoleResult:
    bus = await _connect(rc)
    request = bus.requests.request
    subject, data = _subject(rc.params), payload(rc.size)
    lat = Latencies()
    clock = time.perf_counter_ns
    await rc.aready()
    try:
        for _ in range(warmup_count(rc.count)):
            await request(subject, data, 5.0)
        for i in range(rc.count):
            t = clock()
            await request(subject, data, 5.0)
            lat.add(clock() - t)
            if not i & 1023:
                rc.check("requesting")
    finally:
        rc.shared["client_done"].set()
    await _maybe(bus.close())
    return lat.summary("rtt")


@_srole
def sync_client(rc: RoleContext) -> RoleResult:
    subject, data = _subject(rc.params), payload(rc.size)
    lat = Latencies()
    clock = time.perf_counter_ns
    try:
        with _sync_connect(rc) as bus:
            request = bus.requests.request
            rc.ready()
            for _ in range(warmup_count(rc.count)):
                request(subject, data, 5.0)
            for i in range(rc.count):
                t = clock()
                request(subject, data, 5.0)
                lat.add(clock() - t)
                if not i & 1023:
                    rc.check("requesting")
    finally:
        rc.shared["client_done"].set()
    return lat.summary("rtt")


# ----------------------------------------------------------------------------------- kv


@_arole
async def kv_client(rc: RoleContext) -> RoleResult:
    bus = await _connect(rc)
    kv, bucket, value = bus.kv, f"b{rc.params.run_id}", payload(rc.size)
    rev = await kv.put(bucket, "k", value)
    for _ in range(warmup_count(rc.count)):
        await kv.get(bucket, "k")
    clock = time.perf_counter_ns
    await rc.aready()
    out: RoleResult = {}
    for op in ("get", "put", "cas"):
        lat = Latencies()
        for _ in range(rc.count):
            t = clock()
            if op == "get":
                await kv.get(bucket, "k")
            elif op == "put":
                rev = await kv.put(bucket, "k", value)
            else:
                rev = await kv.cas(bucket, "k", value, expected=rev)
            lat.add(clock() - t)
        out.update(lat.summary(op))
        rc.check(f"kv {op}")
    await _maybe(bus.close())
    return out


@_srole
def sync_kv_client(rc: RoleContext) -> RoleResult:
    bucket, value = f"b{rc.params.run_id}", payload(rc.size)
    clock = time.perf_counter_ns
    out: RoleResult = {}
    with _sync_connect(rc) as bus:
        kv = bus.kv
        rev = kv.put(bucket, "k", value)
        for _ in range(warmup_count(rc.count)):
            kv.get(bucket, "k")
        rc.ready()
        for op in ("get", "put", "cas"):
            lat = Latencies()
            for _ in range(rc.count):
                t = clock()
                if op == "get":
                    kv.get(bucket, "k")
                elif op == "put":
                    rev = kv.put(bucket, "k", value)
                else:
                    rev = kv.cas(bucket, "k", value, expected=rev)
                lat.add(clock() - t)
            out.update(lat.summary(op))
            rc.check(f"kv {op}")
    return out


# --------------------------------------------------------------------------------- jobs


@_arole
async def producer(rc: RoleContext) -> RoleResult:
    """Pipelined like the publisher: enqueue_async (a future per job, no
    task), up to 4000 jobs or 32 MiB in flight."""
    from klieo_shm import Job

    bus = await _connect(rc)
    queue, data = f"q{rc.params.run_id}", payload(rc.size)
    enqueue = bus.jobs.enqueue_async
    await rc.aready()
    t0 = now()
    async with asyncio.timeout(max(0.01, rc.remaining())):
        await _pipelined(rc, lambda: enqueue(queue, Job(data)), "enqueueing")
    await _maybe(bus.close())
    return {"t0": t0}


@_arole
async def worker(rc: RoleContext) -> RoleResult:
    """``claim_many`` up to ``batch`` jobs + ``ack_many`` (as the Redis peer's
    XREADGROUP COUNT 100 + XACK); with ``batch`` 1, ``claim`` + ``ack`` per job."""
    bus = await _connect(rc)
    queue, jobs = f"q{rc.params.run_id}", bus.jobs
    batch = int(rc.options.get("batch", 1))
    counter = job_counter(rc)
    await rc.aready()
    n, t1 = 0, 0.0
    while True:
        if batch > 1:
            got = await jobs.claim_many(queue, rc.role, LEASE_TTL, batch)
            if got:
                await jobs.ack_many(got)
        else:
            job = await jobs.claim(queue, rc.role, LEASE_TTL)
            got = [] if job is None else [job]
            if job is not None:
                await job.ack()
        if not got:
            if counter.done():
                break
            rc.check(f"claiming ({n} done)")
            continue
        t1 = now()
        n += len(got)
        counter.add(len(got))
    await _maybe(bus.close())
    return {"t1": t1, "n": n} if n else {"n": 0}


@_srole
def sync_producer(rc: RoleContext) -> RoleResult:
    from klieo_shm import Job

    queue, data = f"q{rc.params.run_id}", payload(rc.size)
    with _sync_connect(rc) as bus:
        enqueue = bus.jobs.enqueue
        rc.ready()
        t0 = now()
        for i in range(rc.count):
            enqueue(queue, Job(data))
            if not i & 1023:
                rc.check("enqueueing")
    return {"t0": t0}


@_srole
def sync_worker(rc: RoleContext) -> RoleResult:
    queue = f"q{rc.params.run_id}"
    counter = job_counter(rc)
    n, t1 = 0, 0.0
    with _sync_connect(rc) as bus:
        claim = bus.jobs.claim
        rc.ready()
        while True:
            job = claim(queue, rc.role, LEASE_TTL)
            if job is None:
                if counter.done():
                    break
                rc.check(f"claiming ({n} done)")
                continue
            job.ack()
            t1 = now()
            n += 1
            counter.add(1)
    return {"t1": t1, "n": n} if n else {"n": 0}


def _jobs(prod: Any, work: Any, server: str = SERVER, **extra: Any) -> Impl:
    opts = {"server": server, **extra}
    return Impl(
        (Role("producer", prod, opts), Role("worker1", work, opts), Role("worker2", work, opts)),
        make_shared=counter_shared,
    )


def _async_impls(server: str, **extra: Any) -> dict[str, Impl]:
    """The ``klieo`` peer's implementations, connecting to ``server`` (role
    options ``extra`` for every role)."""
    opts = {"server": server, **extra}
    return {
        "W1": _pubsub(1, server, batch=MSG_BATCH, **extra),
        # 1 MiB messages one at a time: a batch's payloads freed at once make
        # glibc trim the heap, and the next ones fault in fresh pages (the
        # subscriber's CPU per message went 160 -> 400 µs with batches of 100)
        "W2": _pubsub(1, server, **extra),
        "W3": Impl(
            (Role("server", server_role, opts), Role("client", client, opts)),
            make_shared=_done_shared,
        ),
        "W4": Impl((Role("client", kv_client, opts),)),
        "W5": _jobs(producer, worker, server, batch=JOB_BATCH, **extra),
        "W6": _pubsub(3, server, batch=MSG_BATCH, **extra),
    }


_REQ = ("klieo_shm",)
_SRV = (SERVER,)
PEERS = [
    Peer(
        name="klieo",
        family=FAMILY,
        label="durable",
        what="klieo_shm asyncio API; publish_async / enqueue_async up to 4000 (32 MiB) in "
        "flight; next_many + ack_many of up to 100 messages (W2: one at a time; W5: "
        "claim_many + ack_many of up to 100 jobs); "
        "klieo-shmd with its defaults (journal on)",
        impls=_async_impls(SERVER),
        requires=_REQ,
        servers=_SRV,
    ),
    Peer(
        name="klieo-sync",
        family=FAMILY,
        label="durable",
        what="klieo_shm blocking API (klieo_shm.sync); W3 server on the asyncio API",
        impls={
            "W3": Impl(
                (Role("server", server_role), Role("client", sync_client)),
                make_shared=_done_shared,
            ),
            "W4": Impl((Role("client", sync_kv_client),)),
            "W5": _jobs(sync_producer, sync_worker),
        },
        requires=_REQ,
        servers=_SRV,
    ),
    Peer(
        name=SPIN,
        family=FAMILY,
        label="durable",
        what=f"the klieo peer spinning: klieo-shmd --spin-us {SPIN_US}, roles on "
        "klieo_shm.spinning_loop",
        impls={k: v for k, v in _async_impls(SPIN, loop="spin").items() if k in SPIN_WORKLOADS},
        requires=_REQ,
        servers=(SPIN,),
    ),
    Peer(
        name=SPIN + "-sync",
        family=FAMILY,
        label="durable",
        what=f"the klieo-sync peer spinning: klieo-shmd --spin-us {SPIN_US}, "
        f"?spin_us={SPIN_US} in the URL (W4)",
        impls={
            # W3 left out: the spinning loop thread, the broker and the server
            # share 2 cores badly (p50 342 µs against klieo-sync's 257 µs)
            "W4": Impl((Role("client", sync_kv_client, {"server": SPIN, "spin_us": SPIN_US}),)),
        },
        requires=_REQ,
        servers=(SPIN,),
    ),
    Peer(
        name=FAMILY + "-perjob",
        family=FAMILY,
        label="durable",
        what="the klieo peer's W5 with claim + ack per job instead of claim_many + ack_many",
        impls={"W5": _jobs(producer, worker)},
        requires=_REQ,
        servers=_SRV,
    ),
    Peer(
        name=FAMILY + "-permsg",
        family=FAMILY,
        label="durable",
        what="the klieo peer's W1 and W6 with async for + ack per message instead of "
        "next_many + ack_many",
        impls={"W1": _pubsub(1), "W6": _pubsub(3)},
        requires=_REQ,
        servers=_SRV,
    ),
    Peer(
        name=NOJOURNAL,
        family=NOJOURNAL,
        label="durable",
        what="klieo_shm without journal: the klieo peer against klieo-shmd --no-state",
        impls={k: v for k, v in _async_impls(NOJOURNAL).items() if k in NOJOURNAL_WORKLOADS},
        requires=_REQ,
        servers=(NOJOURNAL,),
    ),
]
