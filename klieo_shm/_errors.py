"""The error hierarchy every backend raises.

All errors derive from :class:`BusError`; where a builtin exception describes
the same failure, the error subclasses it too, so ``except TimeoutError`` or
``except LookupError`` keeps working. Errors carry data as attributes, not
only text. Backends translate foreign errors at their boundary with
``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "AlreadyAcknowledged",
    "BusError",
    "Closed",
    "Conflict",
    "Full",
    "HandlerError",
    "InvalidArgument",
    "NotFound",
    "PayloadTooLarge",
    "ProtocolError",
    "Timeout",
]


class BusError(Exception):
    """Root of every error a klieo_shm backend raises."""


class NotFound(BusError, LookupError):
    """The thing asked for does not exist: no server for a subject, no such
    durable, job or dead letter.

    ``what`` names the kind of thing, ``name`` the name that was looked up.
    """

    def __init__(self, what: str, name: str) -> None:
        super().__init__(f"{what} not found: {name!r}")
        self.what = what
        self.name = name


class Timeout(BusError, TimeoutError):
    """An operation did not complete within ``seconds``."""

    def __init__(self, operation: str, seconds: float) -> None:
        super().__init__(f"{operation} timed out after {seconds:g} s")
        self.operation = operation
        self.seconds = seconds


class Conflict(BusError):
    """A conditional operation found another state than it expected.

    From ``cas``: ``expected`` is the revision the caller gave (``None`` for
    "absent") and ``current`` the key's revision now (``None`` when absent).
    From fencing (acks, heartbeats, releases with an outdated token):
    ``expected`` is the caller's token and ``current`` the live one (``None``
    when nobody holds it any more). From ``lease``: ``current`` is the token of
    the holder.
    """

    def __init__(
        self,
        message: str,
        *,
        expected: int | None = None,
        current: int | None = None,
    ) -> None:
        super().__init__(message)
        self.expected = expected
        self.current = current


class Full(BusError):
    """A bounded resource is full and did not drain in time.

    ``resource`` names it (for example ``"payload storage"`` or
    ``"max_ack_pending of durable 'd'"``) and ``limit`` its size, when known.
    """

    def __init__(self, resource: str, limit: int | None = None) -> None:
        detail = f" (limit {limit})" if limit is not None else ""
        super().__init__(f"{resource} is full{detail}")
        self.resource = resource
        self.limit = limit


class PayloadTooLarge(BusError, ValueError):
    """A payload of ``size`` bytes is over the backend's ``limit``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload of {size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class InvalidArgument(BusError, ValueError):
    """An argument broke a rule. ``rule`` states the rule, ``value`` the input."""

    def __init__(self, what: str, value: object, rule: str) -> None:
        super().__init__(f"invalid {what} {value!r}: {rule}")
        self.what = what
        self.value = value
        self.rule = rule


class AlreadyAcknowledged(InvalidArgument):
    """A delivery or claim was already resolved (ack, nak, term, dead_letter)
    by ``previous``; each delivery takes exactly one of them."""

    def __init__(self, what: str, previous: str) -> None:
        super().__init__(what, previous, f"already resolved by {previous}()")
        self.previous = previous


class Closed(BusError, ConnectionError):
    """The bus, stream or service was closed, or the broker went away.

    ``resource`` names what is closed (for the shm backend: the socket path).
    """

    def __init__(self, resource: str, reason: str = "closed") -> None:
        super().__init__(f"{resource}: {reason}")
        self.resource = resource
        self.reason = reason


class ProtocolError(BusError):
    """A peer broke the wire protocol; the connection is unusable."""


class HandlerError(BusError):
    """A request handler raised. ``type_name`` and ``message`` describe the
    handler's exception as the serving side saw it."""

    def __init__(self, subject: str, type_name: str, message: str) -> None:
        super().__init__(f"handler for {subject!r} raised {type_name}: {message}")
        self.subject = subject
        self.type_name = type_name
        self.message = message
