"""Name rules and NATS-style wildcard matching, as pure functions.

Subjects are dot-separated tokens (``orders.eu.created``). A subscription
pattern may use ``*`` for exactly one token and ``>`` as its last token for
one or more remaining tokens. Every ``validate_*`` function returns its input
unchanged when it is valid and raises :class:`~klieo_shm.InvalidArgument`
naming the rule that failed otherwise.
"""

from __future__ import annotations

import re
from typing import Final

from ._errors import InvalidArgument

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_SUBJECT_LENGTH",
    "subject_matches",
    "validate_bucket",
    "validate_durable",
    "validate_key",
    "validate_key_pattern",
    "validate_queue",
    "validate_subject",
    "validate_subject_pattern",
    "validate_worker_id",
]

MAX_SUBJECT_LENGTH: Final = 1024
MAX_NAME_LENGTH: Final = 255

_TOKEN_CHARS: Final = re.compile(r"[^\s.*>\x00-\x1f\x7f]+")
_NAME_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]+")
_DURABLE: Final = re.compile(r"[A-Za-z0-9_-]+")
_KEY: Final = re.compile(r"[-/_=.A-Za-z0-9]+")
_KEY_PATTERN_TOKEN: Final = re.compile(r"[-/_=A-Za-z0-9]+")


def _tokens(what: str, value: object, max_length: int) -> list[str]:
    if not isinstance(value, str):
        raise InvalidArgument(what, value, "must be a str")
    if not value:
        raise InvalidArgument(what, value, "must not be empty")
    if len(value) > max_length:
        raise InvalidArgument(what, value, f"must be at most {max_length} characters")
    tokens = value.split(".")
    if any(not t for t in tokens):
        raise InvalidArgument(what, value, "tokens between dots must not be empty")
    return tokens


def validate_subject(subject: str) -> str:
    """A subject to publish on: dot-separated tokens, no wildcards, no white
    space or control characters, at most ``MAX_SUBJECT_LENGTH`` characters."""
    for token in _tokens("subject", subject, MAX_SUBJECT_LENGTH):
        if not _TOKEN_CHARS.fullmatch(token):
            raise InvalidArgument(
                "subject",
                subject,
                "tokens must not contain white space, control characters, '*' or '>'",
            )
    return subject


def validate_subject_pattern(pattern: str) -> str:
    """A subscription pattern: a subject whose tokens may also be ``*`` (one
    token) or, as the last token only, ``>`` (one or more tokens)."""
    tokens = _tokens("subject pattern", pattern, MAX_SUBJECT_LENGTH)
    for i, token in enumerate(tokens):
        if token == "*":
            continue
        if token == ">":
            if i != len(tokens) - 1:
                raise InvalidArgument("subject pattern", pattern, "'>' must be the last token")
            continue
        if not _TOKEN_CHARS.fullmatch(token):
            raise InvalidArgument(
                "subject pattern",
                pattern,
                "'*' and '>' must be whole tokens; no white space or control characters",
            )
    return pattern


def _dotted_name(what: str, value: str) -> str:
    for token in _tokens(what, value, MAX_NAME_LENGTH):
        if not _NAME_TOKEN.fullmatch(token):
            raise InvalidArgument(
                what, value, "tokens may contain only letters, digits, '_' and '-'"
            )
    return value


def validate_bucket(bucket: str) -> str:
    """A KV bucket: dot-separated tokens of letters, digits, ``_`` and ``-``
    (``dedup.orders`` is valid), at most ``MAX_NAME_LENGTH`` characters."""
    return _dotted_name("bucket", bucket)


def validate_queue(queue: str) -> str:
    """A job queue: the same rule as a bucket (``queue.work`` is valid)."""
    return _dotted_name("queue", queue)


def validate_durable(durable: str) -> str:
    """A durable consumer name: letters, digits, ``_`` and ``-`` only (no dots,
    as in NATS), at most ``MAX_NAME_LENGTH`` characters."""
    if not isinstance(durable, str):
        raise InvalidArgument("durable", durable, "must be a str")
    if not durable:
        raise InvalidArgument("durable", durable, "must not be empty")
    if len(durable) > MAX_NAME_LENGTH:
        raise InvalidArgument("durable", durable, f"must be at most {MAX_NAME_LENGTH} characters")
    if not _DURABLE.fullmatch(durable):
        raise InvalidArgument("durable", durable, "may contain only letters, digits, '_' and '-'")
    return durable


def validate_key(key: str) -> str:
    """A KV key, as NATS KV allows: letters, digits and ``-/_=.``; it must not
    start or end with ``.`` nor contain ``..``; at most ``MAX_NAME_LENGTH``."""
    if not isinstance(key, str):
        raise InvalidArgument("key", key, "must be a str")
    if not key:
        raise InvalidArgument("key", key, "must not be empty")
    if len(key) > MAX_NAME_LENGTH:
        raise InvalidArgument("key", key, f"must be at most {MAX_NAME_LENGTH} characters")
    if not _KEY.fullmatch(key):
        raise InvalidArgument("key", key, "may contain only letters, digits and '-/_=.'")
    if key.startswith(".") or key.endswith(".") or ".." in key:
        raise InvalidArgument("key", key, "must not start or end with '.' nor contain '..'")
    return key


def validate_key_pattern(pattern: str) -> str:
    """A key pattern for ``watch``: a key whose dot-separated tokens may also
    be ``*`` or, last, ``>``."""
    tokens = _tokens("key pattern", pattern, MAX_NAME_LENGTH)
    for i, token in enumerate(tokens):
        if token == "*" or (token == ">" and i == len(tokens) - 1):
            continue
        if not _KEY_PATTERN_TOKEN.fullmatch(token):
            raise InvalidArgument(
                "key pattern",
                pattern,
                "tokens are key characters, '*', or '>' as the last token",
            )
    return pattern


def validate_worker_id(worker_id: str) -> str:
    """A worker id: a non-empty str without control characters, at most
    ``MAX_NAME_LENGTH`` characters."""
    if not isinstance(worker_id, str) or not worker_id:
        raise InvalidArgument("worker_id", worker_id, "must be a non-empty str")
    if len(worker_id) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            "worker_id", worker_id, f"must be at most {MAX_NAME_LENGTH} characters"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in worker_id):
        raise InvalidArgument("worker_id", worker_id, "must not contain control characters")
    return worker_id


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` (no wildcards) matches ``pattern``.

    ``*`` matches exactly one token; a trailing ``>`` matches one or more
    tokens. Both arguments are assumed valid.
    """
    if pattern == subject:
        return True
    p = pattern.split(".")
    s = subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s):
            return False
        if token != "*" and token != s[i]:
            return False
    return len(p) == len(s)
