"""Pubsub on JetStream: one interest-retention stream, one pull consumer per durable.

- All of a bus's pubsub subjects ``s`` live in the stream ``P_pubsub``
  (subjects ``P.ps.>``) with **interest retention**: a message is kept only
  while some consumer whose filter matches it has not acknowledged it, so a
  message that no durable matches is not stored (the server drops it at
  once), and it is removed once every matching durable acked or termed it.
- A durable ``d`` on pattern ``p`` is the pull consumer ``d`` with filter
  ``P.ps.p``, explicit ack, ``deliver_policy=new`` (a new durable starts
  with the messages published after it), unlimited ``max_deliver``.
  Members of the group are :class:`~._puller.Puller` s on that consumer.
- ``Msg.seq`` is the stream sequence and ``delivery_count`` the consumer's
  delivery count, from the delivery's ack subject.
- Ack, nak (with delay), term and in-progress are sent as requests, so the
  server has applied them when the call returns.
- Closing a stream naks the member's unresolved deliveries: the server
  redelivers them to the other members at once (``delivery_count`` grows,
  as on any redelivery). A member that dies without closing (``kill -9``)
  cannot do that: its deliveries come back after ``ack_wait``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Final

import nats.js.errors
from nats.aio.msg import Msg as NatsMsg
from nats.js import api

from .._errors import Closed, Conflict, InvalidArgument, NotFound
from .._handles import Msg, MsgStream
from .._interfaces import Pubsub
from .._names import validate_durable, validate_subject, validate_subject_pattern
from .._values import DEFAULT_ACK_WAIT, Headers, as_bytes, check_duration, check_headers
from ._connection import Connection
from ._errors import translated
from ._puller import Puller, nak_body

__all__ = ["NatsPubsub", "check_nats_headers"]

_ACK_TIMEOUT: Final = 5.0
_CONSUMER_NOT_FOUND: Final = 10014


def check_nats_headers(headers: Headers) -> Headers:
    """Refuse headers NATS cannot carry as given: names with ':', spaces or
    line breaks, values with line breaks, and names starting ``Nats-``, which
    JetStream would act on (``Nats-Msg-Id``, ``Nats-TTL``, ...)."""
    for name, value in headers.items():
        if not name or any(c in name for c in ":\r\n \t") or any(c in value for c in "\r\n"):
            raise InvalidArgument(
                "headers",
                headers,
                "NATS header names may not contain ':', white space or line breaks, "
                "nor values line breaks",
            )
        if name.lower().startswith("nats-"):
            raise InvalidArgument("headers", headers, "names starting 'Nats-' are reserved by NATS")
    return headers


class _Ack:
    """The acknowledgement of one delivery, sent as a request to its ack subject.

    A delivery this member no longer holds — its stream closed (and handed it
    back), or its ``ack_wait`` ran out (so the server hands it on) — is
    refused with ``Conflict``: JetStream acknowledges by stream sequence and
    would otherwise apply a stale ack to the message's next delivery.
    """

    __slots__ = ("_conn", "_deadline", "_member", "_msg")

    def __init__(self, conn: Connection, member: _Member, msg: NatsMsg, arrived: float) -> None:
        self._conn = conn
        self._member = member
        self._msg = msg
        self._deadline = member.expiry(arrived)

    def _check_held(self, operation: str) -> None:
        self._conn.check_open()
        gone = id(self._msg) not in self._member.unresolved
        if gone or time.monotonic() > self._deadline:
            if not gone:
                self._member.unresolved.pop(id(self._msg), None)
            token = self._msg.metadata.sequence.consumer
            why = "its stream closed" if gone else "its ack_wait ran out"
            raise Conflict(
                f"{operation}: delivery {token} of durable {self._member.durable!r} is no "
                f"longer held ({why})",
                expected=token,
                current=None,
            )

    async def _send(self, operation: str, body: bytes, *, resolving: bool) -> None:
        self._check_held(operation)
        if resolving:
            self._member.unresolved.pop(id(self._msg), None)
        else:
            self._deadline = self._member.expiry(time.monotonic())
        with translated(operation, url=self._conn.url, timeout=_ACK_TIMEOUT):
            await self._conn.nc.request(self._msg.reply, body, timeout=_ACK_TIMEOUT)

    async def ack(self) -> None:
        await self._send("ack", b"+ACK", resolving=True)

    async def nak(self, delay: float) -> None:
        await self._send("nak", nak_body(delay), resolving=True)

    async def term(self) -> None:
        await self._send("term", b"+TERM", resolving=True)

    async def in_progress(self) -> None:
        await self._send("in_progress", b"+WPI", resolving=False)


class _Member:
    """A :class:`~klieo_shm.MsgStream` impl: one member of a durable's group."""

    def __init__(self, owner: NatsPubsub, durable: str, ack_wait: float, puller: Puller) -> None:
        self._owner = owner
        self._conn = owner.conn
        self.durable = durable
        self.ack_wait = ack_wait
        self.puller = puller
        self.unresolved: dict[int, NatsMsg] = {}

    def expiry(self, since: float) -> float:
        """When a delivery made (or touched) at ``since`` stops being held:
        its ack_wait, less a margin for the server's clock running first."""
        return since + self.ack_wait - min(0.1, self.ack_wait / 10)

    async def next(self) -> Msg | None:
        while True:
            got = await self.puller.next(None)
            if got is None:
                return None
            arrived, msg = got
            if time.monotonic() < self.expiry(arrived):
                return self._accept(arrived, msg)
            # Waited in the buffer past its ack_wait (nobody was reading):
            # the server redelivers it, so this copy is dropped.

    def take_ready(self, n: int) -> list[Msg]:
        """Deliveries received already (each :meth:`next` pulls one), as
        :meth:`next` hands them out; none is pulled for this."""
        now = time.monotonic()
        return [
            self._accept(arrived, msg)
            for arrived, msg in self.puller.take_buffered(n)
            if now < self.expiry(arrived)
        ]

    def _accept(self, arrived: float, msg: NatsMsg) -> Msg:
        meta = msg.metadata
        self.unresolved[id(msg)] = msg
        return Msg(
            subject=self._conn.ns.from_pubsub_subject(msg.subject),
            payload=bytes(msg.data),
            headers=dict(msg.headers) if msg.headers else {},
            seq=meta.sequence.stream,
            delivery_count=meta.num_delivered,
            impl=_Ack(self._conn, self, msg, arrived),
        )

    async def close(self, *, hand_back: bool = True) -> None:
        """End the membership; unresolved deliveries go back to the durable."""
        self._owner.live.discard(self)
        left = await self.puller.close()
        if not hand_back:
            self.unresolved.clear()
            return
        pending = list(self.unresolved.values()) + left
        self.unresolved.clear()
        for msg in pending:
            try:
                await self._conn.nc.publish(msg.reply, b"-NAK")
            except Exception:  # connection gone: the server redelivers after ack_wait
                break
        if pending and not self._conn.nc.is_closed:
            with contextlib.suppress(Exception):
                await self._conn.nc.flush(timeout=2)


class NatsPubsub(Pubsub):
    """:class:`~klieo_shm.Pubsub` over JetStream (see the module docstring)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.live: set[_Member] = set()

    async def publish(self, subject: str, payload: bytes, headers: Headers | None = None) -> None:
        validate_subject(subject)
        data = as_bytes(payload)
        hdrs = check_nats_headers(check_headers(headers))
        self.conn.check_open()
        self.conn.check_payload(data)
        await self.conn.pubsub_stream()
        with translated("publish", url=self.conn.url):
            await self.conn.js.publish(
                self.conn.ns.pubsub_subject(subject), data, headers=hdrs or None
            )

    async def subscribe(
        self, subject: str, durable: str, *, ack_wait: float | None = None
    ) -> MsgStream:
        validate_subject_pattern(subject)
        validate_durable(durable)
        wait = (
            DEFAULT_ACK_WAIT
            if ack_wait is None
            else check_duration("ack_wait", ack_wait, positive=True)
        )
        self.conn.check_open()
        stream = await self.conn.pubsub_stream()
        filter_subject = self.conn.ns.pubsub_subject(subject)
        js = self.conn.js
        with translated("subscribe", url=self.conn.url):
            try:
                info = await js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError:
                info = None
            if info is not None and info.config.filter_subject != filter_subject:
                current = self.conn.ns.from_pubsub_subject(info.config.filter_subject or "")
                raise InvalidArgument(
                    "subject", subject, f"durable {durable!r} is subscribed to {current!r}"
                )
            if info is not None and ack_wait is None:
                wait = info.config.ack_wait or DEFAULT_ACK_WAIT
            if info is None or (ack_wait is not None and info.config.ack_wait != wait):
                await js.add_consumer(
                    stream,
                    api.ConsumerConfig(
                        durable_name=durable,
                        filter_subject=filter_subject,
                        deliver_policy=(
                            api.DeliverPolicy.NEW if info is None else info.config.deliver_policy
                        ),
                        ack_policy=api.AckPolicy.EXPLICIT,
                        ack_wait=wait,
                        max_deliver=-1,
                    ),
                )
            puller = await self.conn.puller(stream, durable)
        member = _Member(self, durable, wait, puller)
        self.live.add(member)
        return MsgStream(_StreamImpl(self, member))

    async def delete_durable(self, durable: str) -> None:
        validate_durable(durable)
        self.conn.check_open()
        stream = await self.conn.pubsub_stream()
        with translated("delete_durable", url=self.conn.url):
            try:
                await self.conn.js.delete_consumer(stream, durable)
            except nats.js.errors.NotFoundError as exc:
                raise NotFound("durable", durable) from exc
        for member in [m for m in self.live if m.durable == durable]:
            await member.close(hand_back=False)

    async def shutdown(self) -> None:
        members = list(self.live)
        for member in members:
            await member.close()


class _StreamImpl:
    """Binds a member to the stream handle; closing it leaves the group."""

    def __init__(self, owner: NatsPubsub, member: _Member) -> None:
        self._owner = owner
        self._member = member

    async def next(self) -> Msg | None:
        if self._owner.conn.closed:
            return None
        try:
            return await self._member.next()
        except Closed:
            return None

    def take_ready(self, n: int) -> list[Msg]:
        if self._owner.conn.closed:
            return []
        return self._member.take_ready(n)

    async def close(self) -> None:
        await self._member.close()
