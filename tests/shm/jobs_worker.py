"""A job-queue process for the cross-process job tests.

python jobs_worker.py SOCKET claim QUEUE TTL
    claim one job, print "claimed <id> <token>", wait for a line on stdin,
    then ack it and print "acked" or "conflict <expected> <current>"
python jobs_worker.py SOCKET enqueue QUEUE DEDUP_KEY
    connect, print "ready", wait for a line on stdin, enqueue a job with
    DEDUP_KEY and print "id <job id>"
python jobs_worker.py SOCKET batch QUEUE COUNT
    claim COUNT jobs with claim_many, ack them with ack_many, print "acked
    <ids...>" and SIGKILL itself at once (no loop turn after ack_many)
python jobs_worker.py SOCKET fail QUEUE
    run the worker runtime over QUEUE with a handler that always raises,
    until the queue is drained; print "done <dead-lettered count>"
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import klieo_shm
from klieo_shm.worker import WorkerOptions, run_worker


def say(*words: object) -> None:
    print(*words, flush=True)


async def _line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


def _fail(payload: bytes) -> None:
    raise ValueError(f"cannot handle {payload!r}")


async def main(sock: str, role: str, queue: str, arg: str = "") -> None:
    async with await klieo_shm.connect(f"shm://{sock}") as bus:
        if role == "claim":
            job = None
            while job is None:
                job = await bus.jobs.claim(queue, "first", float(arg))
            say("claimed", job.id, job.token)
            await _line()
            try:
                await job.ack()
            except klieo_shm.Conflict as exc:
                say("conflict", exc.expected, exc.current)
            else:
                say("acked")
        elif role == "batch":
            got: list[klieo_shm.ClaimedJob] = []
            while len(got) < int(arg):
                got += await bus.jobs.claim_many(queue, "batch", 60.0, int(arg) - len(got))
            await bus.jobs.ack_many(got)
            say("acked", *(job.id for job in got))
            os.kill(os.getpid(), signal.SIGKILL)
        elif role == "enqueue":
            say("ready")
            await _line()
            job_id = await bus.jobs.enqueue(queue, klieo_shm.Job(b"same", dedup_key=arg))
            say("id", job_id)
        elif role == "fail":
            opts = WorkerOptions(backoff_base=0.01, backoff_cap=0.02, until_empty=True)
            stats = await run_worker(bus, queue, _fail, options=opts)
            say("done", stats.dead_lettered)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
