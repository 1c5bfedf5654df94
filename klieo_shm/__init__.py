"""klieo_shm: a single-host message bus with NATS JetStream's semantics over
shared memory, behind klieo-core's four interfaces.

    bus = await klieo_shm.connect()          # or klieo_shm.sync.connect()
    pubsub, requests, kv, jobs = bus

This module only re-exports; the code lives in private modules.
"""

from __future__ import annotations

from ._bus import ENV_URL as ENV_URL
from ._bus import Bus as Bus
from ._bus import connect as connect
from ._bus import default_socket_path as default_socket_path
from ._bus import resolve_url as resolve_url
from ._errors import AlreadyAcknowledged as AlreadyAcknowledged
from ._errors import BusError as BusError
from ._errors import Closed as Closed
from ._errors import Conflict as Conflict
from ._errors import Full as Full
from ._errors import HandlerError as HandlerError
from ._errors import InvalidArgument as InvalidArgument
from ._errors import NotFound as NotFound
from ._errors import PayloadTooLarge as PayloadTooLarge
from ._errors import ProtocolError as ProtocolError
from ._errors import Timeout as Timeout
from ._handles import ClaimedJob as ClaimedJob
from ._handles import KvWatch as KvWatch
from ._handles import Lease as Lease
from ._handles import Msg as Msg
from ._handles import MsgStream as MsgStream
from ._handles import Service as Service
from ._interfaces import Handler as Handler
from ._interfaces import JobQueue as JobQueue
from ._interfaces import KvStore as KvStore
from ._interfaces import Pubsub as Pubsub
from ._interfaces import RequestReply as RequestReply
from ._names import subject_matches as subject_matches
from ._names import validate_bucket as validate_bucket
from ._names import validate_durable as validate_durable
from ._names import validate_key as validate_key
from ._names import validate_key_pattern as validate_key_pattern
from ._names import validate_queue as validate_queue
from ._names import validate_subject as validate_subject
from ._names import validate_subject_pattern as validate_subject_pattern
from ._names import validate_worker_id as validate_worker_id
from ._spin import SpinningEventLoop as SpinningEventLoop
from ._spin import spinning_loop as spinning_loop
from ._values import DEFAULT_ACK_WAIT as DEFAULT_ACK_WAIT
from ._values import DEFAULT_MAX_ATTEMPTS as DEFAULT_MAX_ATTEMPTS
from ._values import DeadLetter as DeadLetter
from ._values import Headers as Headers
from ._values import Job as Job
from ._values import JobId as JobId
from ._values import KvChange as KvChange
from ._values import KvEntry as KvEntry
from ._values import QueueStats as QueueStats
from ._values import Revision as Revision

__version__ = "0.1.0.dev0"
