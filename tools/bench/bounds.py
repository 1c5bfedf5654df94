"""klieo-shmd with one part of the broker's per-item state cut away: an
upper bound on what the benchmark could reach if the broker kept none of it.

    python -m tools.bench.bounds pubsub|jobs [klieo-shmd options]

``pubsub``: deliveries are not recorded and a message's store block is
released as soon as its delivery frame is sent; acks are only checked for
range and give the member's window back. The member window (count) still
holds, so a subscriber is not flooded. ``jobs``: a job is an ``(id,
payload)`` pair in its queue's deque; a claim pops pairs (no token, lease,
attempt or holder is recorded) and acks are ignored.

UNSAFE: such a broker loses or garbles work whenever anything goes wrong
(a late read, a crash, a redelivery); it exists only to be measured, e.g.::

    KLIEO_SHMD="python -m tools.bench.bounds jobs" \\
        python -m tools.bench --only W5 --peers klieo-nojournal,redis

Everything else (frames, checks, store copies, the event loop, the
clients) is the real code, so the difference to the plain daemon is what
that state costs, and the figure itself is a ceiling for any broker state
design on this architecture. It patches private methods of
``klieo_shm.daemon``; ``tests/bench/test_bench_quick.py`` runs both bounds
so that a change there is noticed.
"""

from __future__ import annotations

import operator
import sys
from collections import Counter
from typing import Any

from klieo_shm.daemon import _jobs, _pubsub
from klieo_shm.protocol import DeliverBatch, RemoteProtocolError

_DESC = operator.itemgetter(2)
_SUBJ = operator.itemgetter(1)
_BLOCK = operator.itemgetter(3)


def _deliver(self: Any, c: Any, now: float) -> None:
    """Send the first member what its window allows; record nothing."""
    members, pending = c.members, c.pending
    if not members:
        return
    m = members[0]
    s = m.session
    window = self.config.member_window
    while pending and m.inflight < window:
        take = min(len(pending), _pubsub.CHUNK, window - m.inflight)
        m.inflight += take
        popleft = pending.popleft
        msgs = [popleft() for _ in range(take)]
        first = s.next_did
        s.next_did += take
        descs, subjects = b"".join(map(_DESC, msgs)), b"".join(map(_SUBJ, msgs))
        s.send(DeliverBatch(m.sub_id, take, first, descs, subjects, b""))
        for block, n in Counter(map(_BLOCK, msgs)).items():
            self._release(block, n)


def _ack_ranges(self: Any, s: Any, ranges: Any, now: float, acked: Any) -> None:
    """Check each range; give its count back to the session's members."""
    top = s.next_did
    for first, n, _, _ in ranges:
        if first < 1 or first + n > top:
            raise RemoteProtocolError(f"ack for delivery ids {first}..{first + n - 1}")
        for m in s.members.values():
            m.inflight -= n
            self.dirty.add(m.consumer)


def _add(self: Any, q: Any, payloads: list[bytes], extra: Any, size: int) -> list[str]:
    first = self._next_id
    n = len(payloads)
    self._next_id = first + n
    ids = list(map(self._id_of, range(first, first + n)))
    q.ready.extend(zip(ids, payloads, strict=True))
    if q.waiters:
        self._serve_waiters(q)
    return ids


def _take(self: Any, s: Any, q: Any, n: int, ttl: float, now: float, exact: bool) -> list[Any]:
    ready = q.ready
    n = self._share(s, q, n, now, exact)
    batch = [ready.popleft() for _ in range(n)]
    first = q.tokens + 1
    q.tokens += n
    ids, payloads = [b[0] for b in batch], [b[1] for b in batch]
    return [now + ttl, ids, payloads, first, 1, _jobs.DEFAULT_MAX_ATTEMPTS, None]


def _resolve_group(self: Any, *args: Any) -> list[Any]:
    return []


def patch(part: str) -> None:
    """Cut ``part`` (``pubsub`` or ``jobs``) to its bound in this process."""
    if part == "pubsub":
        _pubsub.PubsubState._deliver = _deliver  # type: ignore[method-assign]
        _pubsub.PubsubState._ack_ranges = _ack_ranges  # type: ignore[method-assign]
    elif part == "jobs":
        _jobs.JobsState._add = _add  # type: ignore[method-assign]
        _jobs.JobsState._take = _take  # type: ignore[method-assign]
        _jobs.JobsState.resolve_group = _resolve_group  # type: ignore[method-assign]
    else:
        raise SystemExit(f"usage: python -m tools.bench.bounds pubsub|jobs [options]; not {part!r}")


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit("usage: python -m tools.bench.bounds pubsub|jobs [klieo-shmd options]")
    patch(argv[0])
    from klieo_shm.daemon.__main__ import main as daemon_main

    return daemon_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
