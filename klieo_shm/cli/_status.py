"""``klieo-shm status``: what a broker is doing, for a person or a script."""

from __future__ import annotations

import time
from typing import Any

import psutil

__all__ = ["enrich", "render"]


def _command_name(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        cmd = proc.cmdline()
        return " ".join(cmd)[:60] if cmd else proc.name()
    except (psutil.Error, OSError):
        return "?"


def enrich(stats: dict[str, Any]) -> dict[str, Any]:
    """Add what the broker does not know itself: client command lines."""
    for client in stats.get("clients", []):
        client.setdefault("command", _command_name(int(client["pid"])))
    return stats


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _uptime(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) + (
        f" (+{int(seconds // 86400)} d)" if seconds >= 86400 else ""
    )


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    if not rows:
        return ["  (none)"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  " + "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip(), *(fmt.format(*map(str, r)).rstrip() for r in rows)]


def render(stats: dict[str, Any], socket_path: str) -> str:
    """The status as aligned text sections."""
    out = [
        f"klieo-shmd {stats.get('version', '?')} (protocol {stats.get('protocol', '?')}) "
        f"pid {stats.get('pid')} on {socket_path}, up {_uptime(float(stats.get('uptime', 0)))}",
        "",
        f"clients ({len(stats.get('clients', []))})",
    ]
    out += _table(
        [
            [c["client_id"], c["pid"], c.get("name", ""), c.get("command", "")]
            for c in stats["clients"]
        ],
        ["id", "pid", "name", "command"],
    )
    consumers = stats.get("consumers", {})
    out += ["", f"durable consumers ({len(consumers)})"]
    out += _table(
        [
            [n, c["pattern"], c["members"], c["pending"], c["unacked"], c.get("redelivered", "-")]
            for n, c in sorted(consumers.items())
        ],
        ["durable", "subject", "members", "pending", "unacked", "redelivered"],
    )
    queues = stats.get("queues", {})
    out += ["", f"job queues ({len(queues)})"]
    out += _table(
        [
            [n, q["ready"], q["delayed"], q["claimed"], q["dead"], q.get("waiting_claims", 0)]
            for n, q in sorted(queues.items())
        ],
        ["queue", "ready", "delayed", "claimed", "dead letters", "waiting claims"],
    )
    buckets = stats.get("kv_buckets", {})
    out += ["", f"kv buckets ({len(buckets)}), {stats.get('kv_leases', 0)} leases held"]
    out += _table([[b, n] for b, n in sorted(buckets.items())], ["bucket", "keys"])
    services = stats.get("services", {})
    if services:
        out += ["", "services"]
        out += _table([[s, n] for s, n in sorted(services.items())], ["subject", "servers"])
    store_used, store_size = int(stats.get("store_used", 0)), int(stats.get("store_size", 0))
    kv_used, kv_size = int(stats.get("kv_used", 0)), int(stats.get("kv_size", 0))
    out += [
        "",
        "memory",
        f"  payload store  {_mib(store_used)} used, {_mib(store_size - store_used)} free "
        f"of {_mib(store_size)}",
        f"  kv table       {_mib(kv_used)} used, {_mib(kv_size - kv_used)} free of {_mib(kv_size)}",
    ]
    unread = int(stats.get("unread_expired", 0))
    if unread:  # see PubsubState._hold_unread
        out.append(f"  ({unread} expired deliveries hold store space until read by their clients)")
    state = stats.get("state_dir")
    journal = int(stats.get("journal_bytes", 0))
    out.append(f"  journal        {_mib(journal)} in {state}" if state else "  journal        none")
    return "\n".join(out)
