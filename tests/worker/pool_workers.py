"""Process targets and handlers for the cross-process worker tests.

Every handler run is recorded as one line ``<payload>`` appended to
``<KLIEO_TEST_DIR>/runs-<pid>.log`` (written before the handler returns, so a
SIGKILLed process keeps its lines). Coordination with the test goes through
named pipes in ``KLIEO_TEST_DIR`` (blocking opens and reads: no polling):

- ``started``: a handler that must be caught mid-job writes its payload here;
- ``go``: such a handler then blocks until the test writes a line here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading

from klieo_shm import connect
from klieo_shm.worker import WorkerOptions, run_pool, run_worker


def _dir() -> str:
    return os.environ["KLIEO_TEST_DIR"]


def record(payload: bytes) -> None:
    with open(os.path.join(_dir(), f"runs-{os.getpid()}.log"), "ab") as f:
        f.write(payload + b"\n")


def _announce_and_wait(payload: bytes) -> None:
    with open(os.path.join(_dir(), "started"), "wb") as f:
        f.write(payload + b"\n")
    with open(os.path.join(_dir(), "go"), "rb") as f:
        f.readline()


def recording_handler(payload: bytes) -> None:
    """Records the run; the payload ``hang`` makes it wait for the test."""
    record(payload)
    if payload.startswith(b"hang"):
        _announce_and_wait(payload)


def flaky_handler(payload: bytes) -> None:
    """Raises on the first run of each payload starting with ``flaky``."""
    path = os.path.join(_dir(), "flaky-" + payload.decode())
    record(payload)
    if payload.startswith(b"flaky") and not os.path.exists(path):
        open(path, "wb").close()
        raise RuntimeError(f"first run of {payload!r} fails")


def failing_handler(payload: bytes) -> None:
    record(payload)
    raise ValueError("always fails")


def run(url: str, queue: str, handler_name: str, options: WorkerOptions, victim: bool) -> None:
    """A worker process: ``run_worker`` until the queue is drained (or
    SIGTERM). The ``victim`` hangs in its 10th job, after telling the test."""
    handler = globals()[handler_name]
    count = [0]

    def victim_handler(payload: bytes) -> None:
        count[0] += 1
        record(payload)
        if count[0] == 10:
            with open(os.path.join(_dir(), "started"), "wb") as f:
                f.write(payload + b"\n")
            threading.Event().wait()

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with await connect(url) as bus:
            chosen = victim_handler if victim else handler
            await run_worker(bus, queue, chosen, options=options, stop=stop)

    asyncio.run(main())


def pool(url: str, queue: str) -> None:
    """A one-process pool on ``queue`` with ``recording_handler``."""
    run_pool("pool_workers:recording_handler", queue, processes=1, url=url)


def main(argv: list[str]) -> None:
    """``python pool_workers.py worker URL QUEUE HANDLER TTL BACKOFF VICTIM``
    or ``python pool_workers.py pool URL QUEUE``."""
    if argv[0] == "pool":
        pool(argv[1], argv[2])
        return
    _, url, queue, handler, ttl, backoff, victim = argv
    b = float(backoff)
    opts = WorkerOptions(lease_ttl=float(ttl), backoff_base=b, backoff_cap=2 * b, until_empty=True)
    run(url, queue, handler, opts, victim == "1")


if __name__ == "__main__":
    main(sys.argv[1:])
