"""A pool of worker processes over one queue.

``run_pool`` starts ``processes`` workers (``spawn`` by default), each with its
own bus connection, and waits for them. SIGTERM or SIGINT to the pool's
process is passed on: each worker finishes its current job and exits. A worker
that dies (a crash, SIGKILL) is restarted unless the pool is stopping; the
broker has already handed its claimed job to another worker.

The handler is given as a callable importable by the child (a module-level
function) or as a ``"module:function"`` string.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, Final

from .._bus import connect
from ._runner import JobHandler, WorkerOptions, run_worker

__all__ = ["PoolResult", "load_handler", "run_pool"]

log: Final = logging.getLogger("klieo_shm.worker")

MAX_RESTARTS: Final = 10


def load_handler(ref: str | JobHandler) -> JobHandler:
    """A handler from ``"package.module:function"`` (or the callable itself)."""
    if callable(ref):
        return ref
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"handler must be 'module:function', got {ref!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{ref!r} is not callable")
    handler: JobHandler = obj
    return handler


def _child(
    handler_ref: str | JobHandler, queue: str, url: str | None, opts: WorkerOptions, index: int
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    handler = load_handler(handler_ref)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with await connect(url) as bus:
            stats = await run_worker(bus, queue, handler, options=opts, stop=stop)
        log.info(
            "%s done: %d acked, %d failed, %d dead-lettered",
            stats.worker_id,
            stats.acked,
            stats.failed,
            stats.dead_lettered,
        )

    asyncio.run(main())


@dataclass(frozen=True, slots=True)
class PoolResult:
    """How the pool's processes ended: exit codes of the last generation and
    how many workers were restarted after dying."""

    exit_codes: tuple[int, ...]
    restarts: int


def run_pool(
    handler: str | JobHandler,
    queue: str,
    *,
    processes: int = 2,
    url: str | None = None,
    options: WorkerOptions | None = None,
    context: str = "spawn",
    on_start: Callable[[list[BaseProcess]], None] | None = None,
) -> PoolResult:
    """Run ``processes`` workers on ``queue`` until they return (``until_empty``
    or ``max_jobs`` in ``options``) or the pool gets SIGTERM/SIGINT."""
    if processes < 1:
        raise ValueError("processes must be >= 1")
    opts = options or WorkerOptions()
    ctx: BaseContext = mp.get_context(context)
    stopping = False

    def start(i: int) -> BaseProcess:
        p = ctx.Process(  # type: ignore[attr-defined]
            target=_child, args=(handler, queue, url, opts, i), name=f"klieo-worker-{i}"
        )
        p.start()
        proc: BaseProcess = p
        return proc

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive() and p.pid is not None:
                p.terminate()

    procs = [start(i) for i in range(processes)]
    if on_start is not None:
        on_start(procs)
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    restarts = 0
    given_up: set[int] = set()
    try:
        while True:
            live = [p.sentinel for p in procs if p.exitcode is None]
            if not live:
                break
            mp_connection.wait(live)
            for i, p in enumerate(procs):
                if p.exitcode is None or p.exitcode == 0 or stopping or i in given_up:
                    continue
                if restarts >= MAX_RESTARTS:
                    log.error("worker %d died (exit %s); restart limit reached", i, p.exitcode)
                    given_up.add(i)
                    continue
                log.warning("worker %d died (exit %s); restarting", i, p.exitcode)
                restarts += 1
                procs[i] = start(i)
                if on_start is not None:
                    on_start(procs)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for p in procs:
            p.join()
    return PoolResult(tuple(p.exitcode or 0 for p in procs), restarts)
