"""A worker process for the cross-process tests.

python shm_worker.py SOCKET consume DURABLE SUBJECT COUNT
    subscribe, print "ready", then ack COUNT messages printing
    "acked <seq> <sha256 of payload>" for each, then exit (COUNT 0: exit at once)
python shm_worker.py SOCKET hold DURABLE SUBJECT COUNT
    subscribe, print "ready", receive COUNT messages without acking,
    print "held <seqs...>", then wait to be killed
python shm_worker.py SOCKET serve SUBJECT MODE
    serve SUBJECT (MODE echo | raise | hang), print "ready"; in hang mode
    print "got" when a request arrives and never answer
python shm_worker.py SOCKET serve-fork SUBJECT
    serve SUBJECT (echo), fork a child that prints "child <pid>" and waits
    for a signal (it never touches the bus), then print "ready"
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys

import klieo_shm


def say(*words: object) -> None:
    """One line in one write: a forked child's lines never split the parent's."""
    os.write(1, (" ".join(map(str, words)) + "\n").encode())


async def main(sock: str, role: str, *args: str) -> None:
    bus = await klieo_shm.connect(f"shm://{sock}")
    if role in ("consume", "hold"):
        durable, subject, count = args[0], args[1], int(args[2])
        stream = await bus.pubsub.subscribe(subject, durable)
        say("ready")
        held = []
        for _ in range(count):
            msg = await stream.next()
            assert msg is not None
            if role == "consume":
                await msg.ack()
                say("acked", msg.seq, hashlib.sha256(msg.payload).hexdigest())
            else:
                held.append(msg.seq)
        if role == "hold":
            say("held", *held)
            await asyncio.Event().wait()
    elif role == "serve-fork":
        await bus.requests.serve(args[0], lambda payload: payload)
        if os.fork() == 0:  # the child holds copies of every descriptor
            say("child", os.getpid())
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)  # the test waits for the pipe's end to see the parent die
            signal.alarm(120)  # should the test not kill it: gone in 2 minutes
            while True:
                signal.pause()
        say("ready")
        await asyncio.Event().wait()
    elif role == "serve":
        subject, mode = args
        stop = asyncio.Event()

        async def handler(payload: bytes) -> bytes:
            if mode == "raise":
                raise ValueError("boom from handler")
            if mode == "hang":
                say("got")
                await stop.wait()
            return payload

        await bus.requests.serve(subject, handler)
        say("ready")
        await stop.wait()
    await bus.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
