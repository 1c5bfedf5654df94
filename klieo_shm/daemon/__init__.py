"""``klieo-shmd``, the broker: one asyncio loop, the single writer of all
metadata, owner of every shared-memory segment.

``BrokerServer`` embeds a broker in a running loop (tests, tools);
``python -m klieo_shm.daemon`` / ``klieo-shmd`` runs one as a process.
"""

from __future__ import annotations

from ._broker import Broker as Broker
from ._config import BrokerConfig as BrokerConfig
from ._config import segment_prefix as segment_prefix
from ._server import BrokerServer as BrokerServer
from ._server import serve_forever as serve_forever
from ._spawn import DaemonError as DaemonError
from ._spawn import DaemonProcess as DaemonProcess
from ._spawn import leftover_segments as leftover_segments
from ._spawn import spawn_daemon as spawn_daemon
