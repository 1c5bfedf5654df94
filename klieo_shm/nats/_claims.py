"""Job claims: the keep-alive that stands in for a per-claim TTL, and the
claim records that fence workers whose claim was taken over.

**Claim TTL.** JetStream has one ``ack_wait`` per consumer, not per claim,
so job consumers use a short one (URL option ``job_ack_wait``, default 1 s)
and the claiming client keeps each claim alive with ``+WPI`` (in progress)
until its own deadline (``lease_ttl`` from the claim or the last
heartbeat), always far enough that the server cannot redeliver before that
deadline. Past the deadline the client refuses ``ack``, ``nak``,
``dead_letter`` and ``heartbeat`` with ``Conflict`` and stops the
keep-alive; the server redelivers within ``job_ack_wait``. A worker that
dies stops the keep-alive too, so its job comes back within
``job_ack_wait``.

**Claim records.** JetStream acknowledges by stream sequence: an ack from a
worker whose delivery was already redelivered to another would be taken as
the new holder's. So every claim writes a record ``{"token", "state",
"until"}`` under ``escape_name(queue).<job id>`` in the KV bucket
``P_i_claims`` (the token is the delivery's consumer sequence, which grows
with every delivery), and every later step of the claim is a conditional
write on the revision the holder wrote last: a heartbeat rewrites it, a
``nak(delay)`` marks it ``delayed``, an ack or ``dead_letter`` deletes it.
When that write fails, someone else claimed the job since: ``Conflict``
with the new holder's token. ``stats`` reads the records to tell claimed
and delayed jobs from ready ones.

What NATS still cannot guarantee: between the fencing write and the ack
itself another delivery can start (only when a keep-alive was held up for
longer than ``job_ack_wait``); then that ack removes the job under its new
holder, whose own ack is a no-op — the job ran twice, nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Final, Literal

import nats.js.errors
from nats.aio.msg import Msg as NatsMsg
from nats.js import api
from nats.js.kv import KeyValue

from .._errors import Conflict
from ._connection import Connection
from ._errors import is_wrong_last, translated
from ._puller import nak_body

if TYPE_CHECKING:
    from ._jobs import JobMsg, NatsJobs

__all__ = ["Claim", "ClaimRecords"]

_ACK_TIMEOUT: Final = 5.0
_MARKER_TTL: Final = "60s"


class ClaimRecords:
    """The claim records of one bus's connection (see the module docstring)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def _kv(self) -> KeyValue:
        kv = await self._conn.bucket(self._conn.ns.claims_bucket, create=True)
        assert kv is not None
        return kv

    @staticmethod
    def _value(token: int, state: Literal["claimed", "delayed"], until: float) -> bytes:
        return json.dumps({"token": token, "state": state, "until": until}).encode()

    async def put(self, key: str, token: int, until: float) -> int:
        """Record a new claim; returns the record's revision."""
        kv = await self._kv()
        with translated("claim", url=self._conn.url):
            return await kv.put(key, self._value(token, "claimed", until), validate_keys=False)

    async def replace(
        self, key: str, last: int, token: int, state: Literal["claimed", "delayed"], until: float
    ) -> int | None:
        """Rewrite the record if its revision is still ``last``; else ``None``."""
        kv = await self._kv()
        value = self._value(token, state, until)
        try:
            with translated("claim", url=self._conn.url):
                return await kv.update(key, value, last=last, validate_keys=False)
        except Exception as exc:
            if is_wrong_last(exc):
                return None
            raise

    async def remove(self, key: str, last: int) -> bool:
        """Delete the record if its revision is still ``last``.

        The delete is a purge marker that the server itself removes after a
        minute (``Nats-TTL``), so finished jobs leave nothing behind."""
        await self._kv()
        headers = {
            api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last),
            "KV-Operation": "PURGE",
            api.Header.ROLLUP.value: "sub",
            "Nats-TTL": _MARKER_TTL,
        }
        subject = f"$KV.{self._conn.ns.claims_bucket}.{key}"
        try:
            with translated("claim", url=self._conn.url):
                await self._conn.js.publish(subject, b"", headers=headers)
        except Exception as exc:
            if is_wrong_last(exc):
                return False
            raise
        return True

    async def live_token(self, key: str) -> int | None:
        """The token of the claim that holds the job now, if any."""
        kv = await self._kv()
        with translated("claim", url=self._conn.url):
            try:
                entry = await kv.get(key, validate_keys=False)
            except nats.js.errors.KeyNotFoundError:
                return None
        record = _decode(entry.value)
        if record is None or record[1] != "claimed" or record[2] <= time.time():
            return None
        return record[0]

    async def count(self, pattern: str) -> tuple[int, int]:
        """(claimed, delayed) among the live records whose key matches ``pattern``.

        Walks the bucket's stream message by message (``next_by_subj``): a
        KV watch could report "no more current values" before the last of
        them arrived."""
        await self._kv()
        bucket = self._conn.ns.claims_bucket
        stream, subject = f"KV_{bucket}", f"$KV.{bucket}.{pattern}"
        claimed = delayed = 0
        now = time.time()
        seq = 1
        with translated("stats", url=self._conn.url):
            while True:
                try:
                    msg = await self._conn.js.get_msg(stream, seq=seq, subject=subject, next=True)
                except nats.js.errors.NotFoundError:
                    return claimed, delayed
                seq = (msg.seq or seq) + 1
                record = None if (msg.headers or {}).get("KV-Operation") else _decode(msg.data)
                if record is None or record[2] <= now:
                    continue
                if record[1] == "claimed":
                    claimed += 1
                else:
                    delayed += 1


def _decode(value: bytes | None) -> tuple[int, str, float] | None:
    try:
        record = json.loads(value or b"")
        return int(record["token"]), str(record["state"]), float(record["until"])
    except (ValueError, KeyError, TypeError):
        return None


class Claim:
    """A :class:`~klieo_shm.ClaimedJob` impl (see the module docstring)."""

    def __init__(
        self,
        owner: NatsJobs,
        queue: str,
        msg: NatsMsg,
        arrived: float,
        job: JobMsg,
        lease_ttl: float,
        key: str,
        revision: int,
    ) -> None:
        self._owner = owner
        self._conn = owner.conn
        self._records = owner.records
        self._queue = queue
        self._msg = msg
        self._job = job
        self._ttl = lease_ttl
        self._key = key
        self._revision = revision
        self.token = msg.metadata.sequence.consumer
        self.attempt = msg.metadata.num_delivered
        self._deadline = time.monotonic() + lease_ttl
        self._last_signal = arrived  # the server's ack_wait clock started (a bit) before
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._keep_alive()
        )

    async def _keep_alive(self) -> None:
        ack_wait = self._conn.options.job_ack_wait
        while True:
            self._changed.clear()  # before reading the deadline: a heartbeat is kept
            now = time.monotonic()
            server_expiry = self._last_signal + ack_wait
            wake_at = (
                self._deadline if server_expiry >= self._deadline else server_expiry - ack_wait / 3
            )
            if wake_at > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wake_at - now)
                continue
            if now >= self._deadline:
                return  # expired: the server redelivers within ack_wait
            with contextlib.suppress(Exception):
                await self._conn.nc.publish(self._msg.reply, b"+WPI")
            self._last_signal = now

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._owner.claims.discard(self)

    async def _lost(self, operation: str) -> Conflict:
        self._stop()
        current = await self._records.live_token(self._key)
        return Conflict(
            f"{operation} of job {self._job.id!r} with token {self.token}: the claim expired"
            + ("" if current is None else f" and was taken over (token {current})"),
            expected=self.token,
            current=current,
        )

    async def _check(self, operation: str) -> None:
        self._conn.check_open()
        if time.monotonic() > self._deadline:
            raise await self._lost(operation)

    async def _finish(self, operation: str) -> None:
        """Fence: delete our record, or learn that the claim was taken over."""
        await self._check(operation)
        if not await self._records.remove(self._key, self._revision):
            raise await self._lost(operation)
        self._stop()

    async def _send(self, body: bytes) -> None:
        with translated("job acknowledgement", url=self._conn.url, timeout=_ACK_TIMEOUT):
            await self._conn.nc.request(self._msg.reply, body, timeout=_ACK_TIMEOUT)

    async def heartbeat(self) -> None:
        await self._check("heartbeat")
        until = time.time() + self._ttl
        revision = await self._records.replace(
            self._key, self._revision, self.token, "claimed", until
        )
        if revision is None:
            raise await self._lost("heartbeat")
        self._revision = revision
        self._deadline = time.monotonic() + self._ttl
        self._changed.set()

    async def ack(self) -> None:
        await self._finish("ack")
        await self._send(b"+ACK")

    async def nak(self, delay: float) -> None:
        if self.attempt >= self._job.max_attempts:
            await self._finish("nak")
            reason = f"max attempts ({self._job.max_attempts}) reached after nak"
            await self._owner.bury(self._queue, self._job, self.attempt, reason)
            await self._send(b"+ACK")
            return
        if delay > 0:
            await self._check("nak")
            revision = await self._records.replace(
                self._key, self._revision, self.token, "delayed", time.time() + delay
            )
            if revision is None:
                raise await self._lost("nak")
            self._stop()
        else:
            await self._finish("nak")
        await self._send(nak_body(delay))

    async def dead_letter(self, reason: str) -> None:
        await self._finish("dead_letter")
        await self._owner.bury(self._queue, self._job, self.attempt, reason)
        await self._send(b"+ACK")

    async def abandon(self) -> None:
        """The bus closes: hand the job back at once (counts as an attempt),
        or dead-letter it if that was its last attempt."""
        self._stop()
        with contextlib.suppress(Exception):
            await self._records.remove(self._key, self._revision)
        with contextlib.suppress(Exception):
            if self.attempt >= self._job.max_attempts:
                reason = f"max attempts ({self._job.max_attempts}) reached after worker gone"
                await self._owner.bury(self._queue, self._job, self.attempt, reason)
                await self._send(b"+ACK")
            else:
                await self._conn.nc.publish(self._msg.reply, b"-NAK")
