"""The per-connection protocol state machine (sans-IO, h11 style).

Rule 1, as in h11: everything that affects the state machine lives in this
file, and the transitions are the tables below. A ``Connection`` owns no I/O:

* ``receive_data(data)`` feeds bytes read from the socket (``b""`` = EOF);
* ``next_event()`` returns the next complete event, ``NEED_DATA`` when more
  bytes are needed, or ``CLOSED`` after EOF or a fatal ``Error``;
* ``send(event)`` returns the bytes to write for ``event``.

Errors: ``send`` raises ``LocalProtocolError`` when *this* side breaks the
rules; ``next_event`` raises ``RemoteProtocolError`` when the *peer* does (and
``VersionMismatch``, a kind of it, when the versions differ). After a remote
error the connection is in state ``ERROR``: it may still ``send`` one
``Error`` event to tell the peer why, and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any, Final, Literal, TypeAlias

import msgpack

from ._errors import LocalProtocolError, RemoteProtocolError, VersionMismatch
from ._events import (
    CONTROL_OPS,
    AckBatch,
    ArenaGone,
    Call,
    DeliverBatch,
    Error,
    Event,
    Hello,
    Incoming,
    KvWrite,
    KvWritten,
    PubAck,
    PublishBatch,
    Release,
    Reply,
    Request,
    Respond,
    Result,
    StreamEnd,
    Welcome,
)
from ._fixed import DECODERS, ENCODERS
from ._frames import (
    ACK_DESC,
    ACK_HEAD,
    ACK_KINDS,
    COUNT,
    DELIVER_FLAG_COUNTS,
    DELIVER_HEAD,
    FRAME_HEAD,
    KIND_ACK,
    KIND_CONTROL,
    KIND_DELIVER,
    KIND_PUBACK,
    KIND_PUBLISH,
    MAX_BATCH,
    MIN_MAX_FRAME,
    MSG_DESC,
    PUB_DESC,
    PUB_FLAG_KEEP,
    PUB_HEAD,
    PUBACK,
    encode_frame,
    iter_descriptors,
    pack_rows,
    split_frames,
)

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "Connection",
    "Role",
    "State",
]

PROTOCOL_VERSION: Final = 8
"""1: the first; 2: ``Welcome.store_name`` may be a file path (the store of a
broker with a state directory), not only a POSIX shared-memory name; 3: KV
puts, cas and deletes travel as ``KvWrite``/``KvWritten`` frames, requests as
``Request``/``Reply``, not calls; ``Incoming`` and ``Respond`` in fixed
layouts, not msgpack; 4: ``jobs_claim`` takes ``x`` (an explicit batch, of
``claim_many``: up to ``n`` of the ready jobs, not a prefetch share); 5: kept
batches (``PUB_HEAD`` flags, ``PUBACK_KEPT``, ``Release``, ``ArenaGone``,
``Welcome.keep_min``/``arena_prefix``, deliveries from an arena); 6: a
delivery frame names its first delivery id once, counts only for
redeliveries; 7: ``jobs_claim`` answers by columns (ids, payloads, first
token...), ``jobs_resolve`` takes groups ``g`` of argument-less resolutions
of one queue besides the entries ``r``; 8: direct request links (two
clients of one broker, ``Connection.direct``: ``Request`` one way, ``Reply``
or ``Result`` the other), ``serve`` takes ``direct`` (the serving client's
link address), the ``route`` call, the services epoch in the store's header
(store version 2)."""
DEFAULT_MAX_FRAME: Final = 1 << 20
"""Frame body limit until the handshake sets the connection's own."""

Role = Literal["client", "server"]
State = Literal["START", "HELLO_SENT", "HELLO_RECEIVED", "READY", "CLOSED", "ERROR"]


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
CLOSED: Final = _Sentinel("CLOSED")
NextEvent: TypeAlias = Event | _Sentinel

# --- transitions -------------------------------------------------------------
# (role, state, direction, event type) -> next state. Anything missing is
# illegal: a LocalProtocolError on send, a RemoteProtocolError on receive.
_HANDSHAKE: Final[dict[tuple[Role, State, str, type[Any]], State]] = {
    ("client", "START", "send", Hello): "HELLO_SENT",
    ("client", "HELLO_SENT", "recv", Welcome): "READY",
    ("server", "START", "recv", Hello): "HELLO_RECEIVED",
    ("server", "HELLO_RECEIVED", "send", Welcome): "READY",
}
# Events each role may send once READY (the peer receives the same set).
_READY_SENDS: Final[dict[Role, frozenset[type[Any]]]] = {
    "client": frozenset({Call, Respond, PublishBatch, AckBatch, KvWrite, Request}),
    "server": frozenset(
        {Result, Incoming, StreamEnd, Release, ArenaGone, PubAck, DeliverBatch, KvWritten, Reply}
    ),
}
# On a direct link (Connection.direct) the requester is the "client" and the
# serving client the "server"; READY from the start, and only these pass (not
# even an Error: either side just closes the link).
_DIRECT_SENDS: Final[dict[Role, frozenset[type[Any]]]] = {
    "client": frozenset({Request}),
    "server": frozenset({Reply, Result}),
}
# An Error may be sent or received in every live state and ends the connection.
_ERROR_FROM: Final[frozenset[State]] = frozenset(
    {"START", "HELLO_SENT", "HELLO_RECEIVED", "READY", "ERROR"}
)


def _next_state(
    role: Role,
    state: State,
    direction: str,
    etype: type[Any],
    sends: dict[Role, frozenset[type[Any]]] = _READY_SENDS,
) -> State | None:
    if etype is Error:
        return "CLOSED" if state in _ERROR_FROM and sends is _READY_SENDS else None
    if state == "READY":
        sender: Role = role if direction == "send" else ("server" if role == "client" else "client")
        return "READY" if etype in sends[sender] else None
    return _HANDSHAKE.get((role, state, direction, etype))


class Connection:
    """One side of one control connection.

    ``max_frame`` bounds frame bodies both ways; the server announces its
    value in ``Welcome`` and the client adopts it.
    """

    __slots__ = (
        "_buf",
        "_eof",
        "_packer",
        "_pending",
        "_ready_recvs",
        "_ready_sends",
        "_sends",
        "max_frame",
        "our_role",
        "state",
    )

    def __init__(self, our_role: Role, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < MIN_MAX_FRAME:
            raise LocalProtocolError(f"max_frame {max_frame} is below {MIN_MAX_FRAME}")
        self.our_role: Role = our_role
        self.state: State = "START"
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pending: list[tuple[int, bytes]] = []
        self._eof = False
        self._sends = _READY_SENDS
        # The READY rows of the transition table for this role (the hot path).
        self._ready_sends = _READY_SENDS[our_role]
        self._ready_recvs = _READY_SENDS["server" if our_role == "client" else "client"]
        self._packer = msgpack.Packer(use_bin_type=True)

    @classmethod
    def direct(cls, our_role: Role, max_frame: int) -> Connection:
        """One side of a direct request link between two clients of one
        broker: READY at once, with no handshake (both ends passed the
        broker's, so they speak its version and share its ``max_frame``).
        The requester (``"client"``) sends only ``Request``; the serving
        client (``"server"``) only ``Reply`` or ``Result``."""
        conn = cls(our_role, max_frame)
        conn.state = "READY"
        conn._sends = _DIRECT_SENDS
        conn._ready_sends = _DIRECT_SENDS[our_role]
        conn._ready_recvs = _DIRECT_SENDS["server" if our_role == "client" else "client"]
        return conn

    # --- receiving -----------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer (copied: the caller may reuse ``data``'s
        buffer afterwards); ``b""`` means the peer closed."""
        if data:
            if self._eof:
                raise LocalProtocolError("data received after EOF")
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> NextEvent:
        """The next event from the peer, ``NEED_DATA`` or ``CLOSED``."""
        if self.state in ("CLOSED", "ERROR"):
            return CLOSED
        if not self._pending and self._buf:
            try:
                frames = split_frames(self._buf, self.max_frame)
            except RemoteProtocolError:
                self.state = "ERROR"
                raise
            self._pending = frames[::-1]
        if not self._pending:
            if self._eof:
                if self._buf:
                    self.state = "ERROR"
                    raise RemoteProtocolError(
                        f"connection closed inside a frame ({len(self._buf)} bytes pending)"
                    )
                self.state = "CLOSED"
                return CLOSED
            return NEED_DATA
        kind, body = self._pending.pop()
        try:
            event = _decode_control(body) if kind == KIND_CONTROL else _decode(kind, body)
            etype = type(event)
            if self.state == "READY" and etype in self._ready_recvs:
                return event  # READY -> READY
            new = _next_state(self.our_role, self.state, "recv", etype, self._sends)
            if new is None:
                raise RemoteProtocolError(f"peer sent {etype.__name__} in state {self.state}")
            if isinstance(event, Hello | Welcome) and event.version != PROTOCOL_VERSION:
                raise VersionMismatch(PROTOCOL_VERSION, event.version)
        except RemoteProtocolError:
            self.state = "ERROR"
            raise
        if isinstance(event, Welcome):
            self.max_frame = max(MIN_MAX_FRAME, event.max_frame)
        self.state = new
        return event

    def events(self) -> list[Event]:
        """Every event available now (stops at ``NEED_DATA``/``CLOSED``)."""
        out: list[Event] = []
        while True:
            ev = self.next_event()
            if isinstance(ev, _Sentinel):
                return out
            out.append(ev)

    # --- sending -------------------------------------------------------------
    def send(self, event: Event) -> bytes:
        """The bytes that carry ``event``; moves the state machine."""
        etype = type(event)
        if self.state == "READY" and etype in self._ready_sends:  # READY -> READY
            fields = _CONTROL_FIELDS.get(etype)
            if fields is not None:
                return _encode_control(self._packer, event, fields, self.max_frame)
            return _encode(event, self.max_frame, self._packer)
        new = _next_state(self.our_role, self.state, "send", etype, self._sends)
        if new is None:
            raise LocalProtocolError(f"cannot send {etype.__name__} in state {self.state}")
        data = _encode(event, self.max_frame, self._packer)
        if isinstance(event, Welcome):
            self.max_frame = max(MIN_MAX_FRAME, event.max_frame)
        self.state = new
        return data


# --- codec -------------------------------------------------------------------
_CONTROL_FIELDS: Final[dict[type[Any], tuple[str, tuple[str, ...]]]] = {
    cls: (op, tuple(name for name, _ in schema)) for op, (cls, schema) in CONTROL_OPS.items()
}
"""event class -> (op, field names in wire order)."""


def _encode_control(
    packer: msgpack.Packer, event: Event, fields: tuple[str, tuple[str, ...]], max_frame: int
) -> bytes:
    op, names = fields
    try:
        body: bytes = packer.pack([op, *[getattr(event, name) for name in names]])
    except (TypeError, ValueError, OverflowError) as exc:
        packer.reset()
        raise LocalProtocolError(f"cannot encode {type(event).__name__}: {exc}") from exc
    n = len(body)
    if n > max_frame:
        raise LocalProtocolError(f"frame body of {n} bytes is over the limit {max_frame}")
    return FRAME_HEAD.pack(n, KIND_CONTROL) + body


def _encode(event: Event, max_frame: int, packer: msgpack.Packer) -> bytes:
    fixed = ENCODERS.get(type(event))
    if fixed is not None:
        return fixed(event, max_frame)
    if isinstance(event, PublishBatch):
        _check_batch(len(event.descs))
        body = b"".join(
            [
                PUB_HEAD.pack(
                    event.batch_no,
                    event.region_off,
                    event.region_len,
                    len(event.descs),
                    PUB_FLAG_KEEP if event.keep else 0,
                ),
                pack_rows(PUB_DESC, event.descs),
                event.subjects,
            ]
        )
        return encode_frame(KIND_PUBLISH, body, max_frame)
    if isinstance(event, DeliverBatch):
        _check_batch(event.count)
        if len(event.descs) != event.count * MSG_DESC.size:
            raise LocalProtocolError(
                f"deliver batch of {event.count} has {len(event.descs)} descriptor bytes"
            )
        if event.counts and len(event.counts) != event.count * COUNT.size:
            raise LocalProtocolError(
                f"deliver batch of {event.count} has {len(event.counts)} bytes of counts"
            )
        flags = DELIVER_FLAG_COUNTS if event.counts else 0
        head = DELIVER_HEAD.pack(event.sub_id, event.count, event.first_id, flags)
        body = b"".join((head, event.descs, event.counts, event.subjects))
        return encode_frame(KIND_DELIVER, body, max_frame)
    if isinstance(event, AckBatch):
        _check_batch(len(event.ranges))
        body = ACK_HEAD.pack(len(event.ranges)) + b"".join(ACK_DESC.pack(*r) for r in event.ranges)
        return encode_frame(KIND_ACK, body, max_frame)
    if isinstance(event, PubAck):
        body = PUBACK.pack(event.batch_no, event.first_seq, event.count, event.status)
        return encode_frame(KIND_PUBACK, body, max_frame)
    return _encode_control(packer, event, _CONTROL_FIELDS[type(event)], max_frame)


def _check_batch(n: int) -> None:
    if n > MAX_BATCH:
        raise LocalProtocolError(f"batch of {n} entries is over the limit {MAX_BATCH}")


def _decode(kind: int, body: bytes) -> Event:
    fixed = DECODERS.get(kind)
    if fixed is not None:
        return fixed(body)
    if kind == KIND_PUBLISH:
        (batch_no, region_off, region_len, _, flags), descs, subjects = iter_descriptors(
            body, PUB_HEAD, PUB_DESC, 3, "publish"
        )
        if flags & ~PUB_FLAG_KEEP:
            raise RemoteProtocolError(f"publish batch {batch_no}: unknown flags {flags:#x}")
        raw = body[PUB_HEAD.size : PUB_HEAD.size + len(descs) * PUB_DESC.size]
        keep = bool(flags)
        return PublishBatch(batch_no, region_off, region_len, descs, subjects, raw, keep)
    if kind == KIND_DELIVER:
        if len(body) < DELIVER_HEAD.size:
            raise RemoteProtocolError(f"truncated deliver frame: {len(body)} bytes")
        sub_id, count, first_id, flags = DELIVER_HEAD.unpack_from(body, 0)
        if flags & ~DELIVER_FLAG_COUNTS:
            raise RemoteProtocolError(f"deliver frame: unknown flags {flags:#x}")
        end = DELIVER_HEAD.size + count * MSG_DESC.size
        counts_end = end + (count * COUNT.size if flags else 0)
        if count > MAX_BATCH or len(body) < counts_end:
            raise RemoteProtocolError(f"deliver frame of {len(body)} bytes cannot hold {count}")
        return DeliverBatch(
            sub_id,
            count,
            first_id,
            body[DELIVER_HEAD.size : end],
            body[counts_end:],
            body[end:counts_end],
        )
    if kind == KIND_ACK:
        _, ranges, rest = iter_descriptors(body, ACK_HEAD, ACK_DESC, 0, "ack")
        if rest:
            raise RemoteProtocolError(f"ack frame has {len(rest)} trailing bytes")
        for r in ranges:
            if r[2] not in ACK_KINDS:
                raise RemoteProtocolError(f"unknown ack kind {r[2]}")
        return AckBatch(ranges)
    if kind == KIND_PUBACK:
        if len(body) != PUBACK.size:
            raise RemoteProtocolError(f"puback frame of {len(body)} bytes, expected {PUBACK.size}")
        return PubAck(*PUBACK.unpack(body))
    return _decode_control(body)


def _decode_control(body: bytes) -> Event:
    try:
        msg = msgpack.unpackb(body, use_list=True, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types for garbage
        raise RemoteProtocolError(f"control frame is not valid msgpack: {exc}") from None
    if not isinstance(msg, list) or not msg or not isinstance(msg[0], str):
        raise RemoteProtocolError("control frame must be a msgpack array starting with an op")
    op = msg[0]
    entry = CONTROL_OPS.get(op)
    if entry is None:
        raise RemoteProtocolError(f"unknown op {op!r}")
    cls, schema = entry
    values = msg[1:]
    if len(values) != len(schema):
        raise RemoteProtocolError(
            f"op {op!r} takes {len(schema)} fields, the peer sent {len(values)}"
        )
    typed, exact = _TYPED_FIELDS[op]
    if tuple(map(type, typed(values))) != exact:  # not all of the exact types: look closer
        for (name, typ), value in zip(schema, values, strict=True):
            if typ is not object and (not isinstance(value, typ) or isinstance(value, bool)):
                raise RemoteProtocolError(
                    f"op {op!r} field {name!r} must be {getattr(typ, '__name__', typ)}, "
                    f"got {type(value).__name__}"
                )
    event: Event = cls(*values)
    return event


def _typed_fields(
    schema: tuple[tuple[str, type | tuple[type, ...]], ...],
) -> tuple[Callable[[list[Any]], tuple[Any, ...]], tuple[Any, ...]]:
    """(the values of the typed fields, as a tuple; their declared types): a
    message whose typed fields have exactly those types passes the schema
    check in one C-level comparison."""
    idx = [i for i, (_, typ) in enumerate(schema) if typ is not object]
    exact = tuple(schema[i][1] for i in idx)
    if len(idx) == 1:
        i = idx[0]
        return (lambda values: (values[i],)), exact
    return itemgetter(*idx), exact


_TYPED_FIELDS: Final = {op: _typed_fields(schema) for op, (_, schema) in CONTROL_OPS.items()}
