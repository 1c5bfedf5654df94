"""Fixtures of the NATS backend's own tests: one ``nats-server -js`` per test
session (per xdist worker), and a URL with a prefix unique to each test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from klieo_shm.nats.testing import nats_server


@pytest.fixture(scope="session")
def nats_server_url() -> Iterator[str]:
    """``nats://127.0.0.1:PORT`` of this session's server."""
    with nats_server() as url:
        yield url


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def url(nats_server_url: str, prefix: str) -> str:
    """A bus URL whose streams and buckets belong to this test alone."""
    return f"{nats_server_url}?prefix={prefix}&storage=memory"
