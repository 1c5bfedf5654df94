"""Fixtures: a client and a server protocol object joined by a fake link."""

from __future__ import annotations

import pytest
from protocol_helpers import Link


@pytest.fixture
def link() -> Link:
    return Link()


@pytest.fixture
def ready(link: Link) -> Link:
    link.handshake()
    return link
