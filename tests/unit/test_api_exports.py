"""The public surface: klieo_shm re-exports exactly the names below, each
module's ``__all__`` is true, and nothing a user touches needs a private
module."""

from __future__ import annotations
import __future__

import importlib
import inspect
import sys
import types
import typing

import klieo_shm
import klieo_shm.sync
import klieo_shm.testing

PUBLIC = {
    # connecting
    "connect",
    "resolve_url",
    "Bus",
    "ENV_URL",
    "default_socket_path",
    # interfaces and handles
    "Pubsub",
    "RequestReply",
    "KvStore",
    "JobQueue",
    "Handler",
    "Msg",
    "MsgStream",
    "Service",
    "KvWatch",
    "Lease",
    "ClaimedJob",
    # values
    "Headers",
    "Job",
    "JobId",
    "KvEntry",
    "KvChange",
    "DeadLetter",
    "QueueStats",
    "Revision",
    "DEFAULT_ACK_WAIT",
    "DEFAULT_MAX_ATTEMPTS",
    # errors
    "BusError",
    "NotFound",
    "Timeout",
    "Conflict",
    "Full",
    "PayloadTooLarge",
    "InvalidArgument",
    "AlreadyAcknowledged",
    "Closed",
    "ProtocolError",
    "HandlerError",
    # names
    "subject_matches",
    "validate_subject",
    "validate_subject_pattern",
    "validate_bucket",
    "validate_key",
    "validate_key_pattern",
    "validate_durable",
    "validate_queue",
    "validate_worker_id",
    # latency
    "SpinningEventLoop",
    "spinning_loop",
}

PRIVATE_MODULES = [
    "klieo_shm._bus",
    "klieo_shm._errors",
    "klieo_shm._handles",
    "klieo_shm._interfaces",
    "klieo_shm._names",
    "klieo_shm._portal",
    "klieo_shm._spin",
    "klieo_shm._values",
]


def _public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType | __future__._Feature)
    }


def test_klieo_shm_exports_exactly_the_public_names():
    assert _public_names(klieo_shm) == PUBLIC


def test_each_private_modules_all_lists_names_it_defines():
    for name in PRIVATE_MODULES:
        module = importlib.import_module(name)
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ lists undefined {missing}"


def test_public_names_are_the_private_modules_objects_re_exported():
    owners = {}
    for name in PRIVATE_MODULES:
        module = importlib.import_module(name)
        for exported in module.__all__:
            owners.setdefault(exported, getattr(module, exported))
    for name in PUBLIC:
        assert name in owners, f"klieo_shm.{name} is in no private module's __all__"
        assert getattr(klieo_shm, name) is owners[name]


def test_sync_and_testing_all_are_true():
    for module in (klieo_shm.sync, klieo_shm.testing):
        assert all(hasattr(module, n) for n in module.__all__)
    defined_in_sync = {
        name
        for name, value in vars(klieo_shm.sync).items()
        if inspect.isclass(value)
        and value.__module__ == "klieo_shm.sync"
        and not name.startswith("_")
    }
    assert defined_in_sync | {"connect"} == set(klieo_shm.sync.__all__)


def test_sync_mirrors_every_async_interface_method():
    pairs = [
        (klieo_shm.Pubsub, klieo_shm.sync.Pubsub),
        (klieo_shm.RequestReply, klieo_shm.sync.RequestReply),
        (klieo_shm.KvStore, klieo_shm.sync.KvStore),
        (klieo_shm.JobQueue, klieo_shm.sync.JobQueue),
        (klieo_shm.Msg, klieo_shm.sync.Msg),
        (klieo_shm.MsgStream, klieo_shm.sync.MsgStream),
        (klieo_shm.KvWatch, klieo_shm.sync.KvWatch),
        (klieo_shm.Lease, klieo_shm.sync.Lease),
        (klieo_shm.ClaimedJob, klieo_shm.sync.ClaimedJob),
        (klieo_shm.Service, klieo_shm.sync.Service),
        (klieo_shm.Bus, klieo_shm.sync.Bus),
    ]
    for async_cls, sync_cls in pairs:
        wanted = {
            n
            for n, v in inspect.getmembers(async_cls)
            if not n.startswith("_") and (inspect.iscoroutinefunction(v) or n == "close")
        }
        missing = sorted(n for n in wanted if not hasattr(sync_cls, n))
        assert not missing, f"{sync_cls.__qualname__} lacks {missing}"


def _classes_in(hint: object) -> set[type]:
    found: set[type] = set()
    if inspect.isclass(hint):
        found.add(hint)
    for arg in typing.get_args(hint):
        if isinstance(arg, list):
            for inner in arg:
                found |= _classes_in(inner)
        else:
            found |= _classes_in(arg)
    return found


def _reachable_publicly(cls: type) -> bool:
    if cls.__module__ in {"builtins", "typing", "collections.abc", "types"}:
        return True
    for module in (klieo_shm, klieo_shm.sync, klieo_shm.testing):
        if getattr(module, cls.__name__, None) is cls:
            return True
    return False


def test_every_type_in_a_public_signature_is_publicly_importable():
    owners = [klieo_shm, klieo_shm.sync]
    unreachable = set()
    for module in owners:
        for name in _public_names(module):
            obj = getattr(module, name)
            members = [obj]
            if inspect.isclass(obj):
                # Constructors are for backends (they take the *Impl protocols).
                members = [v for n, v in vars(obj).items() if not n.startswith("_")]
            for member in members:
                if not callable(member) or not hasattr(member, "__annotations__"):
                    continue
                hints = typing.get_type_hints(member, vars(sys.modules[member.__module__]))
                for hint in hints.values():
                    unreachable |= {
                        f"{c.__module__}.{c.__qualname__}"
                        for c in _classes_in(hint)
                        if not _reachable_publicly(c)
                    }
    assert not unreachable
