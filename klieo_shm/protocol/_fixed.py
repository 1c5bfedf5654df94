"""Fixed-layout frames of the round-trip hot paths: KV writes and requests.

Each frame is a ``struct`` head (``_frames``: ``KV_WRITE_HEAD``,
``KV_WRITTEN``, ``REQUEST_HEAD``, ``INCOMING_HEAD``, ``RESPOND_HEAD``,
``REPLY_HEAD``) followed by the UTF-8 strings whose lengths the head gives,
in head order, then the payload (the rest of the body). Encoding one costs a
``struct.pack`` and a join; decoding one a ``struct.unpack_from`` and slices,
where a msgpack control frame costs several times that.

``ENCODERS`` maps an event class to ``(event, max_frame) -> frame bytes``
(raising ``LocalProtocolError``), ``DECODERS`` a frame kind to ``body ->
event`` (raising ``RemoteProtocolError``). Names are checked here only for
fitting and being UTF-8; their rules are the broker's to check.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import Event, Incoming, KvWrite, KvWritten, Reply, Request, Respond
from ._frames import (
    FRAME_HEAD,
    INCOMING_HEAD,
    KIND_INCOMING,
    KIND_KV_WRITE,
    KIND_KV_WRITTEN,
    KIND_REPLY,
    KIND_REQUEST,
    KIND_RESPOND,
    KV_OP_CAS,
    KV_OP_DELETE,
    KV_OPS,
    KV_WRITE_HEAD,
    KV_WRITTEN,
    REPLY_HEAD,
    REQUEST_HEAD,
    RESPOND_HEAD,
)

__all__ = ["DECODERS", "ENCODERS"]


def _frame(kind: int, max_frame: int, *parts: bytes) -> bytes:
    n = sum(map(len, parts))
    if n > max_frame:
        raise LocalProtocolError(f"frame body of {n} bytes is over the limit {max_frame}")
    return b"".join((FRAME_HEAD.pack(n, kind), *parts))


def _head(what: str, head: struct.Struct, *fields: Any) -> bytes:
    try:
        return head.pack(*fields)
    except struct.error as exc:
        raise LocalProtocolError(f"cannot encode {what}: {exc}") from None


def _utf8(what: str, text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"cannot encode {what}: {exc}") from None


def _split(
    body: bytes, head: struct.Struct, lengths: tuple[int, ...], what: str
) -> tuple[tuple[Any, ...], list[str], bytes]:
    """(head fields, the strings whose lengths are fields ``lengths``, the rest)."""
    if len(body) < head.size:
        raise RemoteProtocolError(f"truncated {what} frame: {len(body)} bytes")
    fields = head.unpack_from(body)
    pos = head.size
    texts: list[str] = []
    for i in lengths:
        end = pos + fields[i]
        if end > len(body):
            raise RemoteProtocolError(f"{what} frame: the names do not fit")
        try:
            texts.append(body[pos:end].decode())
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(f"{what} frame: a name is not UTF-8: {exc}") from None
        pos = end
    return fields, texts, body[pos:]


# --- KV writes -----------------------------------------------------------------
def _enc_kv_write(ev: KvWrite, max_frame: int) -> bytes:
    bucket, key = _utf8("KvWrite", ev.bucket), _utf8("KvWrite", ev.key)
    expected = ev.expected
    head = _head(
        "KvWrite",
        KV_WRITE_HEAD,
        ev.call_id,
        ev.op,
        expected is not None,
        len(bucket),
        len(key),
        expected or 0,
    )
    return _frame(KIND_KV_WRITE, max_frame, head, bucket, key, ev.value)


def _dec_kv_write(body: bytes) -> KvWrite:
    (call_id, op, has_expected, _, _, expected), (bucket, key), value = _split(
        body, KV_WRITE_HEAD, (3, 4), "kv write"
    )
    if op not in KV_OPS:
        raise RemoteProtocolError(f"unknown kv write op {op}")
    if has_expected > (op == KV_OP_CAS):
        raise RemoteProtocolError(f"kv write op {op} with has_expected {has_expected}")
    if expected and not has_expected:
        raise RemoteProtocolError(f"kv write with expected {expected} but has_expected 0")
    if op == KV_OP_DELETE and value:
        raise RemoteProtocolError(f"kv delete frame carries {len(value)} value bytes")
    return KvWrite(call_id, op, bucket, key, value, expected if has_expected else None)


def _enc_kv_written(ev: KvWritten, max_frame: int) -> bytes:
    return _frame(
        KIND_KV_WRITTEN, max_frame, _head("KvWritten", KV_WRITTEN, ev.call_id, ev.revision)
    )


def _dec_kv_written(body: bytes) -> KvWritten:
    if len(body) != KV_WRITTEN.size:
        raise RemoteProtocolError(
            f"kv written frame of {len(body)} bytes, expected {KV_WRITTEN.size}"
        )
    return KvWritten(*KV_WRITTEN.unpack(body))


# --- requests ------------------------------------------------------------------
def _enc_request(ev: Request, max_frame: int) -> bytes:
    subject = _utf8("Request", ev.subject)
    head = _head("Request", REQUEST_HEAD, ev.call_id, ev.timeout, len(subject))
    return _frame(KIND_REQUEST, max_frame, head, subject, ev.payload)


def _dec_request(body: bytes) -> Request:
    (call_id, timeout, _), (subject,), payload = _split(body, REQUEST_HEAD, (2,), "request")
    return Request(call_id, subject, payload, timeout)


def _enc_incoming(ev: Incoming, max_frame: int) -> bytes:
    subject = _utf8("Incoming", ev.subject)
    head = _head("Incoming", INCOMING_HEAD, ev.req_id, ev.svc_id, len(subject))
    return _frame(KIND_INCOMING, max_frame, head, subject, ev.payload)


def _dec_incoming(body: bytes) -> Incoming:
    (req_id, svc_id, _), (subject,), payload = _split(body, INCOMING_HEAD, (2,), "incoming")
    return Incoming(req_id, svc_id, subject, payload)


def _enc_respond(ev: Respond, max_frame: int) -> bytes:
    error_type = _utf8("Respond", ev.error_type)
    head = _head("Respond", RESPOND_HEAD, ev.req_id, len(error_type))
    return _frame(KIND_RESPOND, max_frame, head, error_type, ev.payload)


def _dec_respond(body: bytes) -> Respond:
    (req_id, _), (error_type,), payload = _split(body, RESPOND_HEAD, (1,), "respond")
    return Respond(req_id, payload, error_type)


def _enc_reply(ev: Reply, max_frame: int) -> bytes:
    return _frame(KIND_REPLY, max_frame, _head("Reply", REPLY_HEAD, ev.call_id), ev.payload)


def _dec_reply(body: bytes) -> Reply:
    if len(body) < REPLY_HEAD.size:
        raise RemoteProtocolError(f"truncated reply frame: {len(body)} bytes")
    (call_id,) = REPLY_HEAD.unpack_from(body)
    return Reply(call_id, body[REPLY_HEAD.size :])


ENCODERS: Final[dict[type[Any], Callable[[Any, int], bytes]]] = {
    KvWrite: _enc_kv_write,
    KvWritten: _enc_kv_written,
    Request: _enc_request,
    Incoming: _enc_incoming,
    Respond: _enc_respond,
    Reply: _enc_reply,
}
DECODERS: Final[dict[int, Callable[[bytes], Event]]] = {
    KIND_KV_WRITE: _dec_kv_write,
    KIND_KV_WRITTEN: _dec_kv_written,
    KIND_REQUEST: _dec_request,
    KIND_INCOMING: _dec_incoming,
    KIND_RESPOND: _dec_respond,
    KIND_REPLY: _dec_reply,
}
