"""faster-fifo peer (fire-and-forget): ``put`` per message, ``get_many`` on the reader."""

from __future__ import annotations

import queue
from multiprocessing.context import SpawnContext
from typing import Any

from tools.bench.workloads.base import (
    MIB,
    Impl,
    Peer,
    Role,
    RoleContext,
    RoleResult,
    RunParams,
    now,
    payload,
)

_STOP = None


def _make(n: int, params: RunParams) -> dict[str, Any]:
    from faster_fifo import Queue

    size = max(4 * MIB, 16 * params.size)  # a 1 MiB message needs room for several
    return {f"q{i}": Queue(max_size_bytes=size) for i in range(n)}


def _one(ctx: SpawnContext, params: RunParams) -> dict[str, Any]:
    return _make(1, params)


def _three(ctx: SpawnContext, params: RunParams) -> dict[str, Any]:
    return _make(3, params)


def _timeout(rc: RoleContext) -> float:
    return max(0.01, min(5.0, rc.remaining()))


def fifo_publisher(rc: RoleContext) -> RoleResult:
    queues = [rc.shared[k] for k in sorted(rc.shared)]
    data = payload(rc.size)
    sentinels = int(rc.options.get("sentinels", 0))
    rc.ready()
    t0 = now()
    for i in range(rc.count):
        for q in queues:
            while True:
                try:
                    q.put(data, timeout=_timeout(rc))
                    break
                except queue.Full:
                    rc.check("publishing (queue full)")
        if not i & 1023:
            rc.check("publishing")
    for _ in range(sentinels):
        queues[0].put(_STOP, timeout=_timeout(rc))
    return {"t0": t0}


def fifo_subscriber(rc: RoleContext) -> RoleResult:
    q = rc.shared[rc.options["queue"]]
    rc.ready()
    got = 0
    while got < rc.count:
        try:
            got += len(q.get_many(timeout=_timeout(rc), max_messages_to_get=100))
        except queue.Empty:
            rc.check(f"receiving ({got} of {rc.count})")
    return {"t1": now(), "n": got}


def fifo_worker(rc: RoleContext) -> RoleResult:
    q = rc.shared["q0"]
    rc.ready()
    n = 0
    t1 = 0.0
    while True:
        try:
            # one job at a time: a batch could swallow the other worker's sentinel
            item = q.get(timeout=_timeout(rc))
        except queue.Empty:
            rc.check(f"waiting for jobs ({n} done)")
            continue
        if item is _STOP:
            break
        n += 1
        t1 = now()
    return {"t1": t1, "n": n} if n else {"n": 0}


_PAIR = Impl(
    (Role("publisher", fifo_publisher), Role("subscriber", fifo_subscriber, {"queue": "q0"})),
    make_shared=_one,
)
_JOBS = Impl(
    (
        Role("producer", fifo_publisher, {"sentinels": 2}),
        Role("worker1", fifo_worker),
        Role("worker2", fifo_worker),
    ),
    make_shared=_one,
)
_FANOUT = Impl(
    (
        Role("publisher", fifo_publisher),
        *(Role(f"subscriber{i}", fifo_subscriber, {"queue": f"q{i}"}) for i in range(3)),
    ),
    make_shared=_three,
)

PEERS = [
    Peer(
        name="faster-fifo",
        family="fasterfifo",
        label="fire-and-forget",
        what="faster_fifo.Queue put / get_many(100); W5: 2 getters",
        impls={"W1": _PAIR, "W2": _PAIR, "W5": _JOBS, "W6": _FANOUT},
        requires=("faster_fifo",),
        not_applicable={"W3": "no request-reply", "W4": "no key-value store"},
    )
]
