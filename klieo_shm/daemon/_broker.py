"""The broker core: sessions, the handshake, calls and request/reply.

One instance per daemon, driven by one asyncio loop (``_server``) that feeds
bytes in through :meth:`Broker.receive` and gets bytes out through each
session's ``write`` callable. The broker is the single writer of every piece
of metadata. It does no socket I/O itself; the only OS work here is
creating, mapping and unlinking segments.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import posix_ipc

from .. import __version__
from .._errors import BusError, Closed, HandlerError, InvalidArgument, NotFound, ProtocolError
from .._names import validate_durable, validate_subject, validate_subject_pattern
from .._values import check_duration
from ..layout import HEADER_SIZE, init_arena, init_store, publish_services_epoch
from ..protocol import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    AckBatch,
    Call,
    Connection,
    Error,
    Event,
    Hello,
    Incoming,
    KvWrite,
    KvWritten,
    LocalProtocolError,
    PublishBatch,
    RemoteProtocolError,
    Reply,
    Request,
    Respond,
    Result,
    Welcome,
)
from ..protocol._wire_errors import error_to_wire
from ._arena_pool import ArenaPool
from ._config import BrokerConfig, on_memory_fs
from ._jobs import JobsState, job_calls
from ._journal import Journal
from ._kept import MAX_SOURCE_ID, Source
from ._kv import KV_CALLS, KvState, kv_write
from ._pubsub import Member, PubsubState
from ._recovery import STORE_FILE, Recovered, replay, restore, snapshot
from ._segments import FileSegment, Segment

__all__ = ["Broker", "Session"]

log = logging.getLogger("klieo.shmd")
_DEFER: Final = object()
_REQUEST_GRACE: Final = 1.0
_MAX_ADDRESS: Final = 107
"""Longest Unix socket address (``sun_path`` less one byte)."""


class Session:
    """One client connection and everything the broker keeps for it."""

    __slots__ = (
        "arena",
        "arena_seg",
        "asking",
        "client_id",
        "closed",
        "conn",
        "deliveries",
        "direct",
        "members",
        "name",
        "next_did",
        "parked",
        "pid",
        "services",
        "serving",
        "source",
        "start_time",
        "uid",
        "unread",
        "write",
    )

    def __init__(
        self, client_id: int, write: Callable[[bytes], None], pid: int, uid: int, start: float
    ) -> None:
        self.client_id = client_id
        self.write = write
        self.pid = pid
        self.uid = uid
        self.start_time = start
        self.name = ""
        self.conn = Connection("server")
        self.closed = False
        self.arena_seg: Segment | None = None
        self.arena = memoryview(b"")
        self.source: Source | None = None  # the arena, when batches may be kept in it
        self.deliveries: dict[int, tuple[Any, ...]] = {}  # id -> (member, msg, deadline, count)
        self.next_did = 1
        # (delivery id, Block) of deliveries whose ack_wait passed before the
        # client read their frame: each holds its block until the client has
        self.unread: list[tuple[int, Any]] = []
        self.members: dict[int, Member] = {}
        self.parked: deque[tuple[PublishBatch, float]] = deque()  # (batch, deadline)
        self.services: dict[int, str] = {}  # svc_id -> subject
        self.direct = ""  # the address of its direct request link ("": none)
        self.serving: set[int] = set()  # request ids sent to this session
        self.asking: set[int] = set()  # request ids this session made

    def __repr__(self) -> str:
        return f"<client {self.client_id} pid={self.pid} {self.name!r}>"

    def send(self, event: Event) -> None:
        """Encode and queue ``event`` for this client; dropped once the
        connection is closing (its deliveries are then handed to others)."""
        if self.closed:
            return
        try:
            data = self.conn.send(event)
        except LocalProtocolError:
            if self.conn.state in ("READY", "HELLO_RECEIVED"):
                raise  # a real bug, not a closing connection
            return
        self.write(data)


class _Request:
    __slots__ = ("call_id", "deadline", "requester", "server", "subject")

    def __init__(
        self, requester: Session, call_id: int, server: Session, subject: str, deadline: float
    ) -> None:
        self.requester = requester
        self.call_id = call_id
        self.server = server
        self.subject = subject
        self.deadline = deadline


class Broker:
    """All broker state. ``clock`` is monotonic seconds (tests may fake it)."""

    def __init__(self, config: BrokerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.started_at = time.time()
        self.config = config
        self.clock = clock
        self.pid = os.getpid()
        # Arenas: the client writes them. The store: only the broker writes it,
        # so a group gets read access only.
        self.mode = 0o660 if config.group else 0o600
        store_mode = 0o640 if config.group else 0o600
        self.gid = _group_id(config.group)
        # unique to this start: a restarted broker of the same pid (pid 1 in a
        # container, a restarted embedded server) must not find its names
        # taken by the segments it recovers kept batches from
        self._base = f"/{config.prefix}-{self.pid}.{os.urandom(3).hex()}"
        journal: Journal | None = None
        found: Recovered | None = None
        if config.state_dir is not None:
            journal = Journal(config.state_dir, config.fsync, config.fsync_interval)
            try:
                records = journal.load()
                found = replay(records) if records else None
                self.store_seg: Segment | FileSegment = self._file_store(
                    config.state_dir, store_mode
                )
            except BaseException:
                journal.close()
                raise
        else:
            self.store_seg = Segment(self._base + "-store", config.store_size, store_mode, self.gid)
        self.arenas = ArenaPool(self._base, config.arena_size, self.mode, self.gid)
        try:
            store = init_store(self.store_seg.view, self.pid)
            self.pubsub = PubsubState(config, store, self.store_seg.view, self.arenas.give)
            self.kv = KvState(config, self._base, store_mode, self.gid, _DEFER)
        except BaseException:
            self.store_seg.destroy()  # leave no segment behind
            if journal is not None:
                journal.close()
            raise
        self.jobs = JobsState(  # does no I/O: nothing to undo should it fail
            self.pubsub,
            clock,
            config.max_payload,
            config.store_size,
            config.publish_timeout,
            dedup=self.kv,
        )
        self.sessions: dict[int, Session] = {}
        self.pubsub.sessions = self.sessions
        self._stuck: list[Source] = []  # arenas a shutdown leaves for the next start
        self._ids = itertools.count(1)
        self._req_ids = itertools.count(1)
        self.services: dict[str, list[tuple[Session, int]]] = {}
        self.services_epoch = 0  # published in the store's header
        self._rr = 0
        self.requests: dict[int, _Request] = {}
        self.journal: Journal | None = None
        if journal is not None:
            try:
                self._recover(journal, found)
            except BaseException:
                self.store_seg.destroy()
                self.kv.close()
                journal.close()
                raise

    @property
    def segment_base(self) -> str:
        """The start of this broker's segment names, without the leading
        ``/`` (``<prefix>-<pid>.<nonce>``; each name adds ``-<role>``)."""
        return self._base[1:]

    # --- the journal -----------------------------------------------------------
    def _file_store(self, state_dir: str, mode: int) -> FileSegment:
        """A new store file in ``state_dir`` (the journal's lock is held, so
        no other broker uses the directory)."""
        if self.gid is not None:  # group members open the store in it
            try:
                os.chown(state_dir, -1, self.gid)
                os.chmod(state_dir, 0o750)
            except PermissionError as exc:
                log.warning(
                    "cannot open state directory %s to group %s (%s): its members "
                    "cannot map the payload store",
                    state_dir,
                    self.config.group,
                    exc,
                )
        name = f"{STORE_FILE}.{time.time_ns():x}"
        return FileSegment(os.path.join(state_dir, name), self.config.store_size, mode, self.gid)

    def _recover(self, journal: Journal, found: Recovered | None) -> None:
        """Load what the journal held (``found``; payloads from the store
        file it names) into this fresh broker, compact the journal into a
        snapshot naming the new store file, remove the old store files, and
        keep the journal open for changes."""
        state_dir = journal.directory
        seg = self.store_seg
        assert isinstance(seg, FileSegment)
        if found is not None:
            restore(self, found, state_dir)
            log.info(
                "recovered from %s: %d records, %d durables, %d queues, %d KV values",
                state_dir,
                found.records,
                len(found.durables),
                len(found.queues),
                sum(1 for v in found.kv.values() if v[0] is not None),
            )
        if not on_memory_fs(state_dir):  # a disk: sync the store with the journal
            self.pubsub.checksum = True
            self.pubsub.keep_min = 0  # arenas are memory: every payload goes to disk
            journal.sync_with(seg.sync)
        journal.rewrite(snapshot(self))
        # From here on the journal names the new store file: nothing may fail
        # (Broker.__init__ would remove that file). Old files: best effort.
        self._attach(journal)
        mine = os.path.basename(seg.name)
        try:
            entries = os.listdir(state_dir)
        except OSError as exc:
            log.warning("cannot list %s to remove old store files: %s", state_dir, exc)
            return
        for entry in entries:
            if entry.startswith(STORE_FILE + ".") and entry != mine:
                try:
                    os.unlink(os.path.join(state_dir, entry))
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("cannot remove the old store file %s: %s", entry, exc)

    def _attach(self, journal: Journal | None) -> None:
        self.journal = journal
        self.pubsub.journal = journal
        self.kv.journal = journal
        self.kv.leases.journal = journal
        self.jobs.journal = journal

    def flush_journal(self) -> None:
        """Write what the journal queued; the server calls this before it
        writes any answer and after every read. A journal that cannot be
        written stops the broker at once (``Journal.flush``)."""
        journal = self.journal
        if journal is None:
            return
        self.jobs.journal_acks()
        journal.flush()
        self.pubsub.reclaim()

    # --- sessions ------------------------------------------------------------
    def open_session(
        self, write: Callable[[bytes], None], pid: int, uid: int, start: float
    ) -> Session:
        s = Session(next(self._ids), write, pid, uid, start)
        self.sessions[s.client_id] = s
        return s

    def receive(self, s: Session, data: bytes | bytearray | memoryview) -> bool:
        """Feed bytes from ``s``; False when the connection must be closed
        (after EOF, or after a protocol violation, which is answered with an
        ``Error`` event naming it)."""
        conn = s.conn
        conn.receive_data(data)
        now = self.clock()
        try:
            while True:
                ev = conn.next_event()
                if isinstance(ev, Call):  # the common case first
                    self._call(s, ev, now)
                elif isinstance(ev, KvWrite):
                    self._kv_write(s, ev)
                elif isinstance(ev, Request):
                    self._request(s, ev, now)
                elif ev is NEED_DATA:
                    return True
                elif ev is CLOSED or isinstance(ev, Error):
                    return False
                elif isinstance(ev, Event):
                    self._handle(s, ev, now)
        except ProtocolError as exc:
            log.warning("%r: protocol violation, closing: %s", s, exc)
            return self._refuse(s, "protocol", str(exc))
        except (OSError, posix_ipc.Error) as exc:  # e.g. its arena cannot be made
            log.error("%r: cannot serve: %s", s, exc)
            return self._refuse(s, "resources", f"broker cannot serve this client: {exc}")
        finally:
            self.pubsub.pump(now)

    def _refuse(self, s: Session, code: str, message: str) -> bool:
        with contextlib.suppress(ProtocolError):
            s.send(Error(code, message))
        return False

    def refuse(self, s: Session, message: str) -> None:
        """Tell a client it may not connect (the driver then closes it)."""
        self._refuse(s, "forbidden", message)

    def close_session(self, s: Session) -> None:
        """The connection is gone: release everything the client held."""
        if s.closed:
            return
        s.closed = True
        self.sessions.pop(s.client_id, None)
        self.pubsub.drop_session(s)
        self.jobs.drop_session(s, self.clock())
        self.kv.drop_session(s)
        for svc_id in list(s.services):
            self._unserve(s, svc_id)
        for req_id in list(s.serving):
            r = self.requests.pop(req_id, None)
            if r is not None and not r.requester.closed:
                r.requester.asking.discard(req_id)
                self._fail(r, Closed(f"server of {r.subject!r}", "went away mid-request"))
        for req_id in s.asking:
            r = self.requests.pop(req_id, None)
            if r is not None:
                r.server.serving.discard(req_id)
        if s.source is not None:  # the source owns the segment now
            s.arena = memoryview(b"")
            s.arena_seg = None
            source, s.source = s.source, None
            self.pubsub.close_source(source)
        elif s.arena_seg is not None:
            s.arena = memoryview(b"")
            self.arenas.give(s.arena_seg, s.pid, s.start_time)
            s.arena_seg = None
        self.pubsub.pump(self.clock())
        log.info("%r: disconnected", s)

    def tick(self) -> None:
        now = self.clock()
        self.pubsub.tick(now)
        self.jobs.tick(now)
        self.kv.tick(now)
        journal = self.journal
        if journal is not None:
            self.flush_journal()  # acks and notifications get no answer that would flush
            if journal.wants_compaction():
                self.jobs.journal_acks()
                before = journal.size
                journal.rewrite(snapshot(self))
                log.info("journal compacted: %d -> %d bytes", before, journal.size)
            else:
                journal.sync_due(now)
        if self.requests:
            for req_id, r in list(self.requests.items()):
                if r.deadline + _REQUEST_GRACE <= now:
                    del self.requests[req_id]
                    r.server.serving.discard(req_id)
                    r.requester.asking.discard(req_id)
        self.pubsub.pump(now)

    def detach_journal(self) -> None:
        """Write and close the journal, and journal nothing more: what a
        shutdown does to clients (their claims, leases and deliveries end)
        must not reach it, so their holders find them after a restart.
        Idempotent; call before any connection is dropped."""
        journal = self.journal
        if journal is not None:
            self.jobs.journal_acks()
            self._stuck = self.pubsub.settle_kept()
            for source in self._stuck:
                log.warning(
                    "the store has no room for the kept batches in %s: the segment "
                    "stays for the next start",
                    source.name,
                )
            self.pubsub.reclaim()
            self._attach(None)
            journal.close()

    def shutdown(self) -> None:
        """Drop every client and the segments (the journal is detached first,
        see :meth:`detach_journal`)."""
        self.detach_journal()
        # what the journal on file counts as free (taken before anything else
        # is freed without being journalled)
        free = self.pubsub.alloc.free_blocks()
        for s in list(self.sessions.values()):
            self.close_session(s)
        for source in list(self.pubsub.sources.values()):  # orphans still owed
            if source not in self._stuck:
                source.destroy()
        self.pubsub.sources.clear()
        self.arenas.close()
        store = self.store_seg
        if isinstance(store, FileSegment):  # it stays for the next start
            self._release_free_store(store, free)
        store.close()
        self.kv.close()

    def _release_free_store(self, store: FileSegment, blocks: list[tuple[int, int]]) -> None:
        """The stopped broker's store file keeps only the pages of what is
        still owed: the free ``blocks`` go back to the system."""
        base = HEADER_SIZE  # the data area's offset in the file
        free = [(base + off, size) for off, size in blocks]
        try:
            released = store.release_pages(free)
        except OSError as exc:  # e.g. a filesystem without MADV_REMOVE
            log.info("store file %s keeps its free pages: %s", store.name, exc)
            return
        log.info("store file %s: released %d free bytes", store.name, released)

    # --- events --------------------------------------------------------------
    def _handle(self, s: Session, ev: Event, now: float) -> None:
        if isinstance(ev, PublishBatch):
            self.pubsub.publish(s, ev, now)
        elif isinstance(ev, AckBatch):
            self.pubsub.ack(s, ev.ranges, now)
        elif isinstance(ev, Call):
            self._call(s, ev, now)
        elif isinstance(ev, Respond):
            self._respond(s, ev)
        elif isinstance(ev, Hello):
            self._hello(s, ev)
        elif isinstance(ev, Error):
            log.info("%r: closing with error %s: %s", s, ev.code, ev.message)

    def _hello(self, s: Session, ev: Hello) -> None:
        cfg = self.config
        s.name = ev.name
        seg = self.arenas.take(f"{self._base}-a{s.client_id}")
        size = init_arena(seg.view, s.client_id, s.pid, int(s.start_time * 1e6))
        s.arena_seg = seg
        s.arena = seg.view[HEADER_SIZE : HEADER_SIZE + size]
        keep_min = self.pubsub.keep_min if s.client_id <= MAX_SOURCE_ID else 0
        if keep_min:
            s.source = Source(s, seg, s.arena)
            self.pubsub.add_source(s.source)
        store = self.store_seg
        s.send(
            Welcome(
                PROTOCOL_VERSION,
                s.client_id,
                seg.name,
                seg.size,
                store.name,
                store.size,
                cfg.max_payload,
                cfg.max_frame,
                keep_min,
                f"{self._base}-a",
            )
        )
        log.info("%r: connected", s)

    def _call(self, s: Session, ev: Call, now: float) -> None:
        handler = _CALLS.get(ev.method)
        try:
            if handler is None:
                raise InvalidArgument("method", ev.method, "unknown call")
            value = handler(self, s, ev, now)
        except BusError as exc:
            _answer_error(s, ev.call_id, exc)
            return
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"bad arguments to {ev.method!r}: {exc!r}") from None
        if value is not _DEFER:
            s.send(Result(ev.call_id, value))

    def _kv_write(self, s: Session, ev: KvWrite) -> None:
        try:
            revision = kv_write(self, ev)
        except BusError as exc:
            _answer_error(s, ev.call_id, exc)
            return
        except ValueError as exc:  # the table refused the value: as a bad call argument
            raise RemoteProtocolError(f"bad kv write: {exc!r}") from None
        s.send(KvWritten(ev.call_id, revision))

    def _c_ping(self, s: Session, ev: Call, now: float) -> object:
        return {"pid": self.pid}

    def _c_subscribe(self, s: Session, ev: Call, now: float) -> object:
        a = ev.args
        pattern = validate_subject_pattern(a["subject"])
        durable = validate_durable(a["durable"])
        ack_wait = a.get("ack_wait")
        if ack_wait is not None:
            ack_wait = check_duration("ack_wait", ack_wait, positive=True)
        self.pubsub.subscribe(s, _u32(a, "sub_id"), pattern, durable, ack_wait)
        return {}

    def _c_unsubscribe(self, s: Session, ev: Call, now: float) -> object:
        self.pubsub.unsubscribe(s, _u32(ev.args, "sub_id"), now)
        return {}

    def _c_delete_durable(self, s: Session, ev: Call, now: float) -> object:
        self.pubsub.delete_durable(validate_durable(ev.args["durable"]))
        return {}

    def _c_serve(self, s: Session, ev: Call, now: float) -> object:
        subject = validate_subject(ev.args["subject"])
        svc_id = _u32(ev.args, "svc_id")
        if svc_id in s.services:
            raise InvalidArgument("svc_id", svc_id, "already in use on this connection")
        direct = ev.args.get("direct", "")
        if (
            not isinstance(direct, str)
            or len(direct.encode()) > _MAX_ADDRESS
            or (direct and not direct.startswith("\0"))
        ):
            raise InvalidArgument(
                "direct",
                direct,
                f"must be an abstract socket address of at most {_MAX_ADDRESS} bytes",
            )
        s.services[svc_id] = subject
        if direct:
            s.direct = direct
        self.services.setdefault(subject, []).append((s, svc_id))
        self._services_changed()
        return {}

    def _c_route(self, s: Session, ev: Call, now: float) -> object:
        """Where the servers of ``subject`` are: ``direct`` lists one
        ``[address, uid]`` per service (a client serving it twice is there
        twice), or is ``None`` when one of them has no direct link (then
        requests go through the broker); ``epoch`` is the services epoch
        this answer holds for. ``NotFound`` when nobody serves it."""
        subject = ev.args["subject"]
        servers = self.services.get(subject) if isinstance(subject, str) else None
        if not servers:
            raise NotFound("server for subject", validate_subject(subject))
        direct = None
        if all(x.direct for x, _ in servers):
            direct = [[x.direct, x.uid] for x, _ in servers]
        return {"epoch": self.services_epoch, "direct": direct}

    def _services_changed(self) -> None:
        self.services_epoch += 1
        publish_services_epoch(self.store_seg.view, self.services_epoch)

    def _c_unserve(self, s: Session, ev: Call, now: float) -> object:
        self._unserve(s, _u32(ev.args, "svc_id"))
        return {}

    def _unserve(self, s: Session, svc_id: int) -> None:
        subject = s.services.pop(svc_id, None)
        if subject is None:
            return
        servers = self.services.get(subject, [])
        if (s, svc_id) in servers:
            servers.remove((s, svc_id))
        if not servers:
            self.services.pop(subject, None)
        self._services_changed()

    def _request(self, s: Session, ev: Request, now: float) -> None:
        """Hand ``ev`` to one server of its subject (round robin); its
        ``Respond`` becomes the requester's ``Reply``. No server: ``NotFound``
        at once."""
        try:
            timeout = check_duration("timeout", ev.timeout)
            subject = ev.subject
            # served subjects were validated by serve(): validate only on a miss
            servers = self.services.get(subject)
            if not servers:
                raise NotFound("server for subject", validate_subject(subject))
        except BusError as exc:
            _answer_error(s, ev.call_id, exc)
            return
        self._rr += 1
        server, svc_id = servers[self._rr % len(servers)]
        req_id = next(self._req_ids)
        self.requests[req_id] = _Request(s, ev.call_id, server, subject, now + timeout)
        server.serving.add(req_id)
        s.asking.add(req_id)
        server.send(Incoming(req_id, svc_id, subject, ev.payload))

    def _c_stats(self, s: Session, ev: Call, now: float) -> object:
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "uptime": time.time() - self.started_at,
            "pid": self.pid,
            "clients": [
                {"client_id": x.client_id, "pid": x.pid, "name": x.name}
                for x in self.sessions.values()
            ],
            **self.pubsub.stats(),
            **self.kv.stats(),
            "kv_buckets": {b: len(self.kv.table.keys(b)) for b in self.kv.table.buckets()},
            "queues": self.jobs.summary(),
            "services": {k: len(v) for k, v in self.services.items()},
            "state_dir": self.config.state_dir,
            "journal_bytes": 0 if self.journal is None else self.journal.size,
        }

    def _respond(self, s: Session, ev: Respond) -> None:
        r = self.requests.get(ev.req_id)
        if r is None:
            return  # timed out, or the requester left: nobody waits for it
        if r.server is not s:
            raise RemoteProtocolError(f"reply to request {ev.req_id}, which was not sent to you")
        del self.requests[ev.req_id]
        s.serving.discard(ev.req_id)
        r.requester.asking.discard(ev.req_id)
        if ev.error_type:
            err = HandlerError(r.subject, ev.error_type, ev.payload.decode(errors="replace"))
            self._fail(r, err)
        else:
            r.requester.send(Reply(r.call_id, ev.payload))

    def _fail(self, r: _Request, exc: BusError) -> None:
        _answer_error(r.requester, r.call_id, exc)


def _u32(args: dict[str, Any], name: str) -> int:
    """An id the client picks that fixed-layout frames carry as a u32
    (``DeliverBatch.sub_id``, ``Incoming.svc_id``)."""
    value = args[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF_FFFF:
        raise InvalidArgument(name, value, "must be an int from 0 to 2**32 - 1")
    return value


def _answer_error(s: Session, call_id: int, exc: BusError) -> None:
    """Answer call (or KV write, or request) ``call_id`` of ``s`` with ``exc``."""
    name, args = error_to_wire(exc)
    s.send(Result(call_id, None, name, args))


_CALLS: Final[dict[str, Callable[[Broker, Session, Call, float], object]]] = {
    "ping": Broker._c_ping,
    "subscribe": Broker._c_subscribe,
    "unsubscribe": Broker._c_unsubscribe,
    "delete_durable": Broker._c_delete_durable,
    "serve": Broker._c_serve,
    "unserve": Broker._c_unserve,
    "route": Broker._c_route,
    "stats": Broker._c_stats,
    **job_calls(_DEFER),
    **KV_CALLS,
}


def _group_id(group: str | None) -> int | None:
    if group is None:
        return None
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ValueError(f"unknown group {group!r}") from None
