"""The broker's KV leases: exclusive, fenced, ended by release, by the
holder's death or by TTL expiry.

Single writer: only the broker's event loop touches anything here, and
nothing here does I/O except :func:`holder_alive` (a ``/proc`` read).

Liveness, in the order DESIGN.md gives it:

1. A holder with a live connection loses its leases the moment the broker
   sees the connection close (:meth:`LeaseState.drop_session`): kill -9
   included, since the kernel closes the socket.
2. A holder the broker knows without a connection (a grant recovered after
   a broker restart: :meth:`LeaseState.adopt`) is checked by a periodic
   sweep with :func:`holder_alive`: pid *and* process start time, so a
   reused pid never keeps a lease. The holder reattaches by heartbeating
   from a connection with the same (pid, start time).
3. TTL expiry is the last line, for holders alive but stuck: a heap of
   deadlines popped by the broker's tick, and checked again on every look.

Fencing: each grant of a key takes the key's next token; tokens never
repeat for a key. A heartbeat or release naming another token is refused
with ``Conflict`` (``expected`` = the caller's token, ``current`` = the live
one, ``None`` when nobody holds it).
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Final

import psutil

from .._errors import Conflict
from ._journal import LEASE, LEASE_END

if TYPE_CHECKING:
    from ._broker import Session
    from ._journal import Journal

__all__ = ["SWEEP_INTERVAL", "Grant", "LeaseState", "holder_alive", "same_process"]

SWEEP_INTERVAL: Final = 1.0
"""Seconds between liveness sweeps of holders without a connection."""
_START_TOLERANCE: Final = 0.02
"""psutil start times are in clock ticks (10 ms): equal within this."""

Key = tuple[str, str]


def holder_alive(pid: int, start_time: float) -> bool:
    """Whether the process ``pid`` that started at ``start_time`` (psutil's
    ``create_time``) still runs. A zombie is dead; a pid now used by another
    process (another start time) is dead. ``start_time`` 0 means unknown:
    only the pid is checked."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if start_time and abs(proc.create_time() - start_time) > _START_TOLERANCE:
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # AccessDenied and the like: it exists, as far as we can tell
        return True
    return True


def same_process(pid: int, start_time: float, s: Session) -> bool:
    """Whether session ``s`` comes from the process ``pid`` started at
    ``start_time`` (a holder reattaching after a broker restart)."""
    return pid == s.pid and abs(start_time - s.start_time) <= _START_TOLERANCE


class Grant:
    """One holder's lease on one key."""

    __slots__ = ("deadline", "pid", "session", "start_time", "token", "ttl")

    def __init__(
        self,
        token: int,
        session: Session | None,
        pid: int,
        start_time: float,
        ttl: float,
        deadline: float,
    ) -> None:
        self.token = token
        self.session = session
        self.pid = pid
        self.start_time = start_time
        self.ttl = ttl
        self.deadline = deadline


class LeaseState:
    """Every lease of the broker, keyed by (bucket, key)."""

    def __init__(self) -> None:
        self.journal: Journal | None = None
        self.grants: dict[Key, Grant] = {}
        self.tokens: dict[Key, int] = {}  # the last token handed out per key
        self.owned: dict[Session, set[Key]] = {}
        self.orphans: set[Key] = set()  # grants without a connection
        self._timers: list[tuple[float, int, Key, int]] = []
        self._tie = itertools.count()
        self._next_sweep = 0.0

    # --- operations ----------------------------------------------------------
    def grant(self, s: Session, bucket: str, key: str, ttl: float, now: float) -> int:
        """Take the lease for ``s``; ``Conflict`` (``current`` = the holder's
        token) while anyone holds it, ``s`` itself included."""
        k = (bucket, key)
        held = self._live(k, now)
        if held is not None:
            raise Conflict(
                f"lease on key {key!r} of bucket {bucket!r} is held (token {held.token})",
                current=held.token,
            )
        token = self.tokens.get(k, 0) + 1
        self.tokens[k] = token
        g = Grant(token, s, s.pid, s.start_time, ttl, now + ttl)
        self.grants[k] = g
        self.owned.setdefault(s, set()).add(k)
        heapq.heappush(self._timers, (g.deadline, next(self._tie), k, token))
        if self.journal is not None:
            self.journal.append([LEASE, bucket, key, token, s.pid, s.start_time, ttl])
        return token

    def adopt(
        self,
        bucket: str,
        key: str,
        token: int,
        pid: int,
        start_time: float,
        ttl: float,
        now: float,
    ) -> None:
        """Record a grant whose holder has no connection (recovered after a
        broker restart). The sweep ends it once the holder is dead."""
        k = (bucket, key)
        self.tokens[k] = max(self.tokens.get(k, 0), token)
        self.grants[k] = Grant(token, None, pid, start_time, ttl, now + ttl)
        self.orphans.add(k)
        heapq.heappush(self._timers, (now + ttl, next(self._tie), k, token))

    def heartbeat(self, s: Session, bucket: str, key: str, token: int, now: float) -> None:
        """Extend the grant ``token`` of ``s`` by its ttl from now."""
        k = (bucket, key)
        g = self._mine(s, k, token, now)
        if g is None:
            raise Conflict(
                f"lease on key {key!r} of bucket {bucket!r} was released or expired "
                f"(token {token})",
                expected=token,
                current=None,
            )
        g.deadline = now + g.ttl

    def release(self, s: Session, bucket: str, key: str, token: int, now: float) -> None:
        """End the grant ``token`` of ``s``; nothing when nobody holds the key."""
        k = (bucket, key)
        g = self._mine(s, k, token, now)
        if g is not None:
            self._drop(k, g)

    def drop_session(self, s: Session) -> None:
        """``s`` went away: its leases end now."""
        for k in self.owned.pop(s, ()):
            g = self.grants.get(k)
            if g is not None and g.session is s:
                del self.grants[k]
                if self.journal is not None:
                    self.journal.append([LEASE_END, k[0], k[1], g.token])

    def holder(self, bucket: str, key: str, now: float) -> int | None:
        """The live token of the key's lease, if any."""
        g = self._live((bucket, key), now)
        return None if g is None else g.token

    # --- time ----------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Expire grants past their deadline; sweep connection-less holders."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, k, token = heapq.heappop(timers)
            g = self.grants.get(k)
            if g is None or g.token != token:
                continue
            if g.deadline > now:  # heartbeaten since: wait for the new deadline
                heapq.heappush(timers, (g.deadline, next(self._tie), k, token))
            else:
                self._drop(k, g)
        if self.orphans and now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self.sweep()

    def sweep(self) -> list[Key]:
        """End every connection-less grant whose holder process is gone."""
        ended = []
        for k in list(self.orphans):
            g = self.grants.get(k)
            if g is None or g.session is not None:
                self.orphans.discard(k)
            elif not holder_alive(g.pid, g.start_time):
                self._drop(k, g)
                ended.append(k)
        return ended

    # --- helpers -------------------------------------------------------------
    def _live(self, k: Key, now: float) -> Grant | None:
        g = self.grants.get(k)
        if g is not None and g.deadline <= now:
            self._drop(k, g)
            return None
        return g

    def _mine(self, s: Session, k: Key, token: int, now: float) -> Grant | None:
        """The live grant of ``k`` if it is ``s``'s grant ``token``; ``None``
        when nobody holds it; ``Conflict`` when someone else does."""
        g = self._live(k, now)
        if g is None:
            return None
        if g.session is None and same_process(g.pid, g.start_time, s):
            g.session = s  # the holder is back after a broker restart
            self.orphans.discard(k)
            self.owned.setdefault(s, set()).add(k)
        if g.token != token or g.session is not s:
            raise Conflict(
                f"lease on key {k[1]!r} of bucket {k[0]!r} was taken over "
                f"(token {token} is stale, the holder has {g.token})",
                expected=token,
                current=g.token,
            )
        return g

    def _drop(self, k: Key, g: Grant) -> None:
        del self.grants[k]
        self.orphans.discard(k)
        if self.journal is not None:
            self.journal.append([LEASE_END, k[0], k[1], g.token])
        if g.session is not None:
            owned = self.owned.get(g.session)
            if owned is not None:
                owned.discard(k)
                if not owned:
                    del self.owned[g.session]
