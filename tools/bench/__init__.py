"""Benchmark klieo_shm against its peers (NATS JetStream, Redis, multiprocessing, ...).

Run ``python -m tools.bench --help`` from the repository root. Every role of a
workload runs in its own process (multiprocessing, spawn context); timing starts
after all roles have connected and met at a barrier, so process start-up is never
measured. The entry point for other front ends (``klieo-shm bench``) is
:func:`tools.bench.cli.main`.
"""

from __future__ import annotations

JSON_SCHEMA_ID = "klieo-shm-bench/1"

__all__ = ["JSON_SCHEMA_ID"]
