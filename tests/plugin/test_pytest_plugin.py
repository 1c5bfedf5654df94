"""The pytest plugin: one broker per xdist worker, isolated from the others."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

INNER = textwrap.dedent(
    """
    import os

    import pytest

    import klieo_shm
    from klieo_shm import sync

    N = 50


    def publish(tag: str) -> None:
        with sync.connect() as bus:  # KLIEO_BUS_URL is set by klieo_spawn
            for i in range(N):
                bus.pubsub.publish("shared.subject", f"{tag}:{i}".encode())


    def test_cross_process_messages_stay_on_this_workers_broker(klieo_bus, klieo_spawn):
        # Every xdist worker runs this test at the same time with the SAME
        # subject and durable names; each must see only its own messages.
        tag = os.environ.get("PYTEST_XDIST_WORKER", "main")
        stream = klieo_bus.pubsub.subscribe("shared.subject", "shared-durable")
        proc = klieo_spawn(publish, tag)
        got = []
        for _ in range(N):
            msg = stream.next(timeout=60)
            got.append(msg.payload.decode())
            msg.ack()
        proc.join(60)
        assert proc.exitcode == 0
        assert sorted(got) == sorted(f"{tag}:{i}" for i in range(N))
        with pytest.raises(klieo_shm.Timeout):  # and nothing from the other worker
            stream.next(timeout=0.5)
    """
)


def test_two_xdist_workers_run_cross_process_tests_side_by_side(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "each", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
