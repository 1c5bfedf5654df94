"""The bus commands of ``klieo-shm``: pub, sub, req, kv, jobs, status.

Each takes the parsed arguments and a connected async bus, prints its
result (text, or JSON with ``--json``) and returns the exit status.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

from .._bus import Bus
from .._errors import Timeout
from .._values import Job

__all__ = ["COMMANDS"]


def _data(arg: str) -> bytes:
    """A payload argument: the text itself, or ``-`` for standard input."""
    return sys.stdin.buffer.read() if arg == "-" else arg.encode()


def _show(payload: bytes) -> str:
    try:
        return payload.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(payload).decode()


def _emit(ns: argparse.Namespace, obj: Any, text: str) -> None:
    print(json.dumps(obj, sort_keys=True) if ns.json else text, flush=True)


async def pub(ns: argparse.Namespace, bus: Bus) -> int:
    headers = dict(h.split("=", 1) for h in ns.header or [])
    await bus.pubsub.publish(ns.subject, _data(ns.data), headers or None)
    _emit(ns, {"published": ns.subject}, f"published on {ns.subject}")
    return 0


async def sub(ns: argparse.Namespace, bus: Bus) -> int:
    stream = await bus.pubsub.subscribe(ns.subject, ns.durable)
    try:
        got = 0
        while ns.count is None or got < ns.count:
            try:
                msg = await stream.next(timeout=ns.timeout)
            except Timeout:
                break  # idle for --timeout: done
            if msg is None:
                break
            got += 1
            obj = {
                "subject": msg.subject,
                "seq": msg.seq,
                "delivery_count": msg.delivery_count,
                "headers": msg.headers,
                "payload": _show(msg.payload),
            }
            _emit(ns, obj, f"[{msg.seq}] {msg.subject}: {_show(msg.payload)}")
            if not ns.no_ack:
                await msg.ack()
    finally:
        await stream.close()
    return 0


async def durable(ns: argparse.Namespace, bus: Bus) -> int:
    await bus.pubsub.delete_durable(ns.name)
    _emit(ns, {"deleted": ns.name}, f"deleted durable {ns.name}")
    return 0


async def req(ns: argparse.Namespace, bus: Bus) -> int:
    reply = await bus.requests.request(ns.subject, _data(ns.data), ns.timeout)
    _emit(ns, {"reply": _show(reply)}, _show(reply))
    return 0


async def kv(ns: argparse.Namespace, bus: Bus) -> int:
    op = ns.kv_op
    if op == "get":
        entry = await bus.kv.get(ns.bucket, ns.key)
        if entry is None:
            print(f"klieo-shm kv get: {ns.bucket}/{ns.key} not found", file=sys.stderr)
            return 1
        obj = {"value": _show(entry.value), "revision": entry.revision}
        _emit(ns, obj, f"{_show(entry.value)}  (revision {entry.revision})")
    elif op == "put":
        rev = await bus.kv.put(ns.bucket, ns.key, _data(ns.value))
        _emit(ns, {"revision": rev}, f"revision {rev}")
    elif op == "del":
        await bus.kv.delete(ns.bucket, ns.key)
        _emit(ns, {"deleted": ns.key}, f"deleted {ns.bucket}/{ns.key}")
    elif op == "keys":
        keys = await bus.kv.keys(ns.bucket)
        _emit(ns, keys, "\n".join(keys))
    else:  # watch
        watch = await bus.kv.watch(ns.bucket, ns.pattern)
        try:
            got = 0
            while ns.count is None or got < ns.count:
                try:
                    ch = await watch.next(timeout=ns.timeout)
                except Timeout:
                    break
                if ch is None:
                    break
                got += 1
                obj = {"key": ch.key, "op": ch.operation, "revision": ch.revision}
                obj["value"] = _show(ch.value)
                _emit(ns, obj, f"[{ch.revision}] {ch.operation} {ch.key}: {_show(ch.value)}")
        finally:
            await watch.close()
    return 0


async def jobs(ns: argparse.Namespace, bus: Bus) -> int:
    op = ns.jobs_op
    if op == "enqueue":
        job = Job(_data(ns.data), dedup_key=ns.dedup_key, max_attempts=ns.max_attempts)
        job_id = await bus.jobs.enqueue(ns.queue, job)
        _emit(ns, {"id": job_id}, job_id)
    elif op == "ls":
        s = await bus.jobs.stats(ns.queue)
        obj = {"queue": s.queue, "ready": s.ready, "delayed": s.delayed}
        obj |= {"claimed": s.claimed, "dead": s.dead}
        text = f"{s.queue}: {s.ready} ready, {s.delayed} delayed, {s.claimed} claimed, "
        _emit(ns, obj, text + f"{s.dead} dead letters")
    elif op == "dlq":
        dead = await bus.jobs.dead_letters(ns.queue)
        rows = [
            {"id": d.id, "attempts": d.attempts, "reason": d.reason, "payload": _show(d.payload)}
            for d in dead
        ]
        lines = [f"{d['id']}  attempts={d['attempts']}  {d['reason']}" for d in rows]
        _emit(ns, rows, "\n".join(lines) or "(no dead letters)")
    elif op == "requeue":
        for job_id in ns.ids:
            await bus.jobs.requeue(ns.queue, job_id)
        _emit(ns, {"requeued": ns.ids}, f"requeued {len(ns.ids)}")
    else:  # purge
        dead = await bus.jobs.dead_letters(ns.queue)
        for d in dead:
            await bus.jobs.discard(ns.queue, d.id)
        _emit(ns, {"discarded": len(dead)}, f"discarded {len(dead)} dead letters")
    return 0


COMMANDS = {"pub": pub, "sub": sub, "durable": durable, "req": req, "kv": kv, "jobs": jobs}
