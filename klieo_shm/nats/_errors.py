"""Translation of nats-py's exceptions into klieo_shm's, at the boundary.

Every call into nats-py is made inside :func:`translated`, which turns a
foreign exception into the matching :class:`~klieo_shm.BusError` with
``raise ... from exc``; klieo errors pass through untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import nats.errors
import nats.js.errors

from .._errors import BusError, Closed, Full, PayloadTooLarge, ProtocolError, Timeout

__all__ = ["JS_WRONG_LAST_SEQUENCE", "api_code", "is_wrong_last", "translate", "translated"]

JS_WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})
"""JetStream error codes for a failed ``Nats-Expected-Last-Subject-Sequence``."""

_FULL_CODES: Final = frozenset(
    {
        10023,  # insufficient resources
        10027,  # maximum bytes exceeded
        10028,  # maximum messages exceeded
        10047,  # storage resources exceeded
        10077,  # maximum messages per subject exceeded
    }
)
_TOO_LARGE_CODE: Final = 10054  # message size exceeds maximum allowed


def api_code(exc: BaseException) -> int | None:
    """The JetStream API error code of ``exc``, if it carries one."""
    code = getattr(exc, "err_code", None) if isinstance(exc, nats.js.errors.APIError) else None
    return code if isinstance(code, int) else None


def is_wrong_last(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it was translated from) is JetStream's
    "wrong last sequence" answer to an expected-revision write."""
    while exc is not None:
        if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError):
            return True
        if api_code(exc) in JS_WRONG_LAST_SEQUENCE:
            return True
        exc = exc.__cause__
    return False


def translate(exc: BaseException, operation: str, *, url: str, timeout: float = 0.0) -> BusError:
    """The klieo error for a nats-py exception raised by ``operation``."""
    if isinstance(exc, BusError):
        return exc
    if isinstance(exc, nats.errors.TimeoutError | asyncio.TimeoutError | TimeoutError):
        return Timeout(operation, timeout)
    if isinstance(
        exc,
        nats.errors.ConnectionClosedError
        | nats.errors.ConnectionDrainingError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.StaleConnectionError
        | nats.errors.NoServersError,
    ):
        return Closed(url, f"{operation}: {type(exc).__name__}")
    if isinstance(exc, nats.errors.MaxPayloadError):
        return Full(f"NATS max_payload ({operation})")
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return ProtocolError(f"{operation}: JetStream did not answer (is it enabled?)")
    code = api_code(exc)
    if code in _FULL_CODES:
        return Full(f"JetStream storage ({operation}): {exc}")
    if code == _TOO_LARGE_CODE:
        return PayloadTooLarge(-1, -1)
    if isinstance(exc, nats.errors.Error | nats.js.errors.Error):
        return BusError(f"{operation}: {type(exc).__name__}: {exc}")
    if isinstance(exc, OSError):
        return Closed(url, f"{operation}: {exc}")
    return BusError(f"{operation}: {type(exc).__name__}: {exc}")


@contextmanager
def translated(operation: str, *, url: str, timeout: float = 0.0) -> Iterator[None]:
    """Run the body, translating nats-py's exceptions (see :func:`translate`)."""
    try:
        yield
    except BusError:
        raise
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError) as exc:
        raise translate(exc, operation, url=url, timeout=timeout) from exc
