"""Protocol errors, split as h11 splits them.

``LocalProtocolError``: *we* tried to do something the protocol forbids (send
an event in the wrong state, an oversized frame). ``RemoteProtocolError``: the
*peer* did (garbage bytes, an unknown op, an event out of turn). Both are
:class:`~klieo_shm.ProtocolError`; after either the connection is unusable
and the driver closes it. Only the receive path raises the remote kind.
"""

from __future__ import annotations

from .._errors import ProtocolError

__all__ = ["LocalProtocolError", "RemoteProtocolError", "VersionMismatch"]


class LocalProtocolError(ProtocolError):
    """This side broke the protocol; a bug in the caller."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; close the connection."""


class VersionMismatch(RemoteProtocolError):
    """The peers speak different protocol versions."""

    def __init__(self, ours: int, theirs: int) -> None:
        super().__init__(
            f"protocol version mismatch: this side speaks version {ours}, "
            f"the peer speaks version {theirs}"
        )
        self.ours = ours
        self.theirs = theirs
