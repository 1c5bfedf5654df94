"""Kept publish batches: large payloads delivered from the publisher's arena.

A batch a client offers for keeping (``PublishBatch.keep``) and of at least
``BrokerConfig.keep_min`` bytes is not copied into the store: its deliveries
name the client's tx arena (``SOURCE_SHIFT`` in ``_frames``), subscribers
map that arena read-only, and the client leaves the region alone until the
broker sends ``Release`` for the batch -- when every durable that owed its
messages acked them. Kept bytes count against the store's size as their
copies would (``PubsubState.kept_bytes``): past it batches are copied, so
what is kept always fits the store at a shutdown or a restart. Each arena
is a ``Source``:

* while its client is connected, ``session`` is that client;
* when the client goes away with kept batches still owed, the source is an
  orphan: its segment stays (name and mapping) until the last kept batch is
  released; then (once the journal holds the acks) it is retired -- kept as
  a spare for a later client or destroyed (``_arena_pool``) -- and every
  client is told (``ArenaGone``) so that it unmaps it;
* with a journal, a kept batch's ``PUBLISH`` record names the arena segment;
  after a crash the next broker copies the owed batches out of the segments
  the dead broker left (``_recovery``) before it removes them; a clean
  shutdown first copies them into its store (``PubsubState.settle_kept``,
  journalled as ``MOVED``), so no segment stays behind unless the store
  cannot take them (then the next start copies them).

What a subscriber reads of a kept batch is memory its publisher can still
write: a publisher can change its own messages after the broker took them
(and show different bytes to different durables), never another client's.

Nothing here does I/O beyond destroying segments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..protocol import SOURCE_SHIFT

if TYPE_CHECKING:
    from ._broker import Session
    from ._pubsub import Block
    from ._segments import Segment

__all__ = ["MAX_SOURCE_ID", "Source"]

MAX_SOURCE_ID: Final = (1 << (64 - SOURCE_SHIFT)) - 1
"""Clients with a larger id have their batches copied, never kept."""


class Source:
    """A client's tx arena as a place kept batches are delivered from.

    ``view`` is its data area, ``tag`` the bits a delivery offset into it
    carries, ``live`` the kept blocks still owed, ``kept_any`` whether a
    batch was ever kept (only then may clients have mapped it)."""

    __slots__ = (
        "client_id",
        "kept_any",
        "live",
        "pid",
        "seg",
        "session",
        "start_time",
        "tag",
        "view",
    )

    def __init__(self, session: Session, seg: Segment, view: memoryview) -> None:
        self.client_id = session.client_id
        self.pid = session.pid
        self.start_time = session.start_time
        self.tag = session.client_id << SOURCE_SHIFT
        self.session: Session | None = session
        self.seg = seg
        self.view = view
        self.live: set[Block] = set()
        self.kept_any = False

    @property
    def name(self) -> str:
        """The segment's name (what a journal record names)."""
        return self.seg.name

    def destroy(self) -> None:
        """Unmap and unlink the segment. Idempotent."""
        self.view = memoryview(b"")
        self.seg.destroy()
