"""The processes of the chaos test: ``python chaos_roles.py ROLE SOCKET WHO [COUNT]``.

Each role talks to klieo-shmd through the blocking client and rides through
broker restarts by itself (the client reconnects); it reports to the parent
as JSON lines ``[kind, who, numbers]`` on stdout, in batches:

* ``publisher``: publishes payload (who, n) for n in 0..count-1 on
  ``chaos.<who>``, retrying a publish that failed with ``Closed`` (it may have
  been stored: a duplicate at-least-once allows); reports ``("pub", who, ns)``
  for the publishes it was told succeeded, then ``("pub_done", who, [])``;
* ``subscriber``: consumes the durable ``chaos`` and acks; reports
  ``("ready", who, [])`` once subscribed, then ``("got", publisher, ns)`` for
  what it received;
* ``producer``: enqueues jobs (who, n) on the queue ``chaos``; reports
  ``("enq", who, ns)`` for enqueues it was told succeeded, then ``("enq_done", ...)``;
* ``worker``: claims and acks jobs; reports ``("ran", producer, ns)``.

Subscribers and workers run until a line arrives on stdin.
"""

from __future__ import annotations

import contextlib
import json
import struct
import sys
import threading
import time
from collections import defaultdict
from typing import Any

import klieo_shm
import klieo_shm.sync

ITEM = struct.Struct("<II")
GIVE_UP = 120.0
"""Seconds one operation may keep failing before the role reports an error."""
_BATCH = 200


def _bus(sock: str) -> Any:
    return klieo_shm.sync.connect(f"shm://{sock}")


def _retry(op: Any, *args: Any) -> Any:
    deadline = time.monotonic() + GIVE_UP
    while True:
        try:
            return op(*args)
        except (klieo_shm.Closed, klieo_shm.Full):
            if time.monotonic() > deadline:
                raise


def publisher(sock: str, who: int, count: int, out: Any) -> None:
    bus = _bus(sock)
    try:
        done: list[int] = []
        for n in range(count):
            _retry(bus.pubsub.publish, f"chaos.{who}", ITEM.pack(who, n))
            done.append(n)
            if len(done) >= _BATCH:
                out.put(("pub", who, done))
                done = []
        out.put(("pub", who, done))
        out.put(("pub_done", who, []))
    except BaseException as exc:
        out.put(("error", who, [repr(exc)]))
        raise
    finally:
        bus.close()


def producer(sock: str, who: int, count: int, out: Any) -> None:
    bus = _bus(sock)
    try:
        done: list[int] = []
        for n in range(count):
            _retry(bus.jobs.enqueue, "chaos", klieo_shm.Job(ITEM.pack(who, n)))
            done.append(n)
            if len(done) >= _BATCH:
                out.put(("enq", who, done))
                done = []
        out.put(("enq", who, done))
        out.put(("enq_done", who, []))
    except BaseException as exc:
        out.put(("error", who, [repr(exc)]))
        raise
    finally:
        bus.close()


def _flush(out: Any, kind: str, seen: dict[int, list[int]]) -> None:
    for who, ns in seen.items():
        if ns:
            out.put((kind, who, ns))
    seen.clear()


def subscriber(sock: str, who: int, out: Any, stop: Any) -> None:
    bus = _bus(sock)
    try:
        stream = _retry(bus.pubsub.subscribe, "chaos.>", "chaos")
        out.put(("ready", who, []))  # the durable exists: publishing may start
        seen: dict[int, list[int]] = defaultdict(list)
        pending = 0
        while not stop.is_set():
            try:
                msg = stream.next(timeout=0.2)
            except klieo_shm.Timeout:
                msg = None
            if msg is None:
                _flush(out, "got", seen)
                pending = 0
                continue
            p, n = ITEM.unpack(msg.payload)
            seen[p].append(n)
            pending += 1
            with contextlib.suppress(klieo_shm.Closed):
                msg.ack()  # lost with the broker? it redelivers what it did not see acked
            if pending >= _BATCH:
                _flush(out, "got", seen)
                pending = 0
        _flush(out, "got", seen)
        stream.close()
    except BaseException as exc:
        out.put(("error", who, [repr(exc)]))
        raise
    finally:
        bus.close()


def worker(sock: str, who: int, out: Any, stop: Any) -> None:
    bus = _bus(sock)
    try:
        seen: dict[int, list[int]] = defaultdict(list)
        pending = 0
        while not stop.is_set():
            try:
                job = bus.jobs.claim("chaos", f"w{who}", 10.0)
            except klieo_shm.Closed:
                continue
            if job is None:
                _flush(out, "ran", seen)
                pending = 0
                continue
            p, n = ITEM.unpack(job.payload)
            seen[p].append(n)
            pending += 1
            with contextlib.suppress(klieo_shm.Closed, klieo_shm.Conflict):
                job.ack()  # not acked: it runs again (at-least-once)
            if pending >= _BATCH:
                _flush(out, "ran", seen)
                pending = 0
        _flush(out, "ran", seen)
    except BaseException as exc:
        out.put(("error", who, [repr(exc)]))
        raise
    finally:
        bus.close()


class _Out:
    """Reports as JSON lines on stdout."""

    def put(self, item: tuple[str, int, list[Any]]) -> None:
        sys.stdout.write(json.dumps(item) + "\n")
        sys.stdout.flush()


def main(argv: list[str]) -> None:
    role, sock, who = argv[0], argv[1], int(argv[2])
    out = _Out()
    if role in ("publisher", "producer"):
        {"publisher": publisher, "producer": producer}[role](sock, who, int(argv[3]), out)
        return
    stop = threading.Event()

    def wait_for_stop() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    {"subscriber": subscriber, "worker": worker}[role](sock, who, out, stop)


if __name__ == "__main__":
    main(sys.argv[1:])
