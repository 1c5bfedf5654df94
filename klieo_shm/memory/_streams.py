"""Pubsub in a memory world: durable consumers, deliveries, redelivery.

A published message gets the world's next sequence number and is stored once
per durable whose pattern matches (none matching: not stored). Per durable:

- ``ready``: a heap of messages waiting for a member, by sequence, so a
  redelivery goes before newer messages;
- ``inflight``: deliveries held by a member, by fencing token (every
  delivery gets a new token); at most ``max_ack_pending`` of them;
- naked-with-delay messages wait on a timer, then become ready.

A member takes a message only inside its own ``next`` (pull), so a message
is never parked with a member that is not asking. A delivery leaves
``inflight`` by ack/term (gone), nak (ready, now or after the delay),
ack_wait expiry or its member's stream or bus closing (ready at once).
Acks name their token: once a delivery left ``inflight`` its token is
stale and ack/nak/term/in_progress raise ``Conflict``.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field

from .._errors import Conflict, Full, InvalidArgument, NotFound
from .._handles import Msg, MsgStream
from .._interfaces import Pubsub
from .._names import subject_matches, validate_durable, validate_subject, validate_subject_pattern
from .._values import Headers, check_duration, check_headers
from ._core import Session, Timer, WaitSet
from ._world import BusOptions, World, check_open

__all__ = ["MemoryPubsub", "StreamsState"]


@dataclass(slots=True)
class _Message:
    seq: int
    subject: str
    payload: bytes
    headers: Headers


@dataclass(slots=True, eq=False)
class _Delivery:
    token: int
    message: _Message
    count: int
    member: _Member
    deadline: float
    timer: Timer | None = None


@dataclass(slots=True, eq=False)
class _Member:
    durable: _Durable
    session: Session
    closed: bool = False
    tokens: set[int] = field(default_factory=set)


@dataclass(slots=True, eq=False)
class _Durable:
    name: str
    pattern: str
    ack_wait: float
    ready: list[tuple[int, _Message, int]] = field(default_factory=list)
    """Heap of (seq, message, deliveries so far)."""
    inflight: dict[int, _Delivery] = field(default_factory=dict)
    delayed: int = 0
    members: set[_Member] = field(default_factory=set)
    waiters: WaitSet = field(default_factory=WaitSet)
    deleted: bool = False

    def stored(self) -> int:
        return len(self.ready) + len(self.inflight) + self.delayed


class StreamsState:
    """The pubsub state of one world (guarded by ``world.lock``)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.durables: dict[str, _Durable] = {}
        self.members: dict[Session, set[_Member]] = {}
        self.pending = 0
        """Messages stored over all durables: ready, delayed or in flight."""
        self.room = WaitSet()
        """Publishers waiting for ``pending`` to drop under ``max_pending``."""
        self._seq = itertools.count(1)
        self._tokens = itertools.count(1)

    # -- publishing (lock held) --

    def matches(self, subject: str) -> bool:
        return any(subject_matches(d.pattern, subject) for d in self.durables.values())

    def store(self, subject: str, payload: bytes, headers: Headers) -> None:
        """Store a message for every matching durable, ignoring ``max_pending``
        (internal publishers, such as dead letters, never wait)."""
        message: _Message | None = None
        for durable in self.durables.values():
            if subject_matches(durable.pattern, subject):
                if message is None:
                    message = _Message(next(self._seq), subject, payload, headers)
                heapq.heappush(durable.ready, (message.seq, message, 0))
                self.pending += 1
                durable.waiters.wake_all()

    # -- deliveries (lock held) --

    def take(self, member: _Member) -> Msg | None:
        """The next delivery for ``member``, if one is ready and allowed."""
        durable = member.durable
        if not durable.ready or len(durable.inflight) >= self.world.limits.max_ack_pending:
            return None
        _, message, count = heapq.heappop(durable.ready)
        token = next(self._tokens)
        delivery = _Delivery(token, message, count + 1, member, 0.0)
        durable.inflight[token] = delivery
        member.tokens.add(token)
        self._arm(durable, delivery)
        return Msg(
            message.subject,
            message.payload,
            dict(message.headers),
            message.seq,
            delivery.count,
            _Ack(self, member.session, durable, token, message.seq),
        )

    def _arm(self, durable: _Durable, delivery: _Delivery) -> None:
        if delivery.timer is not None:
            delivery.timer.cancel()
        delivery.deadline = time.monotonic() + durable.ack_wait
        token = delivery.token
        delivery.timer = self.world.timers.call_at(
            delivery.deadline, lambda: self._expire(durable, token)
        )

    def _expire(self, durable: _Durable, token: int) -> None:
        delivery = durable.inflight.get(token)
        if delivery is not None and delivery.deadline <= time.monotonic():
            self._unhold(durable, delivery)
            self._make_ready(durable, delivery.message, delivery.count)

    def _unhold(self, durable: _Durable, delivery: _Delivery) -> None:
        del durable.inflight[delivery.token]
        delivery.member.tokens.discard(delivery.token)
        if delivery.timer is not None:
            delivery.timer.cancel()
        durable.waiters.wake_all()  # room under max_ack_pending

    def _make_ready(self, durable: _Durable, message: _Message, count: int) -> None:
        if not durable.deleted:
            heapq.heappush(durable.ready, (message.seq, message, count))
            durable.waiters.wake_all()

    def _forget(self, count: int) -> None:
        self.pending -= count
        self.room.wake_all()

    def live(self, session: Session, durable: _Durable, token: int, seq: int) -> _Delivery:
        """The delivery ``token`` (of message ``seq``) if it is still held,
        else ``Conflict`` naming the message's current delivery, if any."""
        check_open(session)
        delivery = None if durable.deleted else durable.inflight.get(token)
        if delivery is None:
            current = next((t for t, d in durable.inflight.items() if d.message.seq == seq), None)
            raise Conflict(
                f"delivery {token} of durable {durable.name!r} is no longer held "
                "(ack_wait expired, its stream closed or the durable was deleted)",
                expected=token,
                current=current,
            )
        return delivery

    def resolve(self, delivery: _Delivery, op: str, delay: float = 0.0) -> None:
        """Carry out ack, term or nak on a live delivery."""
        durable = delivery.member.durable
        self._unhold(durable, delivery)
        if op in ("ack", "term"):
            self._forget(1)
        elif delay <= 0:
            self._make_ready(durable, delivery.message, delivery.count)
        else:
            durable.delayed += 1
            message, count = delivery.message, delivery.count

            def due() -> None:
                durable.delayed -= 1
                self._make_ready(durable, message, count)

            self.world.timers.call_later(delay, due)

    def touch(self, delivery: _Delivery) -> None:
        self._arm(delivery.member.durable, delivery)

    # -- membership (lock held) --

    def join(
        self, session: Session, subject: str, name: str, ack_wait: float | None, default: float
    ) -> _Member:
        """Add a member to durable ``name``, creating it (``ack_wait`` or
        ``default``) if new; ``InvalidArgument`` if it has another subject."""
        durable = self.durables.get(name)
        if durable is None:
            durable = self.durables[name] = _Durable(name, subject, ack_wait or default)
        elif durable.pattern != subject:
            raise InvalidArgument(
                "subject", subject, f"durable {name!r} is bound to subject {durable.pattern!r}"
            )
        elif ack_wait is not None:
            durable.ack_wait = ack_wait
        member = _Member(durable, session)
        durable.members.add(member)
        self.members.setdefault(session, set()).add(member)
        return member

    def leave(self, member: _Member) -> None:
        """End a membership; its held deliveries become ready at once."""
        if member.closed:
            return
        member.closed = True
        durable = member.durable
        durable.members.discard(member)
        owned = self.members.get(member.session)
        if owned is not None:
            owned.discard(member)
        for token in sorted(member.tokens):
            delivery = durable.inflight[token]
            self._unhold(durable, delivery)
            self._make_ready(durable, delivery.message, delivery.count)
        durable.waiters.wake_all()

    def delete(self, name: str) -> None:
        durable = self.durables.pop(name, None)
        if durable is None:
            raise NotFound("durable", name)
        durable.deleted = True
        for delivery in durable.inflight.values():
            if delivery.timer is not None:
                delivery.timer.cancel()
        for member in list(durable.members):
            member.closed = True
            owned = self.members.get(member.session)
            if owned is not None:
                owned.discard(member)
        self._forget(durable.stored())
        durable.ready.clear()
        durable.inflight.clear()
        durable.members.clear()
        durable.waiters.wake_all()

    def drop_session(self, session: Session) -> None:
        for member in list(self.members.pop(session, ())):
            self.leave(member)


class _Ack:
    """``AckImpl`` of one delivery: the durable and the delivery's token."""

    __slots__ = ("_durable", "_seq", "_session", "_state", "_token")

    def __init__(
        self, state: StreamsState, session: Session, durable: _Durable, token: int, seq: int
    ) -> None:
        self._state = state
        self._session = session
        self._durable = durable
        self._token = token
        self._seq = seq

    def _live(self) -> _Delivery:
        return self._state.live(self._session, self._durable, self._token, self._seq)

    def _resolve(self, op: str, delay: float = 0.0) -> None:
        with self._state.world.lock:
            self._state.resolve(self._live(), op, delay)

    async def ack(self) -> None:
        self._resolve("ack")

    async def nak(self, delay: float) -> None:
        self._resolve("nak", delay)

    async def term(self) -> None:
        self._resolve("term")

    async def in_progress(self) -> None:
        with self._state.world.lock:
            self._state.touch(self._live())


class _MemberStream:
    """``StreamImpl[Msg]`` of one member."""

    __slots__ = ("_member", "_state")

    def __init__(self, state: StreamsState, member: _Member) -> None:
        self._state = state
        self._member = member

    def _take(self) -> tuple[bool, Msg | None]:
        if self._member.closed or self._member.session.closed:
            return True, None
        msg = self._state.take(self._member)
        return msg is not None, msg

    async def next(self) -> Msg | None:
        world = self._state.world
        _, msg = await world.poll(
            self._member.session, self._take, self._member.durable.waiters, None
        )
        return msg

    def take_ready(self, n: int) -> list[Msg]:
        out: list[Msg] = []
        with self._state.world.lock:
            while len(out) < n:
                _, msg = self._take()
                if msg is None:
                    break
                out.append(msg)
        return out

    async def close(self) -> None:
        with self._state.world.lock:
            self._state.leave(self._member)


class MemoryPubsub(Pubsub):
    """``Pubsub`` of one bus on a memory world."""

    def __init__(self, world: World, session: Session, options: BusOptions) -> None:
        self._world = world
        self._state = world.streams
        self._session = session
        self._options = options

    async def publish(self, subject: str, payload: bytes, headers: Headers | None = None) -> None:
        validate_subject(subject)
        hdrs = check_headers(headers)
        data = self._world.check_payload(payload)
        state = self._state
        limit = self._world.limits.max_pending

        def store() -> tuple[bool, None]:
            check_open(self._session)
            if not state.matches(subject):
                return True, None
            if state.pending >= limit:
                return False, None
            state.store(subject, data, hdrs)
            return True, None

        deadline = time.monotonic() + self._options.publish_timeout
        done, _ = await self._world.poll(self._session, store, state.room, deadline)
        if not done:
            raise Full("pending messages", limit)

    async def subscribe(
        self, subject: str, durable: str, *, ack_wait: float | None = None
    ) -> MsgStream:
        validate_subject_pattern(subject)
        validate_durable(durable)
        wait = None if ack_wait is None else check_duration("ack_wait", ack_wait, positive=True)
        with self._world.lock:
            check_open(self._session)
            member = self._state.join(self._session, subject, durable, wait, self._options.ack_wait)
        return MsgStream(_MemberStream(self._state, member))

    async def delete_durable(self, durable: str) -> None:
        validate_durable(durable)
        with self._world.lock:
            check_open(self._session)
            self._state.delete(durable)
