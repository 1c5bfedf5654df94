"""A worker process for the KV cross-process tests.

Every role connects, reads the KV table once (so it is mapped), prints
"ready", and waits for one line on stdin before it starts:

python kv_worker.py SOCKET count BUCKET KEY N
    add 1 to the decimal counter at KEY N times by get + cas, retrying on
    Conflict; print "done <conflicts>"
python kv_worker.py SOCKET rewrite BUCKET KEY N
    put value_of(i) at KEY for i in 0..N-1; print "done"
python kv_worker.py SOCKET lease BUCKET KEY TTL
    take the lease, print "held <token>"; then for each line on stdin:
    "heartbeat" or "release" -> print "ok" or "conflict <expected> <current>"
python kv_worker.py SOCKET lease-fork BUCKET KEY TTL
    take the lease, fork a child that prints "child <pid>" and waits for a
    signal (it never touches the bus), then print "held <token>" and wait
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import klieo_shm


def value_of(i: int) -> bytes:
    """The i-th value of a rewrite: its index, then a length and fill byte
    that both depend on i, so a torn or mixed value cannot pass as whole."""
    n = (i * 7919) % 6000
    return b"%08d|" % i + bytes([i % 251]) * n


def say(*words: object) -> None:
    """One line in one write: a forked child's lines never split the parent's."""
    os.write(1, (" ".join(map(str, words)) + "\n").encode())


async def line() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


async def main(sock: str, role: str, bucket: str, key: str, arg: str) -> None:
    bus = await klieo_shm.connect(f"shm://{sock}")
    kv = bus.kv
    await kv.get(bucket, key)
    if role == "lease-fork":
        lease = await kv.lease(bucket, key, float(arg))
        if os.fork() == 0:  # the child holds copies of every descriptor
            say("child", os.getpid())
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)  # the test waits for the pipes' ends to see the parent die
            os.dup2(null, 1)
            signal.alarm(120)  # should the test not kill it: gone in 2 minutes
            while True:
                signal.pause()
        say("held", lease.token)
        await asyncio.Event().wait()
    if role == "lease":
        lease = await kv.lease(bucket, key, float(arg))
        say("held", lease.token)
        while command := await line():
            try:
                await (lease.heartbeat() if command == "heartbeat" else lease.release())
            except klieo_shm.Conflict as exc:
                say("conflict", exc.expected, exc.current)
            else:
                say("ok")
        await bus.close()
        return
    say("ready")
    await line()
    if role == "count":
        conflicts = 0
        for _ in range(int(arg)):
            while True:
                entry = await kv.get(bucket, key)
                assert entry is not None
                try:
                    await kv.cas(bucket, key, b"%d" % (int(entry.value) + 1), entry.revision)
                    break
                except klieo_shm.Conflict:
                    conflicts += 1
        say("done", conflicts)
    elif role == "rewrite":
        for i in range(int(arg)):
            await kv.put(bucket, key, value_of(i))
        say("done")
    await bus.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
