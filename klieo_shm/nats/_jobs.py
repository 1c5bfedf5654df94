"""JobQueue on a JetStream work-queue stream.

- Queue ``q``'s jobs are messages on ``P.jobs.q`` in the work-queue stream
  ``P_jobs`` (headers ``Klieo-Job-Id``, ``Klieo-Max-Attempts``,
  ``Klieo-Dedup-Key``); its workers share the pull consumer
  ``escape_name(q)``. ``claim`` pulls one message, waiting about a second.
  ``claim_many`` claims one job as ``claim`` does, then the rest of the
  batch from one ``no_wait`` pull; ``ack_many`` acks each job as its
  ``ack`` does.
- ``attempt`` is the delivery count; the claim's fencing ``token`` is the
  delivery's consumer sequence, which grows with every delivery.
- Claims (their TTL, kept alive by the client under a short server-side
  ``ack_wait``, and the claim records that fence a worker whose claim was
  taken over) are described in ``_claims``.
- ``max_attempts`` is per job, so it is checked by the client: a ``nak`` of
  the last attempt dead-letters the job, and a job delivered past its
  ``max_attempts`` (its last claim expired) is dead-lettered by the worker
  that receives it.
- Dead letters are messages ``P.dl.q.<id>`` in the stream ``P_dlq``
  (payload, ``Klieo-Attempts``, ``Klieo-Reason``), also published on the
  pubsub subject ``dlq.q``. Dedup records are the KV bucket ``dedup.q``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from typing import Final

import nats.js.errors
from nats.aio.msg import Msg as NatsMsg
from nats.js import api

from .._errors import Conflict, InvalidArgument, NotFound
from .._handles import ClaimedJob, claim_impl
from .._interfaces import JobQueue
from .._names import validate_bucket, validate_queue, validate_worker_id
from .._values import (
    DEFAULT_MAX_ATTEMPTS,
    DeadLetter,
    Job,
    JobId,
    QueueStats,
    check_batch,
    check_duration,
)
from ._claims import Claim, ClaimRecords
from ._connection import Connection
from ._errors import translated
from ._kv import NatsKv
from ._puller import Puller

__all__ = ["NatsJobs"]

CLAIM_WAIT: Final = 1.0
_READY_WAIT: Final = 2.0
"""Bound on the wait for the server to end claim_many's no_wait pull (one round trip)."""
ID: Final = "Klieo-Job-Id"
MAX_ATTEMPTS: Final = "Klieo-Max-Attempts"
DEDUP_KEY: Final = "Klieo-Dedup-Key"
ATTEMPTS: Final = "Klieo-Attempts"
REASON: Final = "Klieo-Reason"
_JOB_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,255}")
_ACK_TIMEOUT: Final = 5.0


def _accepted(tasks: list[asyncio.Task[ClaimedJob | None]]) -> list[ClaimedJob]:
    """The claims the finished ``tasks`` made (their errors are dropped: such
    a job is left to the server, which redelivers it)."""
    out = []
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is None:
            job = task.result()
            if job is not None:
                out.append(job)
    return out


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


class JobMsg:
    """What a job message's headers say about it."""

    __slots__ = ("dedup_key", "id", "max_attempts", "payload")

    def __init__(self, msg: NatsMsg) -> None:
        headers = msg.headers or {}
        given = headers.get(ID, "")
        self.id: JobId = given if _JOB_ID.fullmatch(given) else str(msg.metadata.sequence.stream)
        self.payload = bytes(msg.data)
        self.dedup_key = headers.get(DEDUP_KEY)
        try:
            self.max_attempts = int(headers.get(MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS))
        except ValueError:
            self.max_attempts = DEFAULT_MAX_ATTEMPTS


def _job_headers(job_id: str, max_attempts: int | None, dedup_key: str | None) -> dict[str, str]:
    headers = {ID: job_id}
    if max_attempts is not None:
        headers[MAX_ATTEMPTS] = str(max_attempts)
    if dedup_key is not None:
        headers[DEDUP_KEY] = dedup_key
    return headers


class NatsJobs(JobQueue):
    """:class:`~klieo_shm.JobQueue` over JetStream (see the module docstring)."""

    def __init__(self, conn: Connection, kv: NatsKv) -> None:
        self.conn = conn
        self._kv = kv
        self._pullers: dict[str, Puller] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.claims: set[Claim] = set()
        self.records = ClaimRecords(conn)

    # -- enqueue ------------------------------------------------------------
    async def enqueue(self, queue: str, job: Job) -> JobId:
        validate_queue(queue)
        if not isinstance(job, Job):
            raise InvalidArgument("job", job, "must be a klieo_shm.Job")
        self.conn.check_open()
        self.conn.check_payload(job.payload)
        job_id = uuid.uuid4().hex
        dedup_bucket = f"dedup.{queue}"
        if job.dedup_key is not None:
            validate_bucket(dedup_bucket)
            for _ in range(10):
                try:
                    await self._kv.cas(dedup_bucket, job.dedup_key, job_id.encode(), None)
                    break
                except Conflict:
                    entry = await self._kv.get(dedup_bucket, job.dedup_key)
                    if entry is not None:
                        return entry.value.decode()
        try:
            await self._publish(
                queue, job.payload, _job_headers(job_id, job.max_attempts, job.dedup_key)
            )
        except BaseException:
            if job.dedup_key is not None:
                with contextlib.suppress(Exception):
                    await self._kv.delete(dedup_bucket, job.dedup_key)
            raise
        return job_id

    async def _publish(self, queue: str, payload: bytes, headers: dict[str, str]) -> None:
        await self.conn.jobs_stream()
        with translated("enqueue", url=self.conn.url):
            await self.conn.js.publish(self.conn.ns.job_subject(queue), payload, headers=headers)

    # -- claim --------------------------------------------------------------
    async def _puller(self, queue: str) -> Puller:
        puller = self._pullers.get(queue)
        if puller is not None and not puller.gone:
            return puller
        lock = self._locks.setdefault(queue, asyncio.Lock())
        async with lock:
            puller = self._pullers.get(queue)
            if puller is not None and not puller.gone:
                return puller
            stream = await self.conn.jobs_stream()
            consumer = self.conn.ns.job_consumer(queue)
            with translated("claim", url=self.conn.url):
                await self.conn.js.add_consumer(
                    stream,
                    api.ConsumerConfig(
                        durable_name=consumer,
                        filter_subject=self.conn.ns.job_subject(queue),
                        deliver_policy=api.DeliverPolicy.ALL,
                        ack_policy=api.AckPolicy.EXPLICIT,
                        ack_wait=self.conn.options.job_ack_wait,
                        max_deliver=-1,
                        max_ack_pending=-1,
                    ),
                )
                puller = await self.conn.puller(stream, consumer)
            self._pullers[queue] = puller
            return puller

    async def claim(self, queue: str, worker_id: str, lease_ttl: float) -> ClaimedJob | None:
        validate_queue(queue)
        validate_worker_id(worker_id)
        lease_ttl = check_duration("lease_ttl", lease_ttl, positive=True)
        self.conn.check_open()
        puller = await self._puller(queue)
        deadline = time.monotonic() + CLAIM_WAIT
        while True:
            got = await puller.next(max(deadline - time.monotonic(), 0.0))
            if got is None:
                return None
            claimed = await self._accept(queue, *got, lease_ttl)
            if claimed is not None:
                return claimed

    async def claim_many(
        self, queue: str, worker_id: str, lease_ttl: float, max_jobs: int
    ) -> list[ClaimedJob]:
        """A ``claim`` (waiting as it does), then up to ``max_jobs - 1`` more
        from one ``no_wait`` pull (what the consumer has now), their claim
        records written concurrently. A job whose record could not be
        written is left to the server, which redelivers it after
        ``job_ack_wait``; the others are returned. Cancelled, the claims
        made so far are handed back (on NATS each counts as an attempt)."""
        check_batch(max_jobs)
        first = await self.claim(queue, worker_id, lease_ttl)
        if first is None or max_jobs == 1:
            return [] if first is None else [first]
        claimed = [first]
        tasks: list[asyncio.Task[ClaimedJob | None]] = []
        try:
            puller = await self._puller(queue)
            ready = await puller.take_ready(max_jobs - 1, _READY_WAIT)
            tasks = [
                asyncio.ensure_future(self._accept(queue, arrived, msg, float(lease_ttl)))
                for arrived, msg in ready
            ]
            if tasks:
                await asyncio.wait(tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            claimed += _accepted(tasks)
            for job in claimed:
                impl = claim_impl(job)
                if isinstance(impl, Claim):
                    await impl.abandon()
            raise
        return claimed + _accepted(tasks)

    async def _accept(
        self, queue: str, arrived: float, msg: NatsMsg, lease_ttl: float
    ) -> ClaimedJob | None:
        """``msg`` as a claim of ``lease_ttl`` seconds, or ``None`` when it is
        not to be handed out: stale, or past its max attempts (then buried)."""
        if time.monotonic() - arrived > self.conn.options.job_ack_wait / 2:
            return None  # left over from an abandoned pull: the server hands it on
        job = JobMsg(msg)
        attempt = msg.metadata.num_delivered
        if attempt > job.max_attempts:
            reason = f"max attempts ({job.max_attempts}) reached after lease expired"
            await self.bury(queue, job, attempt - 1, reason)
            with translated("claim", url=self.conn.url, timeout=_ACK_TIMEOUT):
                await self.conn.nc.request(msg.reply, b"+ACK", timeout=_ACK_TIMEOUT)
            return None
        key = self.conn.ns.claim_key(queue, job.id)
        token = msg.metadata.sequence.consumer
        revision = await self.records.put(key, token, time.time() + lease_ttl)
        impl = Claim(self, queue, msg, arrived, job, lease_ttl, key, revision)
        self.claims.add(impl)
        return ClaimedJob(queue, job.id, job.payload, attempt, impl.token, impl, job.dedup_key)

    # -- dead letters -------------------------------------------------------
    async def bury(self, queue: str, job: JobMsg, attempts: int, reason: str) -> None:
        """Store ``job`` as a dead letter and announce it on ``dlq.<queue>``."""
        await self.conn.dlq_stream()
        headers = _job_headers(job.id, None, job.dedup_key)
        headers[MAX_ATTEMPTS] = str(job.max_attempts)
        headers[ATTEMPTS] = str(attempts)
        headers[REASON] = json.dumps(reason)
        with translated("dead_letter", url=self.conn.url):
            await self.conn.js.publish(
                self.conn.ns.dead_letter_subject(queue, job.id), job.payload, headers=headers
            )
        await self.conn.pubsub_stream()
        announce = {"job-id": job.id, "queue": queue, "attempts": str(attempts)}
        announce["reason"] = _one_line(reason)  # the same headers as the other backends
        with translated("dead_letter", url=self.conn.url):
            await self.conn.js.publish(
                self.conn.ns.pubsub_subject(f"dlq.{queue}"), job.payload, headers=announce
            )

    def _dead_letter(self, queue: str, msg: api.RawStreamMsg) -> DeadLetter:
        headers = msg.headers or {}
        try:
            reason = json.loads(headers.get(REASON, '""'))
        except ValueError:
            reason = headers.get(REASON, "")
        return DeadLetter(
            id=headers.get(ID, ""),
            queue=queue,
            payload=bytes(msg.data or b""),
            attempts=int(headers.get(ATTEMPTS, "0")),
            reason=str(reason),
            dedup_key=headers.get(DEDUP_KEY),
        )

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        validate_queue(queue)
        self.conn.check_open()
        stream = await self.conn.dlq_stream()
        found: list[DeadLetter] = []
        seq = 1
        with translated("dead_letters", url=self.conn.url):
            while True:
                try:
                    msg = await self.conn.js.get_msg(
                        stream, seq=seq, subject=self.conn.ns.dead_letter_filter(queue), next=True
                    )
                except nats.js.errors.NotFoundError:
                    return found
                found.append(self._dead_letter(queue, msg))
                seq = (msg.seq or seq) + 1

    async def _find(self, queue: str, job_id: JobId) -> tuple[str, api.RawStreamMsg]:
        validate_queue(queue)
        self.conn.check_open()
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise NotFound("dead letter", str(job_id))
        stream = await self.conn.dlq_stream()
        with translated("dead letter lookup", url=self.conn.url):
            try:
                msg = await self.conn.js.get_msg(
                    stream, subject=self.conn.ns.dead_letter_subject(queue, job_id)
                )
            except nats.js.errors.NotFoundError as exc:
                raise NotFound("dead letter", job_id) from exc
        return stream, msg

    async def _remove(self, stream: str, msg: api.RawStreamMsg, job_id: str) -> None:
        with translated("dead letter removal", url=self.conn.url):
            try:
                await self.conn.js.delete_msg(stream, msg.seq or 0)
            except nats.js.errors.NotFoundError as exc:
                raise NotFound("dead letter", job_id) from exc

    async def requeue(self, queue: str, job_id: JobId) -> None:
        stream, msg = await self._find(queue, job_id)
        letter = self._dead_letter(queue, msg)
        headers = msg.headers or {}
        max_attempts = headers.get(MAX_ATTEMPTS)
        await self._publish(
            queue,
            letter.payload,
            _job_headers(job_id, int(max_attempts) if max_attempts else None, letter.dedup_key),
        )
        await self._remove(stream, msg, job_id)

    async def discard(self, queue: str, job_id: JobId) -> None:
        stream, msg = await self._find(queue, job_id)
        await self._remove(stream, msg, job_id)

    # -- stats --------------------------------------------------------------
    async def stats(self, queue: str) -> QueueStats:
        validate_queue(queue)
        self.conn.check_open()
        jobs = await self.conn.jobs_stream()
        dlq = await self.conn.dlq_stream()
        subject = self.conn.ns.job_subject(queue)
        with translated("stats", url=self.conn.url):
            info = await self.conn.js.stream_info(jobs, subjects_filter=subject)
            total = (info.state.subjects or {}).get(subject, 0)
            dead_info = await self.conn.js.stream_info(
                dlq, subjects_filter=self.conn.ns.dead_letter_filter(queue)
            )
            dead = len(dead_info.state.subjects or {})
            try:
                consumer = await self.conn.js.consumer_info(jobs, self.conn.ns.job_consumer(queue))
            except nats.js.errors.NotFoundError:
                consumer = None
        claimed, delayed = await self.records.count(self.conn.ns.claim_keys(queue))
        claimed, delayed = min(claimed, total), min(delayed, max(total - claimed, 0))
        extra = {}
        if consumer is not None:
            extra["nats_num_ack_pending"] = consumer.num_ack_pending or 0
            extra["nats_num_redelivered"] = consumer.num_redelivered or 0
        return QueueStats(
            queue=queue,
            ready=total - claimed - delayed,
            delayed=delayed,
            claimed=claimed,
            dead=dead,
            extra=extra,
        )

    # -- lifetime -----------------------------------------------------------
    async def shutdown(self) -> None:
        for claim in list(self.claims):
            await claim.abandon()
        pullers, self._pullers = list(self._pullers.values()), {}
        for puller in pullers:
            for msg in await puller.close():
                with contextlib.suppress(Exception):
                    await self.conn.nc.publish(msg.reply, b"-NAK")
