"""Leases in a KV bucket of their own, with compare-and-set heartbeats.

A lease on (``b``, ``k``) is the key ``escape_name(b).k`` of the bucket
``P_i_lease`` — never the key itself, so a lease does not touch the key's
value nor use up revisions of ``b``. Its value is a JSON record
``{"token", "expires", "holder"}``:

- **grant**: read the key's last message (a tombstone or a record whose
  ``expires`` is past counts as free) and write a record with
  ``Nats-Expected-Last-Subject-Sequence`` = what was read; a race lost is a
  ``Conflict``. The **fencing token** is the revision of the granting
  write: the lease bucket's sequence, which only grows, so every grant of a
  key gets a larger token than the one before, even after records expired
  and vanished.
- **heartbeat**: the same conditional write on the holder's last revision,
  with a new ``expires``; **release**: a conditional delete marker.
- Expiry is judged by wall-clock ``expires`` (one host: one clock; across
  hosts the clocks must agree within the TTLs used). Records also carry a
  per-message TTL (``Nats-TTL``, whole seconds, nats-server 2.11+) of
  ``ceil(ttl) + 1`` s, so a dead holder's record is removed by the server.
- Closing the bus releases its leases at once. A holder that dies without
  closing keeps its lease until the TTL runs out: NATS cannot tell that a
  client process died.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import uuid
from typing import Final

import nats.js.errors
from nats.js import api

from .._errors import Conflict
from .._handles import Lease
from .._values import check_duration
from ._connection import Connection
from ._errors import is_wrong_last, translated

__all__ = ["Leases"]

_KV_OPERATION: Final = "KV-Operation"
_RETRIES: Final = 10


class _Slot:
    """The lease key's last message: its revision and record (``None`` if free)."""

    __slots__ = ("record", "revision")

    def __init__(self, revision: int, record: dict[str, object] | None) -> None:
        self.revision = revision
        self.record = record

    def holder_token(self) -> int | None:
        """The token of a live holder, or ``None`` if the lease is free."""
        if self.record is None:
            return None
        expires = self.record.get("expires")
        if not isinstance(expires, int | float) or expires <= time.time():
            return None
        token = self.record.get("token")
        return token if isinstance(token, int) and token > 0 else self.revision


class Leases:
    """The leases one bus took; see the module docstring."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._holder = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.held: set[_Held] = set()

    async def _subject(self, bucket: str, key: str) -> tuple[str, str]:
        ns = self._conn.ns
        await self._conn.bucket(ns.lease_bucket, create=True)
        return f"KV_{ns.lease_bucket}", f"$KV.{ns.lease_bucket}.{ns.lease_key(bucket, key)}"

    async def read(self, stream: str, subject: str) -> _Slot:
        with translated("lease", url=self._conn.url):
            try:
                msg = await self._conn.js.get_msg(stream, subject=subject, direct=True)
            except nats.js.errors.NotFoundError:
                return _Slot(0, None)
        headers = msg.headers or {}
        if headers.get(_KV_OPERATION) or not msg.data:
            return _Slot(msg.seq or 0, None)
        try:
            record = json.loads(msg.data)
        except ValueError:
            record = None
        return _Slot(msg.seq or 0, record if isinstance(record, dict) else None)

    async def write(
        self, subject: str, last: int, record: dict[str, object] | None, ttl: float
    ) -> int | None:
        """Write ``record`` (``None``: a delete marker) if the key's last revision
        is ``last``; the new revision, or ``None`` if it was not."""
        headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last)}
        if record is None:
            headers[_KV_OPERATION] = "DEL"
            data = b""
        else:
            headers["Nats-TTL"] = f"{math.ceil(ttl) + 1}s"
            data = json.dumps(record).encode()
        try:
            with translated("lease", url=self._conn.url):
                ack = await self._conn.js.publish(subject, data, headers=headers)
        except Exception as exc:
            if is_wrong_last(exc):
                return None
            raise
        return ack.seq

    async def take(self, bucket: str, key: str, ttl: float) -> Lease:
        ttl = check_duration("ttl", ttl, positive=True)
        self._conn.check_open()
        stream, subject = await self._subject(bucket, key)
        for _ in range(_RETRIES):
            slot = await self.read(stream, subject)
            holder = slot.holder_token()
            if holder is not None:
                raise Conflict(f"lease {bucket}/{key} is held (token {holder})", current=holder)
            record: dict[str, object] = {"expires": time.time() + ttl, "holder": self._holder}
            revision = await self.write(subject, slot.revision, record, ttl)
            if revision is not None:
                held = _Held(self, bucket, key, stream, subject, ttl, revision)
                self.held.add(held)
                return Lease(bucket, key, ttl, revision, held)
        slot = await self.read(stream, subject)
        raise Conflict(
            f"lease {bucket}/{key}: lost the race to take it", current=slot.holder_token()
        )

    async def shutdown(self) -> None:
        for held in list(self.held):
            with contextlib.suppress(Exception):
                await held.release()


class _Held:
    """A :class:`~klieo_shm.Lease` impl: the holder's side of one grant."""

    def __init__(
        self,
        owner: Leases,
        bucket: str,
        key: str,
        stream: str,
        subject: str,
        ttl: float,
        token: int,
    ) -> None:
        self._owner = owner
        self._what = f"lease {bucket}/{key}"
        self._stream = stream
        self._subject = subject
        self._ttl = ttl
        self.token = token
        self._revision = token
        self._expires = time.time() + ttl
        self._done = False

    async def _lost(self) -> Conflict:
        slot = await self._owner.read(self._stream, self._subject)
        return Conflict(
            f"{self._what} with token {self.token} was lost",
            expected=self.token,
            current=slot.holder_token(),
        )

    async def heartbeat(self) -> None:
        if self._done or time.time() > self._expires:
            raise await self._lost()
        expires = time.time() + self._ttl
        record: dict[str, object] = {
            "token": self.token,
            "expires": expires,
            "holder": self._owner._holder,
        }
        revision = await self._owner.write(self._subject, self._revision, record, self._ttl)
        if revision is None:
            raise await self._lost()
        self._revision = revision
        self._expires = expires

    async def release(self) -> None:
        if self._done:
            return
        self._done = True
        self._owner.held.discard(self)
        if await self._owner.write(self._subject, self._revision, None, self._ttl) is None:
            slot = await self._owner.read(self._stream, self._subject)
            current = slot.holder_token()
            if current is not None and current != self.token:
                raise Conflict(f"{self._what} was taken over", expected=self.token, current=current)
