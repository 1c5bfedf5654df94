"""An example agent pool: a planner enqueues tasks, N workers run the agent in
``agents.py`` through ``klieo_shm.worker``, results and progress go to KV, a
progress bar shows the run and a summary prints at the end.

    python examples/agent_pool.py --tasks 200 --workers 4 [--url URL | --with-broker]

``--with-broker`` starts a ``klieo-shmd`` on a private socket for the run and
stops it afterwards (what ``examples/run.sh`` does).

On ``shm://`` or ``nats://`` the workers are processes; on ``memory://`` (one
process, no daemon) they are asyncio workers in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import agents

import klieo_shm
from klieo_shm import sync
from klieo_shm.worker import WorkerOptions, run_pool, run_worker

TOPICS = ("market map", "risk memo", "code review", "test plan", "incident notes", "roadmap")


def plan(bus: sync.Bus, queue: str, run: str, n: int) -> None:
    """The planner: one job per task, with a dedup key so a re-plan adds nothing."""
    for i in range(n):
        task = {"id": i, "run": run, "topic": TOPICS[i % len(TOPICS)], "flaky": i % 10 == 7}
        bus.jobs.enqueue(queue, klieo_shm.Job(json.dumps(task).encode(), dedup_key=f"{run}-{i}"))


def progress_bar(stream: sync.MsgStream, total: int, done: threading.Event) -> None:
    """Count the agents' announcements from a durable and redraw a bar until
    every task reported or ``done`` is set."""
    start, count, width = time.monotonic(), 0, 40
    while count < total and not done.is_set():
        try:
            msg = stream.next(timeout=0.2)
        except klieo_shm.Timeout:
            continue
        if msg is None:
            break
        msg.ack()
        count += 1
        filled = width * count // max(total, 1)
        rate = count / max(time.monotonic() - start, 1e-9)
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r[{bar}] {count}/{total} {rate:6.0f}/s")
        sys.stderr.flush()
    sys.stderr.write("\n")


def run_in_process(url: str, queue: str, workers: int) -> None:
    async def main() -> None:
        async with await klieo_shm.connect(url) as bus:
            opts = WorkerOptions(lease_ttl=10.0, backoff_base=0.05, until_empty=True)
            await asyncio.gather(
                *(
                    run_worker(bus, queue, agents.handle, worker_id=f"w{i}", options=opts)
                    for i in range(workers)
                )
            )

    asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--url", default=None)
    parser.add_argument("--with-broker", action="store_true", help="start klieo-shmd for the run")
    args = parser.parse_args()
    if not args.with_broker:
        return run(args)
    from klieo_shm.daemon import spawn_daemon

    with tempfile.TemporaryDirectory(prefix="klieo-example-") as tmp:
        sock = os.path.join(tmp, "klieo.sock")
        with spawn_daemon(sock):
            args.url = f"shm://{sock}"
            return run(args)


def run(args: argparse.Namespace) -> int:
    url = klieo_shm.resolve_url(args.url)
    os.environ[klieo_shm.ENV_URL] = url  # the agents (and worker processes) connect here
    run_id = uuid.uuid4().hex[:8]
    queue, prefix = f"tasks-{run_id}", f"pool-{run_id}"
    with sync.connect(url) as bus:
        stream = bus.pubsub.subscribe(f"pool.{run_id}.done", f"progress-{run_id}")
        plan(bus, queue, run_id, args.tasks)
        plan(bus, queue, run_id, args.tasks)  # re-planning is idempotent: dedup keys
        print(f"planned {args.tasks} tasks on {url} for {args.workers} workers", file=sys.stderr)
        done = threading.Event()
        bar = threading.Thread(target=progress_bar, args=(stream, args.tasks, done), daemon=True)
        started = time.monotonic()
        bar.start()
        try:
            if urlsplit(url).scheme == "memory":
                run_in_process(url, queue, args.workers)
            else:
                opts = WorkerOptions(lease_ttl=10.0, backoff_base=0.05, until_empty=True)
                run_pool(agents.handle, queue, processes=args.workers, url=url, options=opts)
        finally:
            done.set()
            bar.join()
            stream.close()
            bus.pubsub.delete_durable(f"progress-{run_id}")
        elapsed = time.monotonic() - started
        results = [bus.kv.get(f"{prefix}.results", k) for k in bus.kv.keys(f"{prefix}.results")]
        pids = {json.loads(e.value)["pid"] for e in results if e is not None}
        tries = [bus.kv.get(f"{prefix}.attempts", k) for k in bus.kv.keys(f"{prefix}.attempts")]
        attempts = sum(int(e.value) for e in tries if e is not None)
        dead = bus.jobs.dead_letters(queue)
    print(
        f"summary: {len(results)}/{args.tasks} tasks done by {len(pids)} processes in "
        f"{elapsed:.2f} s ({args.tasks / elapsed:.0f} tasks/s); "
        f"{attempts - args.tasks} retries; {len(dead)} dead letters"
    )
    return 0 if len(results) == args.tasks and not dead else 1


if __name__ == "__main__":
    sys.exit(main())
