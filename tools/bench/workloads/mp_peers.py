"""multiprocessing.Queue and multiprocessing.Pipe peers (fire-and-forget).

Receivers block without a timeout: the runner enforces the run's deadline by
terminating the role processes, so the hot loops carry no per-message poll.
"""

from __future__ import annotations

import time
from multiprocessing.context import SpawnContext
from typing import Any

from tools.bench.workloads.base import (
    Impl,
    Latencies,
    Peer,
    Role,
    RoleContext,
    RoleResult,
    RunParams,
    now,
    payload,
    warmup_count,
)

_STOP = None  # job-queue sentinel: one per worker, after the jobs


# ------------------------------------------------------------------ multiprocessing.Queue


def _queues(ctx: SpawnContext, n: int) -> dict[str, Any]:
    return {f"q{i}": ctx.Queue() for i in range(n)}


def _one_queue(ctx: SpawnContext, params: RunParams) -> dict[str, Any]:
    return _queues(ctx, 1)


def _three_queues(ctx: SpawnContext, params: RunParams) -> dict[str, Any]:
    return _queues(ctx, 3)


def mpq_publisher(rc: RoleContext) -> RoleResult:
    queues = [rc.shared[k] for k in sorted(rc.shared)]
    data = payload(rc.size)
    sentinels = int(rc.options.get("sentinels", 0))
    rc.ready()
    t0 = now()
    for i in range(rc.count):
        for q in queues:
            q.put(data)
        if not i & 1023:
            rc.check("publishing")
    for _ in range(sentinels):
        queues[0].put(_STOP)
    return {"t0": t0}


def mpq_subscriber(rc: RoleContext) -> RoleResult:
    q = rc.shared[rc.options["queue"]]
    get = q.get
    rc.ready()
    for _ in range(rc.count):
        get()
    return {"t1": now(), "n": rc.count}


def mpq_worker(rc: RoleContext) -> RoleResult:
    """Competing consumer of one queue; stops at its sentinel."""
    q = rc.shared["q0"]
    get = q.get
    n = 0
    t1 = 0.0
    rc.ready()
    while get() is not _STOP:
        n += 1
        t1 = now()
    return {"t1": t1, "n": n} if n else {"n": 0}


_SUB = Role("subscriber", mpq_subscriber, {"queue": "q0"})
_MPQ_PAIR = Impl((Role("publisher", mpq_publisher), _SUB), make_shared=_one_queue)
_MPQ_JOBS = Impl(
    (
        Role("producer", mpq_publisher, {"sentinels": 2}),
        Role("worker1", mpq_worker),
        Role("worker2", mpq_worker),
    ),
    make_shared=_one_queue,
)
_MPQ_FANOUT = Impl(
    (
        Role("publisher", mpq_publisher),
        *(Role(f"subscriber{i}", mpq_subscriber, {"queue": f"q{i}"}) for i in range(3)),
    ),
    make_shared=_three_queues,
)


# ------------------------------------------------------------------- multiprocessing.Pipe


def _simplex_pipe(ctx: SpawnContext, params: RunParams) -> dict[str, Any]:
    r, w = ctx.Pipe(duplex=False)
    return {"r": r, "w": w}


def _duplex_pipe(ctx: SpawnContext, params: RunParams) -> dict[str, Any]:
    a, b = ctx.Pipe(duplex=True)
    return {"client": a, "server": b}


def pipe_publisher(rc: RoleContext) -> RoleResult:
    send = rc.shared["w"].send_bytes
    data = payload(rc.size)
    rc.ready()
    t0 = now()
    for i in range(rc.count):
        send(data)
        if not i & 1023:
            rc.check("publishing")
    return {"t0": t0}


def pipe_subscriber(rc: RoleContext) -> RoleResult:
    recv = rc.shared["r"].recv_bytes
    rc.ready()
    for _ in range(rc.count):
        recv()
    return {"t1": now(), "n": rc.count}


def pipe_server(rc: RoleContext) -> RoleResult:
    conn = rc.shared["server"]
    recv, send = conn.recv_bytes, conn.send_bytes
    rc.ready()
    for _ in range(rc.count + warmup_count(rc.count)):
        send(recv())
    return {}


def pipe_client(rc: RoleContext) -> RoleResult:
    conn = rc.shared["client"]
    recv, send = conn.recv_bytes, conn.send_bytes
    data = payload(rc.size)
    lat = Latencies()
    clock = time.perf_counter_ns
    rc.ready()
    for _ in range(warmup_count(rc.count)):
        send(data)
        recv()
    for i in range(rc.count):
        t = clock()
        send(data)
        recv()
        lat.add(clock() - t)
        if not i & 1023:
            rc.check("requesting")
    return lat.summary("rtt")


_PIPE_PAIR = Impl(
    (Role("publisher", pipe_publisher), Role("subscriber", pipe_subscriber)),
    make_shared=_simplex_pipe,
)
_PIPE_RR = Impl(
    (Role("server", pipe_server), Role("client", pipe_client)), make_shared=_duplex_pipe
)

PEERS = [
    Peer(
        name="mp-queue",
        family="mpqueue",
        label="fire-and-forget",
        what="multiprocessing.Queue put/get (W5: 2 getters, sentinels)",
        impls={"W1": _MPQ_PAIR, "W2": _MPQ_PAIR, "W5": _MPQ_JOBS, "W6": _MPQ_FANOUT},
        not_applicable={
            "W3": "see mp-pipe for ping-pong",
            "W4": "no key-value store",
        },
    ),
    Peer(
        name="mp-pipe",
        family="mppipe",
        label="fire-and-forget",
        what="multiprocessing.Pipe send_bytes/recv_bytes; W3 ping-pong",
        impls={"W1": _PIPE_PAIR, "W2": _PIPE_PAIR, "W3": _PIPE_RR},
        not_applicable={
            "W4": "no key-value store",
            "W5": "one reader per pipe end: no competing consumers",
            "W6": "see mp-queue",
        },
    ),
]
