"""The NATS backend's KV watch: which delete markers count as current values
(no server needed: a scripted nats-py watcher)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from nats.js.kv import KV_DEL, KeyValue

from klieo_shm.nats._kv import _Watch


def _entry(key: str, revision: int, operation: str | None = None) -> KeyValue.Entry:
    return KeyValue.Entry(
        bucket="b",
        key=key,
        value=b"" if operation else b"v",
        revision=revision,
        delta=0,
        created=0,
        operation=operation,
    )


class _Scripted:
    """Yields the given entries (``None``: nats-py's end-of-current marker)."""

    def __init__(self, items: list[KeyValue.Entry | None]) -> None:
        self._items = items

    def __aiter__(self) -> AsyncIterator[KeyValue.Entry | None]:
        return self

    async def __anext__(self) -> KeyValue.Entry | None:
        if not self._items:
            raise StopAsyncIteration
        return self._items.pop(0)


async def _all(watch: _Watch) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    while (change := await watch.next()) is not None:
        out.append((change.operation, change.key, change.revision))
    return out


async def test_a_delete_from_before_the_watch_is_skipped_even_after_the_end_marker() -> None:
    # nats-py can signal the end of the current values before their last one
    # arrives (it reads the consumer's pending count while they are in flight)
    scripted: Any = _Scripted(
        [_entry("a", 2), None, _entry("gone", 4, KV_DEL), _entry("late", 5, KV_DEL)]
    )
    watch = _Watch(owner=None, bucket="b", watcher=scripted, floor=4)  # type: ignore[arg-type]

    assert await _all(watch) == [("put", "a", 2), ("delete", "late", 5)]
