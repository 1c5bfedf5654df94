"""The worker runtime across processes on a real klieo-shmd: a worker killed
with SIGKILL mid-run, handlers that raise or hang past their lease, SIGTERM
mid-job. They share the pytest plugin's broker (one per xdist worker)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import glob
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

import klieo_shm
from klieo_shm._values import parse_dedup_record

WAIT = 60.0


@pytest.fixture
def broker(klieo_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The pytest plugin's broker for this xdist worker (each test here uses
    its own queue names); KLIEO_TEST_DIR holds the run logs and the
    coordination pipes (see ``pool_workers``)."""
    directory = tempfile.mkdtemp(prefix="klieo-w-", dir="/tmp")
    for name in ("started", "go"):
        os.mkfifo(os.path.join(directory, name))
    monkeypatch.setenv("KLIEO_TEST_DIR", directory)
    try:
        yield klieo_url
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _runs() -> collections.Counter[bytes]:
    runs: collections.Counter[bytes] = collections.Counter()
    for path in glob.glob(os.path.join(os.environ["KLIEO_TEST_DIR"], "runs-*.log")):
        with open(path, "rb") as f:
            runs.update(line.rstrip(b"\n") for line in f)
    return runs


def _read_started(timeout: float = WAIT) -> bytes:
    """The payload a handler announced on the ``started`` pipe."""
    fd = os.open(os.path.join(os.environ["KLIEO_TEST_DIR"], "started"), os.O_RDONLY | os.O_NONBLOCK)
    data = b""
    try:
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise AssertionError(f"no handler started within {timeout} s")
            data += os.read(fd, 4096)
    finally:
        os.close(fd)
    return data.rstrip(b"\n")


def _release_handler() -> None:
    with open(os.path.join(os.environ["KLIEO_TEST_DIR"], "go"), "wb") as f:
        f.write(b"go\n")


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(klieo_shm.__file__)))


@contextlib.contextmanager
def _processes(*commands: list[str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``python pool_workers.py <command>`` for each command; on exit
    wait for each (killing what is still running after WAIT seconds)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, ROOT])}
    script = os.path.join(HERE, "pool_workers.py")
    procs = [subprocess.Popen([sys.executable, script, *c], env=env) for c in commands]
    try:
        yield procs
    finally:
        for p in procs:
            try:
                p.wait(WAIT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _worker(
    url: str,
    queue: str,
    handler: str,
    ttl: float = 30.0,
    backoff: float = 0.01,
    victim: bool = False,
) -> list[str]:
    return ["worker", url, queue, handler, str(ttl), str(backoff), "1" if victim else "0"]


async def _enqueue(url: str, queue: str, payloads: list[bytes]) -> list[str]:
    async with await klieo_shm.connect(url) as bus:
        return list(
            await asyncio.gather(*(bus.jobs.enqueue(queue, klieo_shm.Job(p)) for p in payloads))
        )


async def _stats(url: str, queue: str) -> klieo_shm.QueueStats:
    async with await klieo_shm.connect(url) as bus:
        return await bus.jobs.stats(queue)


def test_sigkill_of_one_of_four_workers_reruns_only_its_job_in_flight(broker: str) -> None:
    payloads = [b"job-%d" % i for i in range(2000)]
    asyncio.run(_enqueue(broker, "work", payloads))
    victim = _worker(broker, "work", "recording_handler", victim=True)
    other = _worker(broker, "work", "recording_handler")

    with _processes(victim, other, other, other) as procs:
        in_flight = _read_started()
        procs[0].send_signal(signal.SIGKILL)

    assert procs[0].returncode == -signal.SIGKILL
    assert [p.returncode for p in procs[1:]] == [0, 0, 0]
    runs = _runs()
    assert set(runs) == set(payloads), "a job was lost"
    assert {p: n for p, n in runs.items() if n != 1} == {in_flight: 2}
    stats = asyncio.run(_stats(broker, "work"))
    assert (stats.ready, stats.delayed, stats.claimed, stats.dead) == (0, 0, 0, 0)


def test_worker_survives_a_handler_that_raises_and_retries_the_job(broker: str) -> None:
    payloads = [b"flaky-1", b"plain-1", b"flaky-2", b"plain-2"]
    asyncio.run(_enqueue(broker, "flaky", payloads))
    with _processes(_worker(broker, "flaky", "flaky_handler")) as (proc,):
        pass

    assert proc.returncode == 0
    assert _runs() == {b"flaky-1": 2, b"flaky-2": 2, b"plain-1": 1, b"plain-2": 1}
    stats = asyncio.run(_stats(broker, "flaky"))
    assert (stats.ready, stats.delayed, stats.claimed, stats.dead) == (0, 0, 0, 0)


def test_heartbeats_keep_a_handler_running_past_its_lease(broker: str) -> None:
    asyncio.run(_enqueue(broker, "slow", [b"hang-long"]))
    ttl = 0.6

    async def rival_claims_nothing() -> None:
        async with await klieo_shm.connect(broker) as bus:
            loop = asyncio.get_running_loop()
            until = loop.time() + 4 * ttl
            while loop.time() < until:  # each claim waits about a second in the broker
                assert await bus.jobs.claim("slow", "rival", 30.0) is None

    with _processes(_worker(broker, "slow", "recording_handler", ttl=ttl)) as (proc,):
        assert _read_started() == b"hang-long"
        asyncio.run(rival_claims_nothing())
        _release_handler()

    assert proc.returncode == 0
    assert _runs() == {b"hang-long": 1}
    stats = asyncio.run(_stats(broker, "slow"))
    assert (stats.ready, stats.delayed, stats.claimed, stats.dead) == (0, 0, 0, 0)


def test_sigterm_to_a_pool_mid_job_finishes_the_job_and_exits_0(broker: str) -> None:
    asyncio.run(_enqueue(broker, "term", [b"hang-term", b"after-1", b"after-2"]))
    with _processes(["pool", broker, "term"]) as (pool,):
        assert _read_started() == b"hang-term"
        pool.send_signal(signal.SIGTERM)
        _release_handler()

    assert pool.returncode == 0
    assert _runs()[b"hang-term"] == 1
    stats = asyncio.run(_stats(broker, "term"))
    assert stats.claimed == 0
    assert stats.ready + stats.delayed == 3 - sum(_runs().values())


def test_worker_marks_dedup_records_done_in_kv_before_acking(broker: str) -> None:
    async def enqueue() -> list[str]:
        async with await klieo_shm.connect(broker) as bus:
            jobs = [klieo_shm.Job(b"keyed-%d" % i, dedup_key=f"k{i}") for i in range(20)]
            return [await bus.jobs.enqueue("keyed", job) for job in jobs]

    ids = asyncio.run(enqueue())
    with _processes(_worker(broker, "keyed", "recording_handler")) as (proc,):
        pass

    async def records() -> list[tuple[str, bool]]:
        async with await klieo_shm.connect(broker) as bus:
            out = []
            for i in range(20):
                entry = await bus.kv.get("dedup.keyed", f"k{i}")
                assert entry is not None
                out.append(parse_dedup_record(entry.value))
            return out

    assert proc.returncode == 0
    assert asyncio.run(records()) == [(job_id, True) for job_id in ids]
    assert _runs() == {b"keyed-%d" % i: 1 for i in range(20)}
