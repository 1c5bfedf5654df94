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
"""

from __future__ import annotations

import asyncio
import sys

import klieo_shm


def value_of(i: int) -> bytes:
    """The i-th value of a rewrite: its index, then a length and fill byte
    that both depend on i, so a torn or mixed value cannot pass as whole."""
    n = (i * 7919) % 6000
    return b"%08d|" % i + bytes([i % 251]) * n


def say(*words: object) -> None:
    print(*words, flush=True)


async def line() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


async def main(sock: str, role: str, bucket: str, key: str, arg: str) -> None:
    bus = await klieo_shm.connect(f"shm://{sock}")
    kv = bus.kv
    await kv.get(bucket, key)
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
