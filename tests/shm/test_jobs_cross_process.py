"""Jobs across processes on one klieo-shmd: fencing after a lease expired,
dead letters from the worker runtime, dedup under concurrent enqueues."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator

import klieo_shm
from klieo_shm import Job
from klieo_shm._values import parse_dedup_record

WORKER = os.path.join(os.path.dirname(__file__), "jobs_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(klieo_shm.__file__)))
WAIT = 30.0


class Proc:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def expect(self, word: str) -> list[str]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), WAIT)
        if not raw:
            raise AssertionError(f"process {self.proc.pid} exited ({await self.proc.wait()})")
        parts = raw.decode().split()
        assert parts[0] == word, parts
        return parts[1:]

    def tell(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")


@contextlib.asynccontextmanager
async def process(sock: str, *args: str) -> AsyncIterator[Proc]:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        WORKER,
        sock,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        yield Proc(proc)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), WAIT)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _claim_soon(jobs: klieo_shm.JobQueue, queue: str) -> klieo_shm.ClaimedJob:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while loop.time() < deadline:  # each claim waits about a second in the broker
        claimed = await jobs.claim(queue, "taker", 30.0)
        if claimed is not None:
            return claimed
    raise AssertionError(f"nothing to claim in {queue!r}")


async def test_ack_after_lease_expiry_and_takeover_raises_conflict_in_the_late_worker(
    daemon: str,
) -> None:
    async with await klieo_shm.connect(f"shm://{daemon}") as bus:
        job_id = await bus.jobs.enqueue("contested", Job(b"x"))
        async with process(daemon, "claim", "contested", "0.3") as late:
            old_id, old_token = await late.expect("claimed")
            taken = await _claim_soon(bus.jobs, "contested")

            late.tell()
            expected, current = await late.expect("conflict")

            assert old_id == taken.id == job_id
            assert (int(expected), int(current)) == (int(old_token), taken.token)
            assert taken.attempt == 2
            stats = await bus.jobs.stats("contested")
            assert (stats.ready, stats.claimed, stats.dead) == (0, 1, 0)
            await taken.ack()
        stats = await bus.jobs.stats("contested")
        assert (stats.ready, stats.claimed, stats.dead) == (0, 0, 0)


async def test_a_batch_acked_by_ack_many_stays_acked_when_its_worker_is_killed_at_once(
    daemon: str,
) -> None:
    async with await klieo_shm.connect(f"shm://{daemon}") as bus:
        ids = {await bus.jobs.enqueue("killed-batch", Job(b"%d" % i)) for i in range(50)}
        async with process(daemon, "batch", "killed-batch", "50") as worker:
            acked = await worker.expect("acked")  # then it SIGKILLs itself, no loop turn after
            assert await worker.proc.wait() == -signal.SIGKILL

        assert set(acked) == ids
        stats = await bus.jobs.stats("killed-batch")  # the death is handled by now or next
        assert (stats.ready, stats.delayed, stats.claimed, stats.dead) == (0, 0, 0, 0)
        assert await bus.jobs.claim_many("killed-batch", "after", 30.0, 50) == []


async def test_job_that_always_fails_becomes_a_dead_letter_on_dlq(daemon: str) -> None:
    async with await klieo_shm.connect(f"shm://{daemon}") as bus:
        dlq = await bus.pubsub.subscribe("dlq.poison", "dlq-watch")
        job_id = await bus.jobs.enqueue("poison", Job(b"bad payload", max_attempts=3))
        async with process(daemon, "fail", "poison") as worker:
            assert await worker.expect("done") == ["1"]

        [dead] = await bus.jobs.dead_letters("poison")
        assert (dead.id, dead.payload, dead.attempts) == (job_id, b"bad payload", 3)
        assert "ValueError" in dead.reason
        msg = await dlq.next(timeout=WAIT)
        assert msg is not None
        assert (msg.subject, msg.payload) == ("dlq.poison", b"bad payload")
        assert msg.headers["job-id"] == job_id
        assert msg.headers["attempts"] == "3"
        assert msg.headers["reason"] == dead.reason
        await msg.ack()
        stats = await bus.jobs.stats("poison")
        assert (stats.ready, stats.delayed, stats.claimed, stats.dead) == (0, 0, 0, 1)


async def test_concurrent_enqueues_of_one_dedup_key_from_two_processes_make_one_job(
    daemon: str,
) -> None:
    async with (
        process(daemon, "enqueue", "orders", "order-42") as one,
        process(daemon, "enqueue", "orders", "order-42") as two,
    ):
        await one.expect("ready")
        await two.expect("ready")
        one.tell()
        two.tell()
        [first] = await one.expect("id")
        [second] = await two.expect("id")

    assert first == second
    async with await klieo_shm.connect(f"shm://{daemon}") as bus:
        stats = await bus.jobs.stats("orders")
        assert (stats.ready, stats.claimed) == (1, 0)
        entry = await bus.kv.get("dedup.orders", "order-42")
        assert entry is not None
        assert parse_dedup_record(entry.value) == (first, False)
