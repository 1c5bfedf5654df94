"""``klieo-shm``: each command against a real broker (the pytest plugin's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from klieo_shm import Job, sync


def cli(url: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "klieo_shm.cli", "--url", url, *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_json(url: str, *args: str) -> Any:
    done = cli(url, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_kv_put_get_keys_and_del(klieo_url: str, klieo_names: str) -> None:
    b = f"{klieo_names}.cfg"
    assert cli_json(klieo_url, "kv", "put", b, "model", "small") == {"revision": 1}
    assert cli_json(klieo_url, "kv", "get", b, "model") == {"value": "small", "revision": 1}
    assert cli_json(klieo_url, "kv", "keys", b) == ["model"]
    cli_json(klieo_url, "kv", "del", b, "model")
    missing = cli(klieo_url, "kv", "get", b, "model")
    assert missing.returncode == 1
    assert "not found" in missing.stderr


def test_pub_then_sub_delivers_and_acks(klieo_url: str, klieo_names: str) -> None:
    subject = f"{klieo_names}.orders"
    with sync.connect(klieo_url) as bus:  # the durable must exist before the publish
        bus.pubsub.subscribe(subject, klieo_names).close()
    assert cli(klieo_url, "pub", "-H", "k=v", subject, "hello").returncode == 0
    out = cli(klieo_url, "--json", "sub", subject, "-d", klieo_names, "-n", "1", "--timeout", "30")
    assert out.returncode == 0, out.stderr
    msg = json.loads(out.stdout)
    assert (msg["payload"], msg["headers"], msg["delivery_count"]) == ("hello", {"k": "v"}, 1)
    again = cli(klieo_url, "sub", subject, "-d", klieo_names, "--timeout", "0.5")
    assert again.returncode == 0
    assert again.stdout == ""  # acked: not delivered again
    assert cli_json(klieo_url, "durable", "rm", klieo_names) == {"deleted": klieo_names}
    gone = cli(klieo_url, "durable", "rm", klieo_names)
    assert gone.returncode == 1
    assert "not found" in gone.stderr


def test_req_prints_the_reply(klieo_bus: sync.Bus, klieo_url: str, klieo_names: str) -> None:
    with klieo_bus.requests.serve(f"{klieo_names}.echo", lambda p: p.upper()):
        assert cli_json(klieo_url, "req", f"{klieo_names}.echo", "ping") == {"reply": "PING"}
    nobody = cli(klieo_url, "req", f"{klieo_names}.nobody", "x")
    assert nobody.returncode == 1
    assert "not found" in nobody.stderr


def test_jobs_enqueue_ls_dlq_requeue_purge(
    klieo_bus: sync.Bus, klieo_url: str, klieo_names: str
) -> None:
    q = f"{klieo_names}-q"
    job_id = cli_json(klieo_url, "jobs", "enqueue", q, "work", "--max-attempts", "1")["id"]
    assert cli_json(klieo_url, "jobs", "ls", q)["ready"] == 1
    claimed = klieo_bus.jobs.claim(q, "w", 30)
    assert claimed is not None
    assert claimed.id == job_id
    claimed.dead_letter("broken tool")
    (dead,) = cli_json(klieo_url, "jobs", "dlq", q)
    assert (dead["id"], dead["reason"], dead["payload"]) == (job_id, "broken tool", "work")
    cli_json(klieo_url, "jobs", "requeue", q, job_id)
    assert cli_json(klieo_url, "jobs", "ls", q)["ready"] == 1
    again = klieo_bus.jobs.claim(q, "w", 30)
    assert again is not None
    again.dead_letter("still broken")
    assert cli_json(klieo_url, "jobs", "purge", q) == {"discarded": 1}
    assert cli_json(klieo_url, "jobs", "dlq", q) == []


def test_status_shows_clients_consumers_queues_and_buckets(
    klieo_bus: sync.Bus, klieo_url: str, klieo_names: str
) -> None:
    stream = klieo_bus.pubsub.subscribe(f"{klieo_names}.>", klieo_names)
    klieo_bus.pubsub.publish(f"{klieo_names}.a", b"x")
    klieo_bus.jobs.enqueue(f"{klieo_names}-q", Job(b"j"))
    klieo_bus.kv.put(f"{klieo_names}.b", "k", b"v")
    try:
        first = stream.next(timeout=30)
        assert first is not None
        first.nak()
        again = stream.next(timeout=30)  # the broker has counted the redelivery
        assert again is not None
        assert again.delivery_count == 2
        stats = cli_json(klieo_url, "status")
        assert os.getpid() in {c["pid"] for c in stats["clients"]}
        consumer = stats["consumers"][klieo_names]
        assert consumer["members"] == 1
        assert (consumer["pending"], consumer["unacked"], consumer["redelivered"]) == (0, 1, 1)
        assert stats["queues"][f"{klieo_names}-q"]["ready"] == 1
        assert stats["kv_buckets"][f"{klieo_names}.b"] == 1
        assert stats["store_size"] > 0
        assert stats["journal_bytes"] > 0  # the plugin's broker keeps the default journal
        text = cli(klieo_url, "status")
        assert text.returncode == 0
        assert f"in {stats['state_dir']}" in text.stdout
        for word in ("clients", "durable consumers", klieo_names, "job queues", "memory"):
            assert word in text.stdout
    finally:
        stream.close()


def test_no_broker_gives_one_line_with_the_command_that_starts_one(tmp_path: Any) -> None:
    sock = tmp_path / "nobody.sock"
    done = cli(f"shm://{sock}", "status")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert f"klieo-shmd --socket {sock}" in done.stderr
