"""Fixtures for the shm tests: every test gets its own socket and segment prefix."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from shm_helpers import SMALL_ARGS, private_socket, restartable_daemon

from klieo_shm.daemon import DaemonProcess, spawn_daemon


@pytest.fixture
def sock() -> Iterator[str]:
    with private_socket() as path:
        yield path


@pytest.fixture
def daemon(sock: str) -> Iterator[str]:
    """A klieo-shmd process with small limits on the test's own socket."""
    with spawn_daemon(sock, *SMALL_ARGS):
        yield sock


@pytest.fixture
def broker(sock: str) -> Iterator[DaemonProcess]:
    """A klieo-shmd with small limits that the test may kill and start again."""
    with restartable_daemon(sock, *SMALL_ARGS) as d:
        yield d
