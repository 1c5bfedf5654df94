"""Errors carry data and subclass the builtins they mean; values are frozen
and check their inputs."""

from __future__ import annotations

import dataclasses

import pytest

import klieo_shm
from klieo_shm import (
    AlreadyAcknowledged,
    BusError,
    Closed,
    Conflict,
    DeadLetter,
    Full,
    HandlerError,
    InvalidArgument,
    Job,
    KvChange,
    KvEntry,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    QueueStats,
    Timeout,
)
from klieo_shm._values import as_bytes, check_duration, check_headers

ERRORS = [
    (NotFound("durable", "d1"), LookupError, {"what": "durable", "name": "d1"}),
    (Timeout("request", 0.5), TimeoutError, {"operation": "request", "seconds": 0.5}),
    (Conflict("stale", expected=3, current=5), BusError, {"expected": 3, "current": 5}),
    (Full("payload storage", 10), BusError, {"resource": "payload storage", "limit": 10}),
    (PayloadTooLarge(2048, 1024), ValueError, {"size": 2048, "limit": 1024}),
    (InvalidArgument("key", "..", "no dots"), ValueError, {"what": "key", "rule": "no dots"}),
    (AlreadyAcknowledged("message", "ack"), InvalidArgument, {"previous": "ack"}),
    (Closed("/tmp/x.sock", "broker gone"), ConnectionError, {"reason": "broker gone"}),
    (HandlerError("svc", "KeyError", "'k'"), BusError, {"type_name": "KeyError"}),
    (ProtocolError("bad frame"), BusError, {}),
]


@pytest.mark.parametrize(
    ("error", "builtin", "data"), ERRORS, ids=[type(e[0]).__name__ for e in ERRORS]
)
def test_errors_are_bus_errors_subclassing_their_builtin_and_carry_data(error, builtin, data):
    assert isinstance(error, BusError)
    assert isinstance(error, builtin)
    for name, value in data.items():
        assert getattr(error, name) == value


@pytest.mark.parametrize(
    ("error", "builtin", "data"), ERRORS, ids=[type(e[0]).__name__ for e in ERRORS]
)
def test_error_messages_mention_their_data(error, builtin, data):
    text = str(error)
    for value in data.values():
        if isinstance(value, str):
            assert value in text


def test_conflict_defaults_to_unknown_revisions():
    error = Conflict("held")
    assert (error.expected, error.current) == (None, None)


def test_full_without_a_limit():
    assert Full("queue").limit is None
    assert "limit" not in str(Full("queue"))


def test_every_public_error_is_exported_and_rooted_at_bus_error():
    for name in (
        "NotFound",
        "Timeout",
        "Conflict",
        "Full",
        "PayloadTooLarge",
        "InvalidArgument",
        "Closed",
        "ProtocolError",
        "AlreadyAcknowledged",
        "HandlerError",
    ):
        assert issubclass(getattr(klieo_shm, name), BusError)


def test_errors_can_be_raised_from_foreign_errors():
    def translate() -> None:
        try:
            raise OSError("socket gone")
        except OSError as exc:
            raise Closed("sock") from exc

    with pytest.raises(Closed) as caught:
        translate()

    assert isinstance(caught.value.__cause__, OSError)


@pytest.mark.parametrize(
    "payload", [b"x", bytearray(b"x"), memoryview(b"x")], ids=["bytes", "bytearray", "memoryview"]
)
def test_as_bytes_accepts_bytes_like_and_returns_bytes(payload):
    assert as_bytes(payload) == b"x"
    assert type(as_bytes(payload)) is bytes


def test_as_bytes_copies_mutable_input():
    buffer = bytearray(b"abc")
    data = as_bytes(buffer)
    buffer[0] = ord("z")
    assert data == b"abc"


@pytest.mark.parametrize("payload", ["text", 1, None, [1]], ids=["str", "int", "none", "list"])
def test_as_bytes_refuses_non_bytes(payload):
    with pytest.raises(InvalidArgument, match="bytes-like"):
        as_bytes(payload)


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf"), "1", True, None])
def test_check_duration_refuses_bad_durations(seconds):
    with pytest.raises(InvalidArgument):
        check_duration("ttl", seconds)


def test_check_duration_positive_refuses_zero_and_returns_floats():
    assert check_duration("delay", 0) == 0.0
    assert isinstance(check_duration("delay", 1), float)
    with pytest.raises(InvalidArgument, match="> 0"):
        check_duration("ttl", 0, positive=True)


def test_check_headers_copies_and_validates():
    original = {"a": "1"}
    copy = check_headers(original)
    assert copy == original
    assert copy is not original
    assert check_headers(None) == {}
    for bad in ({"a": 1}, {1: "a"}, [("a", "1")]):
        with pytest.raises(InvalidArgument):
            check_headers(bad)


def test_job_takes_bytes_like_payloads_as_bytes():
    assert Job(bytearray(b"p")).payload == b"p"
    assert type(Job(memoryview(b"p")).payload) is bytes
    assert Job(b"p") == Job(b"p", dedup_key=None, max_attempts=None)


@pytest.mark.parametrize("max_attempts", [0, -1, 1.5, True, "3"])
def test_job_refuses_bad_max_attempts(max_attempts):
    with pytest.raises(InvalidArgument):
        Job(b"p", max_attempts=max_attempts)


def test_job_refuses_an_invalid_dedup_key():
    with pytest.raises(InvalidArgument):
        Job(b"p", dedup_key="a..b")


@pytest.mark.parametrize(
    "value",
    [
        KvEntry(b"v", 1),
        KvChange("b", "k", b"v", 1),
        Job(b"p"),
        DeadLetter("id", "q", b"p", 5, "why"),
        QueueStats("q", 0, 0, 0, 0),
    ],
    ids=lambda v: type(v).__name__,
)
def test_values_are_frozen_and_slotted(value):
    field = dataclasses.fields(value)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, field, None)
    assert not hasattr(value, "__dict__")


def test_kv_change_defaults_to_a_put():
    assert KvChange("b", "k", b"v", 3).operation == "put"
