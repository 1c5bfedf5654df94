"""``Pubsub`` over the broker, on top of ``ShmClient``.

Publish contract on shm: ``await publish(...)`` returns once the broker has
stored the message for every matching durable (its ``PubAck``). Concurrent
publishes from one connection are pipelined into shared batches, so N tasks
publishing at once cost about one round trip, not N (JetStream users reach
the same effect with ``publish_async``).

Acks (``Msg.ack/nak/term/in_progress``) do not wait for the broker; they are
merged into ranged ack frames sent before anything else this connection sends.

Reconnection (see ``_client``): when the connection breaks, every open stream
drops the deliveries it has not handed out yet (the broker redelivers them),
re-subscribes on the new connection with the same durable, subject and
ack_wait, and goes on yielding. A ``Msg`` delivered on an older connection
cannot be acked on the new one (delivery ids are per connection): its
ack/nak/term/in_progress do nothing, and the broker redelivers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import operator
from collections.abc import Iterable
from typing import Any, Final, cast

import msgpack

from .._errors import BusError, PayloadTooLarge, ProtocolError
from .._handles import AckImpl, Msg, MsgStream, ack_each, take_for_ack
from .._interfaces import Pubsub
from .._names import validate_durable, validate_subject, validate_subject_pattern
from .._values import Headers, as_bytes, check_duration, check_headers
from ..layout import HEADER_SIZE
from ..protocol import (
    ACK_KIND_ACK,
    ACK_KIND_NAK,
    ACK_KIND_PROGRESS,
    ACK_KIND_TERM,
    DeliverBatch,
    StreamEnd,
)
from ..protocol._frames import COUNT, MSG_DESC, OFFSET_MASK, SOURCE_SHIFT
from ._arenas import MAP_ERRORS
from ._client import ShmClient
from ._queue import ItemQueue

__all__ = ["ShmPubsub"]

log: Final = logging.getLogger("klieo_shm.shm")


class _Ack:
    """A delivery's ack handle; a no-op once its connection is gone (the
    broker has then handed the delivery to another member, or a restarted
    broker redelivers it): delivery ids are per connection, ``gen`` says
    which one."""

    __slots__ = ("_client", "_did", "_gen")

    def __init__(self, client: ShmClient, gen: int, did: int) -> None:
        self._client = client
        self._gen = gen
        self._did = did

    def _send(self, kind: int, delay_ms: int = 0) -> None:
        if self._client.gen == self._gen:
            self._client.ack(self._did, kind, delay_ms)

    async def ack(self) -> None:
        self._send(ACK_KIND_ACK)

    async def nak(self, delay: float) -> None:
        self._send(ACK_KIND_NAK, min(int(delay * 1000), 0xFFFFFFFF))

    async def term(self) -> None:
        self._send(ACK_KIND_TERM)

    async def in_progress(self) -> None:
        self._send(ACK_KIND_PROGRESS)


class _Gen:
    """One connection of a client (its generation ``gen``): shared by the
    deliveries that came on it, whose ids mean something only there."""

    __slots__ = ("client", "gen")

    def __init__(self, client: ShmClient, gen: int) -> None:
        self.client = client
        self.gen = gen


class _ShmMsg(Msg):
    """A delivery on the shm backend: its delivery id and connection kept on
    the message itself, so that a delivery is one object and a batch of
    them is acked with C-level steps (``ShmPubsub.ack_many``)."""

    __slots__ = ("_did", "_on")

    # Msg.__init__'s assignments, inline on purpose: calling it (with _impl
    # left out) measured 65 ns more per delivery, about a tenth of the
    # subscriber's in-process cost of one.
    def __init__(
        self,
        subject: str,
        payload: bytes,
        headers: Headers,
        seq: int,
        delivery_count: int,
        on: _Gen,
        did: int,
    ) -> None:
        self._resolved_by = None
        self.subject = subject
        self.payload = payload
        self.headers = headers
        self.seq = seq
        self.delivery_count = delivery_count
        self._on = on
        self._did = did

    @property
    def _impl(self) -> AckImpl:  # type: ignore[override]  # Msg's writable slot, read-only here
        return _Ack(self._on.client, self._on.gen, self._did)


_DESC_SIZE: Final = MSG_DESC.size
_SUBJ_LEN: Final = _DESC_SIZE - 2  # where a descriptor's u16 subj_len starts
_IMPL = operator.attrgetter("_impl")
_ON = operator.attrgetter("_on")
_DID = operator.attrgetter("_did")


class _Sub(ItemQueue[Msg]):
    """One member's queue of deliveries (the ``MsgStream`` impl)."""

    def __init__(self, owner: ShmPubsub, sub_id: int, args: dict[str, Any]) -> None:
        super().__init__()
        self._owner = owner
        self.sub_id = sub_id
        self.args = args  # the subscribe call's arguments, to subscribe again

    async def _detach(self) -> None:
        await self._owner._unsubscribe(self)


class ShmPubsub(Pubsub):
    """Pubsub over one ``ShmClient``."""

    def __init__(self, client: ShmClient) -> None:
        self._client = client
        self._subs: dict[int, _Sub] = {}
        self._ids = itertools.count(1)
        self._subjects: dict[bytes, str] = {}
        self._valid: dict[str, bytes] = {}  # subjects already validated
        self._on = _Gen(client, client.gen)
        client.on_deliver = self._on_deliver
        client.on_stream_end = self._on_stream_end

    async def publish(self, subject: str, payload: bytes, headers: Headers | None = None) -> None:
        client = self._client
        if not client.connected:
            await client.ensure()
        await self.publish_async(subject, payload, headers)

    def publish_async(
        self, subject: str, payload: bytes, headers: Headers | None = None
    ) -> asyncio.Future[None]:
        """Like JetStream's ``publish_async``: queue the message and return at
        once a future that resolves when the broker stored it (or fails with
        ``Full``/``Closed``). Argument errors raise here, synchronously.

        Not part of the ``Pubsub`` interface: the way to publish without a
        round trip, or a task, per message. Messages are stored in call order.
        Must be called from the bus's event loop.
        """
        subj = self._valid.get(subject) if type(subject) is str else None
        if subj is None:
            subj = validate_subject(subject).encode()
            if len(self._valid) >= 10000:
                self._valid.clear()
            self._valid[subject] = subj
        data = payload if type(payload) is bytes else as_bytes(payload)
        if headers is None:
            hdr = b""
        else:
            hdrs = check_headers(headers)
            hdr = msgpack.packb(hdrs, use_bin_type=True) if hdrs else b""
        client = self._client
        if not client.connected:
            return asyncio.ensure_future(self.publish(subject, payload, headers))
        if len(data) > client.max_payload:
            raise PayloadTooLarge(len(data), client.max_payload)
        return client.publish_nowait(subj, hdr, data)

    async def subscribe(
        self, subject: str, durable: str, *, ack_wait: float | None = None
    ) -> MsgStream:
        validate_subject_pattern(subject)
        validate_durable(durable)
        if ack_wait is not None:
            ack_wait = check_duration("ack_wait", ack_wait, positive=True)
        await self._client.ensure()
        sub_id = next(self._ids)
        args: dict[str, Any] = {"sub_id": sub_id, "subject": subject, "durable": durable}
        if ack_wait is not None:
            args["ack_wait"] = ack_wait
        sub = _Sub(self, sub_id, args)
        self._subs[sub_id] = sub
        try:
            await self._client.call("subscribe", args)
        except BaseException:
            self._subs.pop(sub.sub_id, None)
            raise
        return MsgStream(sub)

    async def delete_durable(self, durable: str) -> None:
        await self._client.call("delete_durable", {"durable": validate_durable(durable)})

    async def ack_many(self, msgs: Iterable[Msg]) -> None:
        batch = take_for_ack(msgs, Msg)
        client = self._client
        # the usual batch, all delivered on this connection: C-level checks
        if set(map(type, batch)) == {_ShmMsg} and set(map(_ON, batch)) == {self._gen()}:
            client.ack_all(list(map(_DID, batch)))
            return
        ours = list(map(_IMPL, batch))  # ack_impl, as one C call per item
        if all(type(impl) is _Ack for impl in ours):
            gen = client.gen
            acks = cast(list[_Ack], ours)
            client.ack_all([a._did for a in acks if a._client is client and a._gen == gen])
            for a in acks:
                if a._client is not client:  # delivered on another shm bus
                    a._send(ACK_KIND_ACK)
        else:  # deliveries of another backend among them
            await ack_each(batch)

    async def _unsubscribe(self, sub: _Sub) -> None:
        if self._subs.pop(sub.sub_id, None) is None:
            return
        client = self._client
        if client.connected:
            # if gone already, the broker returned its deliveries then
            with contextlib.suppress(BusError):
                await client.call("unsubscribe", {"sub_id": sub.sub_id})

    def _on_deliver(self, ev: DeliverBatch) -> None:
        sub = self._subs.get(ev.sub_id)
        if sub is None or sub.closed:
            return  # closed: the broker hands these to others on unsubscribe
        client = self._client
        on = self._gen()
        store, store_mm = client.store, client.store_mm
        items = sub.items
        descs = MSG_DESC.iter_unpack(ev.descs)
        dids = range(ev.first_id, ev.first_id + ev.count)
        dcounts = [c for (c,) in COUNT.iter_unpack(ev.counts)] if ev.counts else itertools.repeat(1)
        for (seq, off, hl, pl, _), name, did, dcount in zip(
            descs, self._names(ev), dids, dcounts, strict=False
        ):
            if off > OFFSET_MASK:  # a kept batch: in its publisher's arena
                kept = self._kept_view(off >> SOURCE_SHIFT)
                if kept is None:
                    continue  # see _kept_view: resolved elsewhere already
                view = kept
                off &= OFFSET_MASK
                payload = bytes(view[off + hl : off + hl + pl])
            else:
                view = store
                start = HEADER_SIZE + off + hl  # the store's data area follows its header
                payload = store_mm[start : start + pl]
            # SYNC POINT: reads bytes written (store: by the broker; arena: by
            # the publisher, before its publish frame) before this frame was sent.
            try:
                headers = msgpack.unpackb(view[off : off + hl], raw=False) if hl else {}
            except Exception as exc:  # msgpack raises many types for garbage
                raise ProtocolError(f"delivery {did}: headers are not msgpack: {exc}") from None
            items.append(_ShmMsg(name, payload, headers, seq, dcount, on, did))
        sub.wake()

    def _gen(self) -> _Gen:
        """The client's live connection, as its deliveries name it."""
        on, client = self._on, self._client
        if on.gen != client.gen:
            on = self._on = _Gen(client, client.gen)
        return on

    def _names(self, ev: DeliverBatch) -> Iterable[str]:
        """The subject of each delivery of ``ev``, decoded once per name."""
        subjects, descs, count = ev.subjects, ev.descs, ev.count
        # subj_len is a descriptor's last two bytes: equal lengths and one
        # subject repeated are checked in C, with no step per delivery
        lo, hi = descs[_SUBJ_LEN::_DESC_SIZE], descs[_SUBJ_LEN + 1 :: _DESC_SIZE]
        if count and lo == lo[:1] * count and hi == hi[:1] * count:
            head = subjects[: lo[0] | hi[0] << 8]
            if subjects == head * count:
                return itertools.repeat(self._name(head), count)
        out, pos = [], 0
        for *_, sl in MSG_DESC.iter_unpack(descs):
            out.append(self._name(subjects[pos : pos + sl]))
            pos += sl
        return out

    def _name(self, raw: bytes) -> str:
        names = self._subjects
        name = names.get(raw)
        if name is None:
            if len(names) > 10000:
                names.clear()
            name = names[raw] = raw.decode()
        return name

    def _kept_view(self, client_id: int) -> memoryview | None:
        """The data area of the arena a kept batch was delivered from, or
        None when it is gone: the broker keeps an arena while anything kept
        in it is owed, and while a client it sent a delivery from it has not
        read that far (the read mark). So a delivery read after its arena
        went was resolved elsewhere after the broker dropped this client's
        connection, and is dropped, as a late ack of it would be ignored."""
        peers = self._client.peers
        if peers is None:
            return None
        try:
            return peers.data(client_id)
        except MAP_ERRORS as exc:
            log.warning("dropped a delivery from the arena of client %d: %s", client_id, exc)
            return None

    def _on_stream_end(self, ev: StreamEnd) -> None:
        sub = self._subs.pop(ev.sub_id, None)
        if sub is not None:
            sub.closed = True
            sub.wake()

    def interrupted(self) -> None:
        """The connection broke: drop what was delivered on it and not handed
        out yet (those deliveries cannot be acked any more; the broker
        redelivers them)."""
        for sub in self._subs.values():
            sub.items.clear()

    async def restore(self) -> None:
        """On a new connection: subscribe every open stream again. A stream
        the broker refuses now ends with the broker's error."""
        kept = await self._client.register_again(
            list(self._subs.values()),
            lambda sub: ("subscribe", sub.args),
            lambda sub: ("unsubscribe", {"sub_id": sub.sub_id}),
            lambda sub: self._subs.get(sub.sub_id) is sub,
        )
        for sub, answer in kept:
            if isinstance(answer, BaseException) and self._subs.pop(sub.sub_id, None) is sub:
                sub.error = answer if isinstance(answer, BusError) else BusError(str(answer))
                sub.wake()

    def end_all(self, error: BusError | None) -> None:
        """End every stream: quietly (``error`` None) or raising ``error``."""
        subs, self._subs = self._subs, {}
        for sub in subs.values():
            if error is None:
                sub.closed = True
            else:
                sub.error = error
            sub.wake()
