"""The broker's configuration and the names derived from it."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Final

from .._bus import default_socket_path
from .._spin import MAX_SPIN_US

__all__ = [
    "DEFAULT_ARENA_SIZE",
    "DEFAULT_KEEP_MIN",
    "DEFAULT_KV_MAX_SIZE",
    "DEFAULT_KV_SIZE",
    "DEFAULT_MAX_ACK_PENDING",
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_MEMBER_WINDOW",
    "DEFAULT_MEMBER_WINDOW_BYTES",
    "DEFAULT_PUBLISH_TIMEOUT",
    "DEFAULT_STORE_SIZE",
    "BrokerConfig",
    "default_state_dir",
    "on_memory_fs",
    "segment_prefix",
]

MiB: Final = 1 << 20
DEFAULT_STORE_SIZE: Final = 256 * MiB
DEFAULT_ARENA_SIZE: Final = 64 * MiB
DEFAULT_KEEP_MIN: Final = 128 * 1024
DEFAULT_MEMBER_WINDOW_BYTES: Final = 4 * MiB
DEFAULT_MAX_PAYLOAD: Final = 16 * MiB
DEFAULT_MAX_ACK_PENDING: Final = 1000
DEFAULT_MEMBER_WINDOW: Final = 512
DEFAULT_PUBLISH_TIMEOUT: Final = 5.0
DEFAULT_KV_SIZE: Final = 16 * MiB
DEFAULT_KV_MAX_SIZE: Final = 1024 * MiB
MIN_KV_SIZE: Final = 64 * 1024


def segment_prefix(socket_path: str) -> str:
    """The per-broker segment name prefix: ``klieo-`` and a hash of the
    socket's absolute path, so brokers on different sockets never collide."""
    digest = hashlib.sha256(os.path.abspath(socket_path).encode()).hexdigest()[:12]
    return f"klieo-{digest}"


TMPFS_DIR: Final = "/dev/shm"
_MEMORY_FS: Final = ("tmpfs", "ramfs")


def default_state_dir(socket_path: str) -> str:
    """The state directory of a broker on ``socket_path``, always on a tmpfs
    (it survives a broker crash or restart, not a reboot): beside the socket
    (``klieo.sock`` -> ``klieo.state``) when the socket's directory is a
    tmpfs, as ``$XDG_RUNTIME_DIR`` is; else ``/dev/shm/klieo-state.<uid>.<hash
    of the socket path>``. Where no tmpfs is known, beside the socket."""
    path = os.path.abspath(socket_path)
    directory, name = os.path.split(path)
    stem = name[: -len(".sock")] if name.endswith(".sock") else name
    beside = os.path.join(directory, stem + ".state")
    if on_memory_fs(directory) or not on_memory_fs(TMPFS_DIR):
        return beside
    digest = hashlib.sha256(path.encode()).hexdigest()[:12]
    return os.path.join(TMPFS_DIR, f"klieo-state.{os.getuid()}.{digest}")


def on_memory_fs(path: str) -> bool:
    """Whether ``path`` (or, if it does not exist yet, its nearest existing
    ancestor) lies on a tmpfs or ramfs, by ``/proc/self/mounts``."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and probe != os.path.dirname(probe):
        probe = os.path.dirname(probe)
    probe = os.path.realpath(probe)
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1:3] for line in f if line.strip()]
    except OSError:
        return False
    best, fstype = "", ""
    for point, kind in mounts:
        point = point.replace("\\040", " ")
        inside = probe == point or probe.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, kind
    return fstype in _MEMORY_FS


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything ``klieo-shmd`` can be told.

    ``store_size``: bytes of broker-owned payload storage (the per-broker
    memory limit for pending payloads). ``arena_size``: each client's tx
    arena. ``keep_min``: publish batches of at least this many bytes are
    delivered from the publisher's arena instead of copied into the store
    (``_kept``; 0: every batch is copied; a store on disk copies all).
    ``max_payload``: largest payload. ``max_ack_pending``: most
    unacked deliveries per durable (JetStream's max_ack_pending);
    ``member_window``: most unacked deliveries per member, so one stuck
    member never holds the whole durable; ``member_window_bytes``: most
    header and payload bytes of unacked deliveries per member (at least
    one delivery goes out whatever its size), so a subscriber of large
    messages holds a few at a time, not a window's worth. ``publish_timeout``: how long a
    publish waits for storage before ``Full``. ``group``: a group whose
    members may connect (widens the socket dir and segments to the group).
    ``kv_size``: bytes of the first KV table segment; the table grows (a new
    segment, entries copied) up to ``kv_max_size``, then writes raise ``Full``.
    ``state_dir``: where the journal lives (``""``: :func:`default_state_dir`;
    ``None``: no journal, a restarted broker starts empty). ``fsync``:
    ``always`` (every write), ``interval`` (at most ``fsync_interval``
    seconds after a write) or ``never`` (left to the kernel). ``spin_us``:
    after each wake-up the broker polls for up to this many microseconds
    before it sleeps again (0: it sleeps at once; see ``klieo_shm._spin``);
    ``klieo-shmd`` runs the broker on a ``SpinningEventLoop`` for it, a
    broker embedded with ``serve_forever`` needs its caller's loop to be one.
    """

    socket_path: str = ""
    store_size: int = DEFAULT_STORE_SIZE
    arena_size: int = DEFAULT_ARENA_SIZE
    keep_min: int = DEFAULT_KEEP_MIN
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_ack_pending: int = DEFAULT_MAX_ACK_PENDING
    member_window: int = DEFAULT_MEMBER_WINDOW
    member_window_bytes: int = DEFAULT_MEMBER_WINDOW_BYTES
    publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT
    group: str | None = None
    kv_size: int = DEFAULT_KV_SIZE
    kv_max_size: int = DEFAULT_KV_MAX_SIZE
    state_dir: str | None = ""
    fsync: str = "interval"
    fsync_interval: float = 1.0
    spin_us: float = 0.0

    def __post_init__(self) -> None:
        if not self.socket_path:
            object.__setattr__(self, "socket_path", default_socket_path())
        if self.max_payload < 1:
            raise ValueError("max_payload must be >= 1")
        if self.arena_size < 2 * self.max_payload + (1 << 16):
            raise ValueError(
                f"arena_size {self.arena_size} must be at least twice max_payload "
                f"({self.max_payload}) plus 64 KiB"
            )
        if self.keep_min < 0:
            raise ValueError("keep_min must be >= 0")
        if self.store_size < self.max_payload * 2:
            raise ValueError("store_size must be at least twice max_payload")
        if self.max_ack_pending < 1 or self.member_window < 1 or self.member_window_bytes < 1:
            raise ValueError("max_ack_pending, member_window and member_window_bytes must be >= 1")
        if self.kv_size < MIN_KV_SIZE:
            raise ValueError(f"kv_size must be at least {MIN_KV_SIZE}")
        if self.kv_max_size < self.kv_size:
            raise ValueError("kv_max_size must be at least kv_size")
        if self.state_dir == "":
            object.__setattr__(self, "state_dir", default_state_dir(self.socket_path))
        elif self.state_dir is not None:  # clients open the store file by this path
            object.__setattr__(self, "state_dir", os.path.abspath(self.state_dir))
        if self.fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be always, interval or never, not {self.fsync!r}")
        if not self.fsync_interval > 0:
            raise ValueError("fsync_interval must be > 0")
        if not 0 <= self.spin_us <= MAX_SPIN_US:
            raise ValueError(f"spin_us must be between 0 and {MAX_SPIN_US:g}")

    @property
    def prefix(self) -> str:
        return segment_prefix(self.socket_path)

    @property
    def max_frame(self) -> int:
        """Frame body limit: a request payload travels inline, plus room."""
        return self.max_payload + MiB
