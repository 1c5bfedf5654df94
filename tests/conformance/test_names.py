"""Names: every operation refuses an invalid subject, pattern, durable,
bucket, key, queue or worker id with InvalidArgument naming the rule, and
does nothing."""

from __future__ import annotations

import pytest

import klieo_shm
from klieo_shm import Job

from .world import World

BAD_SUBJECTS = ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "a*", "a\tb", "a\x00b"]
BAD_PATTERNS = ["", "a..b", "a.>.b", "a>", "a*.b", "> .a", "a\nb"]
BAD_DURABLES = ["", "a.b", "a b", "a*", "a>", "ü"]
BAD_BUCKETS = ["", "a b", "a..b", "a.*", "a/b", ".a"]
BAD_KEYS = ["", ".a", "a.", "a..b", "a b", "a*", "a>", "ü"]
BAD_QUEUES = ["", "q q", "q..q", "q*", "q.>"]


def _ids(values: list[str]) -> list[str]:
    return [repr(v) for v in values]


def _check(error: klieo_shm.InvalidArgument, value: str) -> None:
    assert error.value == value
    assert error.rule
    assert error.rule in str(error)


@pytest.mark.parametrize("subject", BAD_SUBJECTS, ids=_ids(BAD_SUBJECTS))
async def test_publish_to_an_invalid_subject_raises_invalid_argument(world: World, subject):
    pubsub, *_ = await world.connect()

    with pytest.raises(klieo_shm.InvalidArgument) as caught:
        await pubsub.publish(subject, b"x")

    _check(caught.value, subject)


@pytest.mark.parametrize("pattern", BAD_PATTERNS, ids=_ids(BAD_PATTERNS))
async def test_subscribe_with_an_invalid_pattern_raises_invalid_argument(world: World, pattern):
    pubsub, *_ = await world.connect()

    with pytest.raises(klieo_shm.InvalidArgument) as caught:
        await pubsub.subscribe(pattern, world.name("d"))

    _check(caught.value, pattern)


@pytest.mark.parametrize("durable", BAD_DURABLES, ids=_ids(BAD_DURABLES))
async def test_subscribe_with_an_invalid_durable_raises_invalid_argument(world: World, durable):
    pubsub, *_ = await world.connect()

    with pytest.raises(klieo_shm.InvalidArgument) as caught:
        await pubsub.subscribe(world.subject("x"), durable)

    _check(caught.value, durable)


@pytest.mark.parametrize("durable", BAD_DURABLES, ids=_ids(BAD_DURABLES))
async def test_delete_durable_with_an_invalid_name_raises_invalid_argument(world: World, durable):
    pubsub, *_ = await world.connect()

    with pytest.raises(klieo_shm.InvalidArgument):
        await pubsub.delete_durable(durable)


@pytest.mark.parametrize("pattern", ["*", ">", "{uid}.*.*", "{uid}.a.*.c", "{uid}.>", "*.{uid}.>"])
async def test_subscribe_accepts_whole_token_wildcards(world: World, pattern):
    pubsub, *_ = await world.connect()
    durable = world.name("d")

    stream = await pubsub.subscribe(pattern.format(uid=world.uid), durable)

    await stream.close()
    await pubsub.delete_durable(durable)  # a bare '>' durable would keep everything


@pytest.mark.parametrize("subject", BAD_SUBJECTS, ids=_ids(BAD_SUBJECTS))
async def test_request_and_serve_with_an_invalid_subject_raise_invalid_argument(
    world: World, subject
):
    _, requests, *_ = await world.connect()

    with pytest.raises(klieo_shm.InvalidArgument):
        await requests.request(subject, b"x", timeout=1.0)
    with pytest.raises(klieo_shm.InvalidArgument) as caught:
        await requests.serve(subject, lambda p: p)

    _check(caught.value, subject)


KV_OPERATIONS = {
    "get": lambda kv, b, k: kv.get(b, k),
    "put": lambda kv, b, k: kv.put(b, k, b"v"),
    "cas": lambda kv, b, k: kv.cas(b, k, b"v", None),
    "delete": lambda kv, b, k: kv.delete(b, k),
    "lease": lambda kv, b, k: kv.lease(b, k, 30.0),
}


@pytest.mark.parametrize("operation", sorted(KV_OPERATIONS))
@pytest.mark.parametrize("bucket", BAD_BUCKETS, ids=_ids(BAD_BUCKETS))
async def test_kv_operation_with_an_invalid_bucket_raises_invalid_argument(
    world: World, operation, bucket
):
    *_, kv, _ = await world.connect()

    with pytest.raises(klieo_shm.InvalidArgument) as caught:
        await KV_OPERATIONS[operation](kv, bucket, "k")

    _check(caught.value, bucket)


@pytest.mark.parametrize("operation", sorted(KV_OPERATIONS))
@pytest.mark.parametrize("key", BAD_KEYS, ids=_ids(BAD_KEYS))
async def test_kv_operation_with_an_invalid_key_raises_invalid_argument(
    world: World, operation, key
):
    *_, kv, _ = await world.connect()
    bucket = world.name("b")

    with pytest.raises(klieo_shm.InvalidArgument) as caught:
        await KV_OPERATIONS[operation](kv, bucket, key)

    _check(caught.value, key)
    assert await kv.keys(bucket) == []


@pytest.mark.parametrize("bucket", BAD_BUCKETS, ids=_ids(BAD_BUCKETS))
async def test_keys_and_watch_with_an_invalid_bucket_raise_invalid_argument(world: World, bucket):
    *_, kv, _ = await world.connect()

    with pytest.raises(klieo_shm.InvalidArgument):
        await kv.keys(bucket)
    with pytest.raises(klieo_shm.InvalidArgument):
        await kv.watch(bucket)


@pytest.mark.parametrize("pattern", ["", "a..b", "a.>.b", "a*", "a b"])
async def test_watch_with_an_invalid_key_pattern_raises_invalid_argument(world: World, pattern):
    *_, kv, _ = await world.connect()

    with pytest.raises(klieo_shm.InvalidArgument) as caught:
        await kv.watch(world.name("b"), pattern)

    _check(caught.value, pattern)


JOB_OPERATIONS = {
    "enqueue": lambda jobs, q: jobs.enqueue(q, Job(b"x")),
    "claim": lambda jobs, q: jobs.claim(q, "w", 30.0),
    "dead_letters": lambda jobs, q: jobs.dead_letters(q),
    "requeue": lambda jobs, q: jobs.requeue(q, "id"),
    "discard": lambda jobs, q: jobs.discard(q, "id"),
    "stats": lambda jobs, q: jobs.stats(q),
}


@pytest.mark.parametrize("operation", sorted(JOB_OPERATIONS))
@pytest.mark.parametrize("queue", BAD_QUEUES, ids=_ids(BAD_QUEUES))
async def test_job_operation_with_an_invalid_queue_raises_invalid_argument(
    world: World, operation, queue
):
    *_, jobs = await world.connect()

    with pytest.raises(klieo_shm.InvalidArgument) as caught:
        await JOB_OPERATIONS[operation](jobs, queue)

    _check(caught.value, queue)


@pytest.mark.parametrize("worker_id", ["", "w\n1", "w\x7f"], ids=["empty", "newline", "del"])
async def test_claim_with_an_invalid_worker_id_raises_invalid_argument(world: World, worker_id):
    *_, jobs = await world.connect()
    queue = world.name("q")
    await jobs.enqueue(queue, Job(b"x"))

    with pytest.raises(klieo_shm.InvalidArgument):
        await jobs.claim(queue, worker_id, 30.0)

    assert (await jobs.stats(queue)).ready == 1


@pytest.mark.parametrize(
    "headers",
    [{"k": 1}, {1: "v"}, ["k", "v"]],
    ids=["int-value", "int-key", "not-a-dict"],
)
async def test_publish_with_invalid_headers_raises_invalid_argument(world: World, headers):
    pubsub, *_ = await world.connect()

    with pytest.raises(klieo_shm.InvalidArgument):
        await pubsub.publish(world.subject("x"), b"x", headers)


@pytest.mark.parametrize("payload", ["text", 42, None], ids=["str", "int", "none"])
async def test_publish_of_a_non_bytes_payload_raises_invalid_argument(world: World, payload):
    pubsub, *_ = await world.connect()

    with pytest.raises(klieo_shm.InvalidArgument):
        await pubsub.publish(world.subject("x"), payload)


@pytest.mark.parametrize("ttl", [0, -1.0, float("nan")], ids=["zero", "negative", "nan"])
async def test_lease_and_claim_refuse_a_non_positive_ttl(world: World, ttl):
    *_, kv, jobs = await world.connect()

    with pytest.raises(klieo_shm.InvalidArgument):
        await kv.lease(world.name("b"), "k", ttl)
    with pytest.raises(klieo_shm.InvalidArgument):
        await jobs.claim(world.name("q"), "w", ttl)
