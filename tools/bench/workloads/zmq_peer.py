"""pyzmq peers over ipc:// (fire-and-forget): PUSH/PULL, REQ/REP, PUB/SUB.

Socket files live in the run's temporary directory and are removed by ``teardown``.
Large payloads are sent and received without copies (``copy=False``), as pyzmq
recommends for big messages.
"""

from __future__ import annotations

import contextlib
import time
from multiprocessing.context import SpawnContext
from pathlib import Path
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

_ZERO_COPY_FROM = 64 * 1024


def _path(params: RunParams) -> Path:
    return Path(params.tmpdir) / f"zmq-{params.run_id}.ipc"


def _endpoint(rc: RoleContext) -> str:
    return f"ipc://{_path(rc.params)}"


def _teardown(params: RunParams) -> None:
    with contextlib.suppress(FileNotFoundError):
        _path(params).unlink()


def _connect_when_bound(rc: RoleContext, sock: Any) -> None:
    """Connect once the peer's bind created the socket file: messages queued on a
    connect that precedes the bind were seen to get lost now and then."""
    path = _path(rc.params)
    while not path.exists():
        rc.check("waiting for the peer to bind")
        time.sleep(0.005)
    sock.connect(f"ipc://{path}")


def _ms(rc: RoleContext) -> int:
    return max(10, int(min(5.0, rc.remaining()) * 1000))


def _recv_n(rc: RoleContext, sock: Any, skip_empty: bool = False) -> int:
    """Blocking receives with a receive timeout (no zmq_poll in the loop)."""
    import zmq

    copy = rc.size < _ZERO_COPY_FROM
    sock.setsockopt(zmq.RCVTIMEO, 250)
    recv = sock.recv
    got = 0
    while got < rc.count:
        try:
            frame = recv(0, copy=copy)
        except zmq.Again:
            rc.check(f"receiving ({got} of {rc.count})")
            continue
        if skip_empty and not len(frame if copy else frame.buffer):
            continue  # a subscription probe
        got += 1
    return got


def push_publisher(rc: RoleContext) -> RoleResult:
    import zmq

    zctx = zmq.Context()
    sock = zctx.socket(zmq.PUSH)
    _connect_when_bound(rc, sock)
    data = payload(rc.size)
    copy = rc.size < _ZERO_COPY_FROM
    rc.ready()
    t0 = now()
    for i in range(rc.count):
        sock.send(data, 0, copy=copy)
        if not i & 1023:
            rc.check("publishing")
    # Stay connected until the subscriber has everything: when the PUSH side
    # disconnected right after its last send, the PULL side lost the ~500 messages
    # still in flight in about 1 run out of 10.
    rc.shared["received"].wait(max(0.01, rc.remaining()))
    sock.close(linger=0)
    zctx.term()
    return {"t0": t0}


def pull_subscriber(rc: RoleContext) -> RoleResult:
    import zmq

    zctx = zmq.Context()
    sock = zctx.socket(zmq.PULL)
    sock.bind(_endpoint(rc))
    rc.ready()
    got = _recv_n(rc, sock)
    t1 = now()
    rc.shared["received"].set()
    sock.close(linger=0)
    zctx.term()
    return {"t1": t1, "n": got}


def rep_server(rc: RoleContext) -> RoleResult:
    import zmq

    zctx = zmq.Context()
    sock = zctx.socket(zmq.REP)
    sock.bind(_endpoint(rc))
    rc.ready()
    for i in range(rc.count + warmup_count(rc.count)):
        while not sock.poll(_ms(rc)):
            rc.check(f"serving ({i} served)")
        sock.send(sock.recv())
    sock.close(linger=1000)
    zctx.term()
    return {}


def req_client(rc: RoleContext) -> RoleResult:
    import zmq

    zctx = zmq.Context()
    sock = zctx.socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, _ms(rc))
    _connect_when_bound(rc, sock)
    data = payload(rc.size)
    lat = Latencies()
    clock = time.perf_counter_ns
    send, recv = sock.send, sock.recv
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
    sock.close(linger=0)
    zctx.term()
    return lat.summary("rtt")


def _pushpull_shared(ctx: SpawnContext, params: RunParams) -> dict[str, Any]:
    return {"received": ctx.Event()}


def _pubsub_shared(ctx: SpawnContext, params: RunParams) -> dict[str, Any]:
    return {"subscribed": ctx.Semaphore(0), "received": ctx.Semaphore(0)}


def pub_publisher(rc: RoleContext) -> RoleResult:
    """PUB drops messages sent before a subscription arrives (the 'slow joiner'), so
    the publisher sends empty probes until every subscriber has seen one."""
    import zmq

    zctx = zmq.Context()
    sock = zctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 0)  # never drop for a slow subscriber
    sock.bind(_endpoint(rc))
    subscribed = rc.shared["subscribed"]
    seen = 0
    while seen < int(rc.options["subscribers"]):
        sock.send(b"")
        if subscribed.acquire(timeout=0.01):
            seen += 1
        rc.check("waiting for subscriptions")
    data = payload(rc.size)
    rc.ready()
    t0 = now()
    for i in range(rc.count):
        sock.send(data)
        if not i & 1023:
            rc.check("publishing")
    for _ in range(int(rc.options["subscribers"])):  # stay connected: see push_publisher
        rc.shared["received"].acquire(timeout=max(0.01, rc.remaining()))
    sock.close(linger=0)
    zctx.term()
    return {"t0": t0}


def sub_subscriber(rc: RoleContext) -> RoleResult:
    import zmq

    zctx = zmq.Context()
    sock = zctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    _connect_when_bound(rc, sock)
    while not sock.poll(_ms(rc)):
        rc.check("waiting for the first probe")
    sock.recv()
    rc.shared["subscribed"].release()
    rc.ready()
    got = _recv_n(rc, sock, skip_empty=True)
    t1 = now()
    rc.shared["received"].release()
    sock.close(linger=0)
    zctx.term()
    return {"t1": t1, "n": got}


_PUSHPULL = Impl(
    (Role("subscriber", pull_subscriber), Role("publisher", push_publisher)),
    make_shared=_pushpull_shared,
    teardown=_teardown,
)
_REQREP = Impl((Role("server", rep_server), Role("client", req_client)), teardown=_teardown)
_PUBSUB = Impl(
    (
        Role("publisher", pub_publisher, {"subscribers": 3}),
        *(Role(f"subscriber{i}", sub_subscriber) for i in range(3)),
    ),
    make_shared=_pubsub_shared,
    teardown=_teardown,
)

PEERS = [
    Peer(
        name="zmq-pushpull",
        family="zmq",
        label="fire-and-forget",
        what="pyzmq PUSH/PULL over ipc://",
        impls={"W1": _PUSHPULL, "W2": _PUSHPULL},
        requires=("zmq",),
        not_applicable={
            "W4": "no key-value store",
            "W5": "no acks; PUSH round-robins rather than competing consumers",
        },
    ),
    Peer(
        name="zmq-reqrep",
        family="zmq",
        label="fire-and-forget",
        what="pyzmq REQ/REP over ipc://",
        impls={"W3": _REQREP},
        requires=("zmq",),
    ),
    Peer(
        name="zmq-pubsub",
        family="zmq",
        label="fire-and-forget",
        what="pyzmq PUB/SUB over ipc://, HWM 0",
        impls={"W6": _PUBSUB},
        requires=("zmq",),
    ),
]
