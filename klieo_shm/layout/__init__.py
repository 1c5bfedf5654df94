"""Shared-memory layouts: small pure modules over ``memoryview``.

Each segment type states its byte map in its module's opening comment and
starts with the common header of ``_header`` (magic + format version). The
allocators here keep their state in private Python objects; only the bytes
described by the byte maps are shared. Nothing here opens or maps a segment
(``klieo_shm.daemon`` and ``klieo_shm.shm`` do).
"""

from __future__ import annotations

from ._arena import ALIGN as ALIGN
from ._arena import ARENA_MAGIC as ARENA_MAGIC
from ._arena import ARENA_VERSION as ARENA_VERSION
from ._arena import KEEP_ZONE as KEEP_ZONE
from ._arena import READ_MARK_WORD as READ_MARK_WORD
from ._arena import SLOT as SLOT
from ._arena import RingAllocator as RingAllocator
from ._arena import check_slot as check_slot
from ._arena import init_arena as init_arena
from ._arena import mark_read as mark_read
from ._arena import open_arena as open_arena
from ._arena import read_mark as read_mark
from ._arena import write_slot as write_slot
from ._fit import FitAllocator as FitAllocator
from ._header import HEADER_SIZE as HEADER_SIZE
from ._header import LayoutError as LayoutError
from ._header import read_word as read_word
from ._store import SERVICES_WORD as SERVICES_WORD
from ._store import STORE_MAGIC as STORE_MAGIC
from ._store import STORE_VERSION as STORE_VERSION
from ._store import BuddyAllocator as BuddyAllocator
from ._store import init_store as init_store
from ._store import open_store as open_store
from ._store import publish_services_epoch as publish_services_epoch
from ._store import publish_usage as publish_usage
