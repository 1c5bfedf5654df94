"""Fixtures for the shm tests: every test gets its own socket and segment prefix."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from shm_helpers import SMALL, private_socket

from klieo_shm.daemon import spawn_daemon


@pytest.fixture
def sock() -> Iterator[str]:
    with private_socket() as path:
        yield path


@pytest.fixture
def daemon(sock: str) -> Iterator[str]:
    """A klieo-shmd process with small limits on the test's own socket."""
    args = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    with spawn_daemon(sock, *args):
        yield sock
