"""Carrying klieo_shm errors across the wire as (type name, argument list).

The broker answers a failed ``Call`` with ``Result(error_type, error_args)``;
the client rebuilds the same error class with the same data. Only the
classes listed here cross the wire; anything else arrives as ``BusError``.
"""

from __future__ import annotations

from typing import Any

from .._errors import (
    BusError,
    Closed,
    Conflict,
    Full,
    HandlerError,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    Timeout,
)

__all__ = ["error_from_wire", "error_to_wire"]


def _plain(value: object) -> object:
    return value if isinstance(value, str | int | float | bool | bytes | None) else repr(value)


def error_to_wire(exc: BusError) -> tuple[str, list[Any]]:
    """The (type name, args) that rebuild ``exc`` on the other side."""
    if isinstance(exc, NotFound):
        return "NotFound", [exc.what, exc.name]
    if isinstance(exc, Timeout):
        return "Timeout", [exc.operation, exc.seconds]
    if isinstance(exc, InvalidArgument):
        return "InvalidArgument", [exc.what, _plain(exc.value), exc.rule]
    if isinstance(exc, Full):
        return "Full", [exc.resource, exc.limit]
    if isinstance(exc, PayloadTooLarge):
        return "PayloadTooLarge", [exc.size, exc.limit]
    if isinstance(exc, Closed):
        return "Closed", [exc.resource, exc.reason]
    if isinstance(exc, HandlerError):
        return "HandlerError", [exc.subject, exc.type_name, exc.message]
    if isinstance(exc, Conflict):
        return "Conflict", [str(exc), exc.expected, exc.current]
    return "BusError", [str(exc)]


def error_from_wire(type_name: str, args: list[Any]) -> BusError:
    """Rebuild an error sent by :func:`error_to_wire`; never raises itself."""
    try:
        if type_name == "NotFound":
            return NotFound(str(args[0]), str(args[1]))
        if type_name == "Timeout":
            return Timeout(str(args[0]), float(args[1]))
        if type_name == "InvalidArgument":
            return InvalidArgument(str(args[0]), args[1], str(args[2]))
        if type_name == "Full":
            return Full(str(args[0]), None if args[1] is None else int(args[1]))
        if type_name == "PayloadTooLarge":
            return PayloadTooLarge(int(args[0]), int(args[1]))
        if type_name == "Closed":
            return Closed(str(args[0]), str(args[1]))
        if type_name == "HandlerError":
            return HandlerError(str(args[0]), str(args[1]), str(args[2]))
        if type_name == "Conflict":
            return Conflict(str(args[0]), expected=args[1], current=args[2])
        return BusError(*[str(a) for a in args])
    except (IndexError, TypeError, ValueError):
        return BusError(f"{type_name}: {args!r}")
