"""Redis peers through redis-py with hiredis (redis-py picks hiredis when installed).

* ``redis-streams`` (durable: an entry stays pending in its consumer group until
  XACK): XADD pipelined by 100, XREADGROUP COUNT 100 + one XACK per batch; W6 gives
  each subscriber its own consumer group, W5 has 2 consumers in one group.
* ``redis-lists`` (fire-and-forget, popped = gone): W3 as LPUSH + BRPOP in one
  pipelined round trip; the server BRPOPs and LPUSHes the reply.
* ``redis-kv``: W4 GET, SET and CAS as an EVALSHA Lua script comparing a revision.

The server runs with ``--save '' --appendonly no``: "durable" here means kept until
acknowledged, not written to disk.
"""

from __future__ import annotations

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

CAS_LUA = """
local cur = redis.call('HGET', KEYS[1], 'rev')
if cur ~= ARGV[1] then return -1 end
local rev = tonumber(cur) + 1
redis.call('HSET', KEYS[1], 'rev', rev, 'v', ARGV[2])
return rev
"""


def _client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


def _keys(params: RunParams) -> list[str]:
    return [params.name(p) for p in ("s", "req", "rep", "k", "h")]


def _setup_groups(groups: int, params: RunParams) -> None:
    with _client(params.urls["redis"]) as r:
        for g in range(groups):
            r.xgroup_create(params.name("s"), f"g{g}", id="0", mkstream=True)


def _teardown(params: RunParams) -> None:
    with _client(params.urls["redis"]) as r:
        r.delete(*_keys(params))


# ------------------------------------------------------------------------------ streams


def stream_producer(rc: RoleContext) -> RoleResult:
    r = _client(rc.params.urls["redis"])
    key = rc.params.name("s")
    fields = {b"d": payload(rc.size)}
    batch = int(rc.options.get("batch", 100 if rc.size < _BIG else 8))
    pipe = r.pipeline(transaction=False)
    rc.ready()
    t0 = now()
    for i in range(rc.count):
        pipe.xadd(key, fields)
        if (i + 1) % batch == 0:
            pipe.execute()
            rc.check("publishing")
    if len(pipe):
        pipe.execute()
    r.close()
    return {"t0": t0}


def stream_consumer(rc: RoleContext) -> RoleResult:
    """XREADGROUP COUNT 100 + XACK; ``jobs`` mode stops when the shared total is reached."""
    r = _client(rc.params.urls["redis"])
    key = rc.params.name("s")
    group = rc.options["group"]
    jobs = bool(rc.options.get("jobs"))
    counter = job_counter(rc, chunk=1) if jobs else None
    per_read = int(rc.options.get("per_read", 100 if rc.size < _BIG else 10))
    streams = {key: ">"}
    rc.ready()
    got = 0
    t1 = 0.0
    while counter is not None or got < rc.count:
        resp = r.xreadgroup(group, rc.role, streams, count=per_read, block=100)
        if not resp:
            if counter is not None and counter.done():
                break
            rc.check(f"consuming ({got} of {rc.count})")
            continue
        ids = [entry_id for entry_id, _fields in resp[0][1]]
        r.xack(key, group, *ids)
        t1 = now()
        got += len(ids)
        if counter is not None:
            counter.add(len(ids))
            if counter.done():
                break
    r.close()
    return {"t1": t1, "n": got} if got else {"n": 0}


def _sub(i: int, **opts: Any) -> Role:
    return Role(f"subscriber{i}", stream_consumer, {"group": f"g{i}", **opts})


_PAIR = Impl(
    (Role("publisher", stream_producer), _sub(0)),
    setup=functools.partial(_setup_groups, 1),
    teardown=_teardown,
)
_FANOUT = Impl(
    (Role("publisher", stream_producer), *(_sub(i) for i in range(3))),
    setup=functools.partial(_setup_groups, 3),
    teardown=_teardown,
)
_JOBS = Impl(
    (
        Role("producer", stream_producer),
        Role("worker1", stream_consumer, {"group": "g0", "jobs": True}),
        Role("worker2", stream_consumer, {"group": "g0", "jobs": True}),
    ),
    make_shared=counter_shared,
    setup=functools.partial(_setup_groups, 1),
    teardown=_teardown,
)


# -------------------------------------------------------------------------------- lists


def list_server(rc: RoleContext) -> RoleResult:
    r = _client(rc.params.urls["redis"])
    req, rep = rc.params.name("req"), rc.params.name("rep")
    rc.ready()
    for i in range(rc.count + warmup_count(rc.count)):
        while (item := r.brpop(req, timeout=1)) is None:
            rc.check(f"serving ({i} served)")
        r.lpush(rep, item[1])
    r.close()
    return {}


def list_client(rc: RoleContext) -> RoleResult:
    r = _client(rc.params.urls["redis"])
    req, rep = rc.params.name("req"), rc.params.name("rep")
    data = payload(rc.size)
    pipe = r.pipeline(transaction=False)
    lat = Latencies()
    clock = time.perf_counter_ns

    def call() -> None:
        pipe.lpush(req, data)
        pipe.brpop(rep, timeout=5)
        if pipe.execute()[1] is None:
            raise TimeoutError("no reply within 5 s")

    rc.ready()
    for _ in range(warmup_count(rc.count)):
        call()
    for i in range(rc.count):
        t = clock()
        call()
        lat.add(clock() - t)
        if not i & 1023:
            rc.check("requesting")
    r.close()
    return lat.summary("rtt")


_RR = Impl((Role("server", list_server), Role("client", list_client)), teardown=_teardown)


# ----------------------------------------------------------------------------------- kv


def kv_client(rc: RoleContext) -> RoleResult:
    r = _client(rc.params.urls["redis"])
    key, hkey = rc.params.name("k"), rc.params.name("h")
    value = payload(rc.size)
    r.set(key, value)
    r.hset(hkey, mapping={"rev": 0, "v": value})
    sha = r.script_load(CAS_LUA)
    clock = time.perf_counter_ns
    for _ in range(warmup_count(rc.count)):
        r.get(key)
    rc.ready()
    out: RoleResult = {}
    lat = Latencies()
    for _ in range(rc.count):
        t = clock()
        r.get(key)
        lat.add(clock() - t)
    out.update(lat.summary("get"))
    rc.check("getting")
    lat = Latencies()
    for _ in range(rc.count):
        t = clock()
        r.set(key, value)
        lat.add(clock() - t)
    out.update(lat.summary("put"))
    rc.check("putting")
    lat = Latencies()
    rev = 0
    for _ in range(rc.count):
        t = clock()
        new = r.evalsha(sha, 1, hkey, rev, value)
        lat.add(clock() - t)
        if new != rev + 1:
            raise RuntimeError(f"CAS failed: expected revision {rev}, script returned {new}")
        rev = new
    out.update(lat.summary("cas"))
    r.close()
    return out


_KV = Impl((Role("client", kv_client),), teardown=_teardown)

_REQ = ("redis", "hiredis")
PEERS = [
    Peer(
        name="redis-streams",
        family="redis",
        label="durable",
        what="Streams + consumer groups: XADD pipelined, XREADGROUP COUNT 100 + XACK",
        impls={"W1": _PAIR, "W2": _PAIR, "W5": _JOBS, "W6": _FANOUT},
        requires=_REQ,
        servers=("redis",),
    ),
    Peer(
        name="redis-lists",
        family="redis",
        label="fire-and-forget",
        what="LPUSH + BRPOP request/reply (pipelined)",
        impls={"W3": _RR},
        requires=_REQ,
        servers=("redis",),
    ),
    Peer(
        name="redis-kv",
        family="redis",
        label="durable",
        what="GET / SET / EVALSHA Lua CAS on a revision field",
        impls={"W4": _KV},
        requires=_REQ,
        servers=("redis",),
    ),
]
