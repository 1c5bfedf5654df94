"""Fixtures of the conformance suite: every scenario runs once per backend
(``backends.BACKENDS``) and flavour (``async``, ``sync``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .backends import BACKENDS, Backend, not_served
from .world import World, new_uid

FLAVOURS = ("async", "sync")


@pytest.fixture(scope="session", params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    with BACKENDS[request.param]() as setup:
        yield setup


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def world(backend: Backend, flavour: str) -> World:
    return World(backend, flavour, new_uid())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip scenarios a backend does not serve yet (``backends.not_served``)."""
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is None or "backend" not in spec.params:
            continue
        module = getattr(getattr(item, "module", None), "__name__", "")
        function = getattr(item, "originalname", item.name)
        reason = not_served(spec.params["backend"], module, function, dict(spec.params))
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
