"""The events of the control protocol: slotted values, never changed once
made (not ``frozen``: a frozen dataclass's ``__init__`` costs 4x, and one is
made for every frame sent and received).

Control events travel as a msgpack array ``[op, field1, field2, ...]`` in a
``KIND_CONTROL`` frame; ``_CONTROL_SCHEMA`` lists each op's fields and their
types, and is the only place the wire order of fields is written down. The
hot-path events (``PublishBatch``, ``PubAck``, ``DeliverBatch``, ``AckBatch``,
``KvWrite``, ``KvWritten``, ``Request``, ``Incoming``, ``Respond``, ``Reply``)
use the fixed layouts of ``_frames`` (coded in ``_frames`` and ``_fixed``).

Who sends what (checked by ``_connection``):

=============  ======  =====================================================
event          sender  meaning
=============  ======  =====================================================
Hello          client  first frame: protocol version, pid, a display name
Welcome        server  handshake accepted: segment names and limits
Call           client  a numbered call (subscribe, serve, ...)
Result         server  the answer to ``Call`` ``call_id``: value or error
Request        client  a numbered request (a fixed layout)
Incoming       server  a request for a service this client serves
Respond        client  the reply (or handler error) to an ``Incoming``
Reply          server  the reply to ``Request`` ``call_id`` (errors: ``Result``)
StreamEnd      server  a subscription ended by the broker (durable deleted)
Release        server  kept publish batches whose arena regions are free again
ArenaGone      server  an arena kept batches were read from is gone: unmap it
Error          either  fatal: the sender closes the connection after it
PublishBatch   client  messages whose payloads lie in the client's tx arena
PubAck         server  verdict on one PublishBatch, in batch order
DeliverBatch   server  deliveries whose payloads lie in the store or an arena
AckBatch       client  ranges of delivery ids acked, nak'ed, termed, touched
KvWrite        client  a numbered KV put, cas or delete (a fixed layout)
KvWritten      server  the revision a ``KvWrite`` took (its errors: ``Result``)
=============  ======  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

__all__ = [
    "CONTROL_OPS",
    "AckBatch",
    "ArenaGone",
    "Call",
    "DeliverBatch",
    "Error",
    "Event",
    "Hello",
    "Incoming",
    "KvWrite",
    "KvWritten",
    "PubAck",
    "PublishBatch",
    "Release",
    "Reply",
    "Request",
    "Respond",
    "Result",
    "StreamEnd",
    "Welcome",
]


@dataclass(slots=True)
class Hello:
    """Client -> server, first frame. ``pid`` is informational: the broker
    trusts only SO_PEERCRED."""

    version: int
    pid: int
    name: str


@dataclass(slots=True)
class Welcome:
    """Server -> client: the handshake succeeded.

    ``arena_name``/``arena_size``: the client's own tx arena (map read-write).
    ``store_name``/``store_size``: the broker's payload store (map read-only):
    a POSIX shared-memory name (``/name``), or the path of a file when the
    name holds more than one ``/`` (the store of a broker with a state
    directory).
    ``max_payload``: largest payload accepted; ``max_frame``: largest frame
    body either side may send on this connection.
    ``keep_min``: the smallest publish batch (region bytes) the broker may
    keep in the arena instead of copying it (0: it keeps none).
    ``arena_prefix``: the tx arena of client ``n`` is the segment
    ``arena_prefix + str(n)`` (mapped read-only to read kept batches).
    """

    version: int
    client_id: int
    arena_name: str
    arena_size: int
    store_name: str
    store_size: int
    max_payload: int
    max_frame: int
    keep_min: int
    arena_prefix: str


@dataclass(slots=True)
class Call:
    """Client -> server: call ``method`` with ``args``; answered by one
    ``Result`` with the same ``call_id``."""

    call_id: int
    method: str
    args: dict[str, Any]


@dataclass(slots=True)
class Result:
    """Server -> client: the outcome of a ``Call``, or the error of a
    ``KvWrite`` or ``Request``. ``error_type`` is empty on success; otherwise
    it names a klieo_shm error class and ``error_args`` holds its
    constructor arguments."""

    call_id: int
    value: Any
    error_type: str = ""
    error_args: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class Request:
    """Client -> server: request ``call_id`` on ``subject``, failed by the
    broker with ``Timeout`` after ``timeout`` seconds; answered by a
    ``Reply`` or by a ``Result`` carrying the error."""

    call_id: int
    subject: str
    payload: bytes
    timeout: float


@dataclass(slots=True)
class Reply:
    """Server -> client: the reply to ``Request`` ``call_id``."""

    call_id: int
    payload: bytes


@dataclass(slots=True)
class Incoming:
    """Server -> client: a request for service ``svc_id`` to answer with
    ``Respond(req_id, ...)``."""

    req_id: int
    svc_id: int
    subject: str
    payload: bytes


@dataclass(slots=True)
class Respond:
    """Client -> server: the reply to ``Incoming`` ``req_id``. A non-empty
    ``error_type`` means the handler raised; ``payload`` is then its message."""

    req_id: int
    payload: bytes
    error_type: str = ""


@dataclass(slots=True)
class StreamEnd:
    """Server -> client: subscription ``sub_id`` ended for ``reason``."""

    sub_id: int
    reason: str


@dataclass(slots=True)
class Release:
    """Server -> client: the broker no longer reads the arena regions of
    these kept publish batches (answered ``PUBACK_KEPT``); they are the
    client's again."""

    batch_nos: list[int]


@dataclass(slots=True)
class ArenaGone:
    """Server -> client: the tx arena of client ``client_id`` is gone (no
    kept batch in it is owed any more); a client that mapped it to read
    kept batches unmaps it."""

    client_id: int


@dataclass(slots=True)
class Error:
    """Either way: a fatal error; the sender closes after sending it."""

    code: str
    message: str


@dataclass(slots=True, eq=False)
class PublishBatch:
    """Client -> server. ``descs`` are ``(rel_off, hdr_len, pay_len,
    subj_len)`` tuples; ``subjects`` their subjects concatenated. ``raw``:
    the descriptors packed as they came on the wire (set by the decoder, so
    that a journal can keep them without packing them again; the encoder
    packs ``descs``). When set, it is the packing of ``descs``: whoever
    changes ``descs`` must clear it. ``keep``: the client leaves the region
    untouched until released (``PUB_FLAG_KEEP``)."""

    batch_no: int
    region_off: int
    region_len: int
    descs: list[tuple[int, ...]]
    subjects: bytes
    raw: bytes = b""
    keep: bool = False


@dataclass(slots=True)
class PubAck:
    """Server -> client: batch ``batch_no`` got sequences ``first_seq ..
    first_seq + count - 1`` (``status`` PUBACK_OK) or was refused."""

    batch_no: int
    first_seq: int
    count: int
    status: int


@dataclass(slots=True, eq=False)
class DeliverBatch:
    """Server -> client. ``count`` deliveries with the ids ``first_id``,
    ``first_id + 1``, ...: ``descs`` holds their packed ``MSG_DESC`` entries
    (packed once per message by the broker), ``counts`` their delivery
    counts as packed u32 (empty: all 1), ``subjects`` their subjects
    concatenated. :meth:`entries` unpacks them as ``(delivery_id,
    delivery_count, seq, store_off, hdr_len, pay_len, subj_len)`` tuples."""

    sub_id: int
    count: int
    first_id: int
    descs: bytes
    subjects: bytes
    counts: bytes = b""

    def entries(self) -> list[tuple[int, ...]]:
        from ._frames import COUNT, MSG_DESC

        counts = [c for (c,) in COUNT.iter_unpack(self.counts)] if self.counts else None
        return [
            (self.first_id + i, counts[i] if counts else 1, *desc)
            for i, desc in enumerate(MSG_DESC.iter_unpack(self.descs))
        ]


@dataclass(slots=True, eq=False)
class AckBatch:
    """Client -> server. ``ranges`` are ``(first_delivery_id, n, kind,
    delay_ms)`` tuples."""

    ranges: list[tuple[int, ...]]


@dataclass(slots=True)
class KvWrite:
    """Client -> server: KV write ``call_id``; ``op`` is one of ``KV_OP_PUT``,
    ``KV_OP_CAS`` (``expected``: the revision the key must be at, ``None``:
    it must be absent) and ``KV_OP_DELETE`` (``value`` empty). Answered by a
    ``KvWritten`` or, when it fails, by a ``Result`` carrying the error, with
    the same ``call_id``; names and limits are the broker's to check."""

    call_id: int
    op: int
    bucket: str
    key: str
    value: bytes
    expected: int | None = None


@dataclass(slots=True)
class KvWritten:
    """Server -> client: ``KvWrite`` ``call_id`` took ``revision`` (0: a
    delete of an absent key, which writes nothing)."""

    call_id: int
    revision: int


Event: TypeAlias = (
    Hello
    | Welcome
    | Call
    | Result
    | Incoming
    | Respond
    | StreamEnd
    | Release
    | ArenaGone
    | Error
    | PublishBatch
    | PubAck
    | DeliverBatch
    | AckBatch
    | KvWrite
    | KvWritten
    | Request
    | Reply
)

CONTROL_OPS: Final[dict[str, tuple[type[Any], tuple[tuple[str, type | tuple[type, ...]], ...]]]] = {
    "hello": (Hello, (("version", int), ("pid", int), ("name", str))),
    "welcome": (
        Welcome,
        (
            ("version", int),
            ("client_id", int),
            ("arena_name", str),
            ("arena_size", int),
            ("store_name", str),
            ("store_size", int),
            ("max_payload", int),
            ("max_frame", int),
            ("keep_min", int),
            ("arena_prefix", str),
        ),
    ),
    "call": (Call, (("call_id", int), ("method", str), ("args", dict))),
    "result": (
        Result,
        (("call_id", int), ("value", object), ("error_type", str), ("error_args", list)),
    ),
    "end": (StreamEnd, (("sub_id", int), ("reason", str))),
    "release": (Release, (("batch_nos", list),)),
    "gone": (ArenaGone, (("client_id", int),)),
    "error": (Error, (("code", str), ("message", str))),
}
"""op -> (event class, ((field, accepted type(s)), ...)) in wire order."""
