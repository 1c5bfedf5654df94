"""The klieo-shmd control protocol, sans-IO.

Nothing in this package does I/O: it turns bytes into events and events into
bytes, and tracks each connection's state. The daemon and the client are thin
drivers over :class:`Connection`. A test checks that no module here imports
``socket``, ``asyncio``, ``selectors`` or ``mmap``.
"""

from __future__ import annotations

from ._connection import CLOSED as CLOSED
from ._connection import NEED_DATA as NEED_DATA
from ._connection import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._connection import Connection as Connection
from ._connection import Role as Role
from ._connection import State as State
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import VersionMismatch as VersionMismatch
from ._events import AckBatch as AckBatch
from ._events import ArenaGone as ArenaGone
from ._events import Call as Call
from ._events import DeliverBatch as DeliverBatch
from ._events import Error as Error
from ._events import Event as Event
from ._events import Hello as Hello
from ._events import Incoming as Incoming
from ._events import KvWrite as KvWrite
from ._events import KvWritten as KvWritten
from ._events import PubAck as PubAck
from ._events import PublishBatch as PublishBatch
from ._events import Release as Release
from ._events import Reply as Reply
from ._events import Request as Request
from ._events import Respond as Respond
from ._events import Result as Result
from ._events import StreamEnd as StreamEnd
from ._events import Welcome as Welcome
from ._frames import ACK_KIND_ACK as ACK_KIND_ACK
from ._frames import ACK_KIND_NAK as ACK_KIND_NAK
from ._frames import ACK_KIND_PROGRESS as ACK_KIND_PROGRESS
from ._frames import ACK_KIND_TERM as ACK_KIND_TERM
from ._frames import KV_OP_CAS as KV_OP_CAS
from ._frames import KV_OP_DELETE as KV_OP_DELETE
from ._frames import KV_OP_PUT as KV_OP_PUT
from ._frames import MAX_BATCH as MAX_BATCH
from ._frames import OFFSET_MASK as OFFSET_MASK
from ._frames import PUB_FLAG_KEEP as PUB_FLAG_KEEP
from ._frames import PUBACK_FULL as PUBACK_FULL
from ._frames import PUBACK_KEPT as PUBACK_KEPT
from ._frames import PUBACK_OK as PUBACK_OK
from ._frames import SOURCE_SHIFT as SOURCE_SHIFT
