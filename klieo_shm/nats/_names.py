"""How klieo names map onto NATS names, and the ``nats://`` URL options.

Everything one bus keeps in NATS lives under a *prefix* ``P`` (URL option
``prefix``, default ``klieo``), so several klieo buses can share a server
and nothing of klieo's captures other NATS traffic (``_INBOX.>``,
``$JS.>``, ``$KV.>``):

| klieo                          | NATS                                              |
|--------------------------------|---------------------------------------------------|
| pubsub subject ``s``           | subject ``P.ps.s`` in stream ``P_pubsub``         |
| durable ``d``                  | pull consumer ``d`` on stream ``P_pubsub``        |
| request subject ``s``          | core subject ``P.rr.s``, queue group ``klieo``    |
| KV bucket ``b``                | KV bucket ``P_`` + :func:`escape_name` (``b``)    |
| lease on (``b``, ``k``)        | key ``escape_name(b).k`` in KV bucket ``P_i_lease``|
| job queue ``q``                | subject ``P.jobs.q`` in stream ``P_jobs``,        |
|                                | pull consumer ``escape_name(q)``                  |
| dead letter ``id`` of ``q``    | subject ``P.dl.q.id`` in stream ``P_dlq``         |
| claim of job ``id`` of ``q``   | key ``escape_name(q).id`` in KV bucket ``P_i_claims``|

The maps are one to one: a pubsub subject only gains the ``P.ps.`` prefix,
and :func:`escape_name` (``_`` → ``__``, ``.`` → ``_d``) turns a dotted klieo
bucket or queue name into a NATS-legal one that :func:`unescape_name` turns
back. Internal names use ``_i_``, which no escaped name can start with.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import parse_qsl, urlsplit

from .._errors import InvalidArgument

__all__ = [
    "DEFAULT_JOB_ACK_WAIT",
    "DEFAULT_PREFIX",
    "Namespace",
    "NatsOptions",
    "escape_name",
    "parse_url",
    "unescape_name",
]

DEFAULT_PREFIX: Final = "klieo"
DEFAULT_JOB_ACK_WAIT: Final = 1.0
"""Server-side ack_wait of job consumers; claims are kept alive by the client
(see ``_jobs``), so this bounds how late a dead worker's job comes back."""

_PREFIX: Final = re.compile(r"[A-Za-z0-9-]{1,64}")
_OPTIONS: Final = ("prefix", "max_payload", "job_ack_wait", "storage", "connect_timeout")


def escape_name(name: str) -> str:
    """A dotted klieo name as a NATS stream/consumer/bucket name token."""
    return name.replace("_", "__").replace(".", "_d")


def unescape_name(escaped: str) -> str:
    """The inverse of :func:`escape_name`."""
    out: list[str] = []
    i = 0
    while i < len(escaped):
        c = escaped[i]
        if c == "_" and i + 1 < len(escaped):
            nxt = escaped[i + 1]
            out.append("_" if nxt == "_" else "." if nxt == "d" else "_" + nxt)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """Options of a ``nats://`` URL (its query string)."""

    servers: str
    prefix: str = DEFAULT_PREFIX
    max_payload: int | None = None
    job_ack_wait: float = DEFAULT_JOB_ACK_WAIT
    storage: Literal["file", "memory"] = "file"
    connect_timeout: float = 5.0


def parse_url(url: str) -> NatsOptions:
    """``nats://[USER:PASS@]HOST:PORT[?prefix=P&max_payload=N&job_ack_wait=S&storage=file|memory]``."""
    parts = urlsplit(url)
    if parts.scheme != "nats" or not parts.netloc:
        raise InvalidArgument("url", url, "must be nats://HOST:PORT[?option=value&...]")
    if parts.path not in ("", "/"):
        raise InvalidArgument("url", url, "a nats:// URL has no path")
    raw = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(raw) - set(_OPTIONS))
    if unknown:
        raise InvalidArgument("url", url, f"unknown option {unknown[0]!r} (known: {_OPTIONS})")
    prefix = raw.get("prefix", DEFAULT_PREFIX)
    if not _PREFIX.fullmatch(prefix):
        raise InvalidArgument("url", url, "prefix must be 1-64 letters, digits or '-'")
    max_payload = None
    if "max_payload" in raw:
        try:
            max_payload = int(raw["max_payload"])
        except ValueError:
            max_payload = 0
        if max_payload < 1:
            raise InvalidArgument("url", url, "max_payload must be an integer >= 1")
    storage = raw.get("storage", "file")
    if storage not in ("file", "memory"):
        raise InvalidArgument("url", url, "storage must be 'file' or 'memory'")
    return NatsOptions(
        servers=f"nats://{parts.netloc}",
        prefix=prefix,
        max_payload=max_payload,
        job_ack_wait=_seconds(url, raw, "job_ack_wait", DEFAULT_JOB_ACK_WAIT),
        storage="file" if storage == "file" else "memory",
        connect_timeout=_seconds(url, raw, "connect_timeout", 5.0),
    )


def _seconds(url: str, raw: dict[str, str], name: str, default: float) -> float:
    if name not in raw:
        return default
    try:
        value = float(raw[name])
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument("url", url, f"{name} must be a positive number of seconds")
    return value


class Namespace:
    """The NATS names of one prefix's bus (see the module docstring)."""

    __slots__ = (
        "claims_bucket",
        "dlq_stream",
        "jobs_stream",
        "lease_bucket",
        "prefix",
        "pubsub_stream",
    )

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pubsub_stream = f"{prefix}_pubsub"
        self.jobs_stream = f"{prefix}_jobs"
        self.dlq_stream = f"{prefix}_dlq"
        self.lease_bucket = f"{prefix}_i_lease"
        self.claims_bucket = f"{prefix}_i_claims"

    # -- pubsub ---------------------------------------------------------
    @property
    def pubsub_subjects(self) -> str:
        return f"{self.prefix}.ps.>"

    def pubsub_subject(self, subject: str) -> str:
        """Publish subject or subscription pattern ``subject`` in NATS."""
        return f"{self.prefix}.ps.{subject}"

    def from_pubsub_subject(self, nats_subject: str) -> str:
        return nats_subject[len(self.prefix) + 4 :]

    # -- request/reply --------------------------------------------------
    def request_subject(self, subject: str) -> str:
        return f"{self.prefix}.rr.{subject}"

    # -- KV ---------------------------------------------------------------
    def bucket(self, bucket: str) -> str:
        return f"{self.prefix}_{escape_name(bucket)}"

    def lease_key(self, bucket: str, key: str) -> str:
        return f"{escape_name(bucket)}.{key}"

    # -- jobs -------------------------------------------------------------
    @property
    def jobs_subjects(self) -> str:
        return f"{self.prefix}.jobs.>"

    def job_subject(self, queue: str) -> str:
        return f"{self.prefix}.jobs.{queue}"

    def job_consumer(self, queue: str) -> str:
        return escape_name(queue)

    def claim_key(self, queue: str, job_id: str) -> str:
        return f"{escape_name(queue)}.{job_id}"

    def claim_keys(self, queue: str) -> str:
        return f"{escape_name(queue)}.*"

    @property
    def dlq_subjects(self) -> str:
        return f"{self.prefix}.dl.>"

    def dead_letter_subject(self, queue: str, job_id: str) -> str:
        return f"{self.prefix}.dl.{queue}.{job_id}"

    def dead_letter_filter(self, queue: str) -> str:
        return f"{self.prefix}.dl.{queue}.*"
