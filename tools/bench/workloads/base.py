"""Shared vocabulary of the benchmark: workloads, peers, roles and role helpers.

A *peer* (one row family in the report, e.g. ``redis-streams``) implements some
workloads. An implementation is a tuple of *roles*; the runner starts each role in
its own spawned process, hands it a :class:`RoleContext`, and the role returns a
small ``dict[str, float]``:

* throughput producers return ``{"t0": perf_counter() just before the first send}``;
* throughput consumers return ``{"t1": perf_counter() after the last ack, "n": count}``;
* latency clients return ``{"<op>.p50": µs, "<op>.p99": µs}`` per operation.

``time.perf_counter`` is ``CLOCK_MONOTONIC`` on Linux, one clock for the whole host,
so timestamps taken in different processes can be compared.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from multiprocessing.sharedctypes import Synchronized
from typing import Any, Literal

MIB = 1 << 20

Label = Literal["durable", "fire-and-forget"]
Kind = Literal["throughput", "latency"]


class RunTimeout(Exception):
    """A role passed the run's deadline."""


@dataclass(frozen=True)
class Workload:
    key: str
    name: str
    kind: Kind
    unit: str
    size: int
    full_count: int
    quick_count: int
    description: str
    ops: tuple[str, ...] = ("",)
    fanout: int = 1


WORKLOADS: dict[str, Workload] = {
    w.key: w
    for w in (
        Workload("W1", "pubsub-small", "throughput", "msgs/s", 64, 50_000, 2_000,
                 "1 publisher, 1 subscriber, 64 B messages, first publish to last ack"),
        Workload("W2", "pubsub-large", "throughput", "MiB/s", MIB, 1_000, 40,
                 "1 publisher, 1 subscriber, 1 MiB messages, first publish to last ack"),
        Workload("W3", "request-reply", "latency", "µs", 64, 10_000, 500,
                 "sequential 64 B round trips", ops=("rtt",)),
        Workload("W4", "kv", "latency", "µs", 100, 20_000, 500,
                 "get, put and cas on one key, 100 B value", ops=("get", "put", "cas")),
        Workload("W5", "jobs", "throughput", "jobs/s", 64, 20_000, 1_000,
                 "1 producer, 2 workers, enqueue -> claim -> ack, end = last ack"),
        Workload("W6", "fan-out", "throughput", "delivered/s", 64, 20_000, 1_000,
                 "1 publisher, 3 subscribers with their own durables", fanout=3),
    )
}  # fmt: skip


@dataclass(frozen=True)
class RunParams:
    """Everything a role needs to know about one run; pickled into each role process."""

    workload: str
    count: int
    size: int
    run_id: str
    urls: Mapping[str, str]
    tmpdir: str
    deadline: float  # time.monotonic() (CLOCK_MONOTONIC, host-wide)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def name(self, prefix: str) -> str:
        """A name unique to this run, made of letters and digits only."""
        return f"{prefix}{self.run_id}"


class RoleContext:
    """What a role process gets: parameters, shared objects and the start barrier."""

    def __init__(
        self,
        params: RunParams,
        index: int,
        role: str,
        options: Mapping[str, Any],
        shared: Mapping[str, Any],
        go: threading.Barrier,
    ) -> None:
        self.params = params
        self.index = index
        self.role = role
        self.options = options
        self.shared = shared
        self._go = go

    @property
    def count(self) -> int:
        return self.params.count

    @property
    def size(self) -> int:
        return self.params.size

    def remaining(self) -> float:
        return self.params.remaining()

    def ready(self) -> None:
        """Wait until every role (and the runner) is connected; then the clock may start."""
        self._go.wait(timeout=max(0.01, self.remaining()))

    async def aready(self) -> None:
        await asyncio.to_thread(self.ready)

    def abort(self) -> None:
        self._go.abort()

    def check(self, what: str) -> None:
        if self.remaining() <= 0:
            raise RunTimeout(f"{self.role}: run deadline passed while {what}")


RoleResult = dict[str, float]
RoleFn = Callable[[RoleContext], RoleResult | Awaitable[RoleResult]]
SharedFactory = Callable[[SpawnContext, RunParams], dict[str, Any]]
Hook = Callable[[RunParams], None]


@dataclass(frozen=True)
class Role:
    name: str
    fn: RoleFn
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Impl:
    """One peer's implementation of one workload.

    ``setup`` and ``teardown`` run in the runner process (not timed), ``make_shared``
    builds multiprocessing objects handed to every role at process creation.
    """

    roles: tuple[Role, ...]
    make_shared: SharedFactory | None = None
    setup: Hook | None = None
    teardown: Hook | None = None


@dataclass(frozen=True)
class Peer:
    name: str
    family: str
    label: Label
    what: str
    impls: Mapping[str, Impl]
    requires: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    not_applicable: Mapping[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def payload(size: int) -> bytes:
    """One payload object, created once per role and reused for every message."""
    return b"\xa5" * size


def now() -> float:
    return time.perf_counter()


class Latencies:
    """Per-operation round-trip samples in nanoseconds."""

    def __init__(self) -> None:
        self._samples: list[int] = []

    def add(self, ns: int) -> None:
        self._samples.append(ns)

    def __len__(self) -> int:
        return len(self._samples)

    def summary(self, op: str) -> RoleResult:
        if not self._samples:
            raise RuntimeError(f"no samples for {op!r}")
        s = sorted(self._samples)
        return {f"{op}.p50": _rank(s, 0.50) / 1e3, f"{op}.p99": _rank(s, 0.99) / 1e3}


def _rank(sorted_samples: list[int], q: float) -> float:
    """Nearest-rank percentile."""
    idx = max(0, min(len(sorted_samples) - 1, round(q * len(sorted_samples) + 0.5) - 1))
    return float(sorted_samples[idx])


def warmup_count(count: int) -> int:
    """Untimed operations a latency client does first (connection set-up, caches)."""
    return max(10, min(200, count // 20))


class SharedCount:
    """A total shared by competing workers, updated in chunks to keep locking rare.

    ``add`` counts locally; ``flush`` publishes the local count and returns the total.
    Workers flush whenever they find nothing to do, and stop once ``flush() >= target``.
    """

    def __init__(self, value: Synchronized[int], target: int, chunk: int = 64) -> None:
        self._value = value
        self._target = target
        self._chunk = chunk
        self._local = 0

    def add(self, n: int) -> None:
        self._local += n
        if self._local >= self._chunk:
            self.flush()

    def flush(self) -> int:
        with self._value.get_lock():
            self._value.value += self._local
            self._local = 0
            return int(self._value.value)

    def done(self) -> bool:
        return self.flush() >= self._target


def counter_shared(ctx: SpawnContext, params: RunParams) -> dict[str, Any]:
    """``make_shared`` for job workloads: one shared counter of acked jobs."""
    return {"acked": ctx.Value("q", 0)}


def job_counter(rc: RoleContext, chunk: int = 64) -> SharedCount:
    value: Synchronized[int] = rc.shared["acked"]
    return SharedCount(value, rc.count, chunk)
