"""The example agent: what each worker process runs for one task.

A task is JSON ``{"id": ..., "topic": ..., "flaky": bool}``. The agent
"thinks" for a few milliseconds, writes its result to the KV bucket
``pool-<run>.results``, bumps the shared counter ``pool-<run>.progress/done``
with a get + cas retry loop and announces the result on ``pool.<run>.done``.
A flaky task fails its first attempt, to show retries.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import klieo_shm
from klieo_shm import sync

_bus: sync.Bus | None = None


def _connect() -> sync.Bus:
    global _bus
    if _bus is None:
        _bus = sync.connect(os.environ.get("KLIEO_BUS_URL"))
    return _bus


def add_one(kv: sync.KvStore, bucket: str, key: str) -> int:
    """Increment a decimal counter stored at ``bucket/key``; returns the new value."""
    while True:
        entry = kv.get(bucket, key)
        value = int(entry.value) + 1 if entry else 1
        try:
            kv.cas(bucket, key, str(value).encode(), entry.revision if entry else None)
            return value
        except klieo_shm.Conflict:
            continue


def handle(payload: bytes) -> None:
    """Work one task: think, store the answer, count it."""
    task = json.loads(payload)
    bus = _connect()
    prefix = f"pool-{task['run']}"
    attempts = add_one(bus.kv, f"{prefix}.attempts", f"task-{task['id']}")
    if task.get("flaky") and attempts == 1:
        raise RuntimeError(f"task {task['id']}: flaky tool call failed, will retry")
    time.sleep(0.002 + (task["id"] % 5) / 1000)
    digest = hashlib.sha256(task["topic"].encode()).hexdigest()[:16]
    answer = {"id": task["id"], "summary": f"{task['topic']} -> {digest}", "pid": os.getpid()}
    bus.kv.put(f"{prefix}.results", f"task-{task['id']}", json.dumps(answer).encode())
    add_one(bus.kv, f"{prefix}.progress", "done")
    bus.pubsub.publish(f"pool.{task['run']}.done", json.dumps(answer).encode())
