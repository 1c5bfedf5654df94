"""The worker loop on the in-process backend: ack, retry, dead letters, dedup,
heartbeats and stopping."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

import klieo_shm
from klieo_shm._values import dedup_record
from klieo_shm.worker import WorkerOptions, backoff_delay, load_handler, run_worker

FAST = WorkerOptions(lease_ttl=5.0, backoff_base=0.01, backoff_cap=0.05, until_empty=True)


def _url() -> str:
    return f"memory://worker-{uuid.uuid4().hex}"


def test_backoff_delay_doubles_per_attempt_and_is_capped() -> None:
    assert [backoff_delay(a, 0.5, 3.0) for a in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_load_handler_resolves_module_function_and_rejects_garbage() -> None:
    assert load_handler("json:dumps") is __import__("json").dumps
    with pytest.raises(ValueError, match="module:function"):
        load_handler("json.dumps")


def test_worker_runs_every_job_once_and_acks_it() -> None:
    seen: list[bytes] = []

    async def main() -> None:
        async with await klieo_shm.connect(_url()) as bus:
            for i in range(20):
                await bus.jobs.enqueue("q", klieo_shm.Job(str(i).encode()))
            stats = await run_worker(bus, "q", seen.append, options=FAST)
            assert stats.acked == 20
            s = await bus.jobs.stats("q")
            assert (s.ready, s.claimed, s.dead) == (0, 0, 0)

    asyncio.run(main())
    assert sorted(seen, key=int) == [str(i).encode() for i in range(20)]


def test_async_handler_is_awaited() -> None:
    seen: list[bytes] = []

    async def handler(payload: bytes) -> None:
        await asyncio.sleep(0)
        seen.append(payload)

    async def main() -> None:
        async with await klieo_shm.connect(_url()) as bus:
            await bus.jobs.enqueue("q", klieo_shm.Job(b"x"))
            await run_worker(bus, "q", handler, options=FAST)

    asyncio.run(main())
    assert seen == [b"x"]


def test_failing_handler_is_retried_then_dead_lettered_with_its_error() -> None:
    calls: list[bytes] = []

    def handler(payload: bytes) -> None:
        calls.append(payload)
        raise RuntimeError("tool call failed")

    async def main() -> None:
        async with await klieo_shm.connect(_url()) as bus:
            await bus.jobs.enqueue("q", klieo_shm.Job(b"bad", max_attempts=3))
            stats = await run_worker(bus, "q", handler, options=FAST)
            assert (stats.failed, stats.dead_lettered) == (2, 1)
            (dead,) = await bus.jobs.dead_letters("q")
            assert dead.payload == b"bad"
            assert dead.attempts == 3
            assert "tool call failed" in dead.reason

    asyncio.run(main())
    assert calls == [b"bad"] * 3


def test_a_job_whose_dedup_record_is_done_is_acked_without_running_the_handler() -> None:
    calls: list[bytes] = []

    async def main() -> None:
        async with await klieo_shm.connect(_url()) as bus:
            job_id = await bus.jobs.enqueue("q", klieo_shm.Job(b"once", dedup_key="k1"))
            await bus.kv.put("dedup.q", "k1", dedup_record(job_id, done=True))
            stats = await run_worker(bus, "q", calls.append, options=FAST)
            assert stats.skipped_done == 1

    asyncio.run(main())
    assert calls == []


def test_dedup_record_is_marked_done_after_the_handler_succeeds() -> None:
    async def main() -> None:
        async with await klieo_shm.connect(_url()) as bus:
            job_id = await bus.jobs.enqueue("q", klieo_shm.Job(b"p", dedup_key="k2"))
            await run_worker(bus, "q", lambda p: None, options=FAST)
            entry = await bus.kv.get("dedup.q", "k2")
            assert entry is not None
            assert entry.value == dedup_record(job_id, done=True)

    asyncio.run(main())


def test_heartbeats_keep_a_claim_past_its_lease_ttl() -> None:
    started = threading.Event()
    release = threading.Event()

    def slow(payload: bytes) -> None:
        started.set()
        assert release.wait(30)

    async def main() -> None:
        url = _url()
        async with await klieo_shm.connect(url) as bus, await klieo_shm.connect(url) as other:
            await bus.jobs.enqueue("q", klieo_shm.Job(b"long"))
            opts = WorkerOptions(lease_ttl=0.3, max_jobs=1)
            worker = asyncio.create_task(run_worker(bus, "q", slow, options=opts))
            assert await asyncio.to_thread(started.wait, 30)
            # Three lease lengths pass while the handler runs; nobody else may claim it.
            stolen = await other.jobs.claim("q", "thief", 5.0)
            stolen = stolen or await other.jobs.claim("q", "thief", 5.0)
            release.set()
            stats = await asyncio.wait_for(worker, 30)
            assert stolen is None
            assert stats.acked == 1

    asyncio.run(main())


def test_stop_event_lets_the_current_job_finish_then_returns() -> None:
    started = threading.Event()
    release = threading.Event()

    def handler(payload: bytes) -> None:
        started.set()
        assert release.wait(30)

    async def main() -> None:
        async with await klieo_shm.connect(_url()) as bus:
            for _ in range(3):
                await bus.jobs.enqueue("q", klieo_shm.Job(b"j"))
            stop = asyncio.Event()
            worker = asyncio.create_task(
                run_worker(bus, "q", handler, options=WorkerOptions(lease_ttl=5.0), stop=stop)
            )
            assert await asyncio.to_thread(started.wait, 30)
            stop.set()
            release.set()
            stats = await asyncio.wait_for(worker, 30)
            assert stats.acked == 1
            assert (await bus.jobs.stats("q")).ready == 2

    asyncio.run(main())
