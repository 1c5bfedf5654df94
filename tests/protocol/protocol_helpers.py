"""A client and a server protocol object joined by a fake link, no sockets."""

from __future__ import annotations

import os

from klieo_shm.protocol import PROTOCOL_VERSION, Connection, Event, Hello, Welcome


class Link:
    """Carries what one side sends to the other side, in order."""

    def __init__(self) -> None:
        self.client = Connection("client")
        self.server = Connection("server")

    def c2s(self, *events: Event) -> list[Event]:
        for ev in events:
            self.server.receive_data(self.client.send(ev))
        return self.server.events()

    def s2c(self, *events: Event) -> list[Event]:
        for ev in events:
            self.client.receive_data(self.server.send(ev))
        return self.client.events()

    def handshake(self) -> None:
        hello = Hello(PROTOCOL_VERSION, os.getpid(), "test")
        assert self.c2s(hello) == [hello]
        welcome = Welcome(
            PROTOCOL_VERSION, 1, "/a1", 1 << 20, "/s", 1 << 24, 1 << 20, 1 << 21, 1 << 17, "/a"
        )
        assert self.s2c(welcome) == [welcome]
        assert self.client.state == self.server.state == "READY"


def raw_frame(kind: int, body: bytes) -> bytes:
    """A frame built by hand, bypassing the sending side's checks."""
    import struct

    return struct.pack("<IB", len(body), kind) + body


def raw_control(*fields: object) -> bytes:
    import msgpack

    return raw_frame(1, msgpack.packb(list(fields), use_bin_type=True))
