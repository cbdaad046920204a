"""Tick cost depends on the entries due, not the entries stored: 1,000 entries due
every second, beside 0 or 99,000 stored entries that are not due (daily).

    python -m bench.scale           (~2 min; writes bench/results/scale.json)

The idle entries are written through the API path (``registry.upsert``, as
``Schedules.upsert`` does) before the beat starts; the beat itself declares the
1,000 busy ones. Per row: landed/s, lateness, store Redis commands and CPU per
tick, beat CPU per 1,000 ticks, and Redis memory per stored entry.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import Servers, pct, queue_length, read_messages, save, start_beat, table, wait_for
from bench.cost import _delta, commandstats
from redbeat_safe import registry
from redbeat_safe.definitions import from_beat_entry
from redbeat_safe.store import RedisStore


def _redis_cpu(port: int) -> float:
    info = redis.Redis(port=port).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run(stored_idle: int, busy: int, warmup: float, window: float, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    with Servers(workdir) as servers:
        client = redis.Redis(port=servers.store.port, socket_timeout=120)
        mem0 = int(client.info("memory")["used_memory"])
        t0 = time.perf_counter()
        store = RedisStore(client, "bench")
        for start in range(0, stored_idle, 10_000):
            chunk = [from_beat_entry(f"idle{i}", {"task": "bench.noop", "schedule": 86400.0, "args": [i]}, "UTC")
                     for i in range(start, min(stored_idle, start + 10_000))]
            registry.upsert(store, chunk, "api")
        written = time.perf_counter() - t0
        mem1 = int(client.info("memory")["used_memory"])
        proc = start_beat(servers, workdir, "redbeat_safe", "scale", {"BENCH_ENTRIES": str(busy)})
        try:
            wait_for(lambda: queue_length(servers) > 0, 300, what="the first message")
            time.sleep(warmup)
            c0, r0, b0, w0 = commandstats(servers.store.port), _redis_cpu(servers.store.port), proc.cpu_seconds(), time.time()
            time.sleep(window)
            c1, r1, b1, w1 = commandstats(servers.store.port), _redis_cpu(servers.store.port), proc.cpu_seconds(), time.time()
        finally:
            proc.stop()
        stored = client.zcard("{bench}:due")
        client.close()
        msgs = read_messages(servers)
    inside = [m for m in msgs if w0 * 1000 <= m.pub_ms < w1 * 1000]
    late = [m.pub_ms - m.due_ms for m in inside if m.due_ms is not None]
    n = max(1, len(inside))
    return {
        "stored_entries": stored, "due_per_s": busy, "landed_per_s": len(inside) / (w1 - w0),
        "late_p50_ms": pct(late, 50), "late_p99_ms": pct(late, 99),
        "store_commands_per_tick": sum(_delta(c0, c1).values()) / n,
        "store_cpu_ms_per_1000": (r1 - r0) / n * 1_000_000, "beat_cpu_s_per_1000": (b1 - b0) / n * 1000,
        "idle_written_s": written, "memory_bytes_per_idle_entry": (mem1 - mem0) / stored_idle if stored_idle else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--busy", type=int, default=1000)
    p.add_argument("--stored", type=int, default=100_000)
    p.add_argument("--window", type=float, default=15.0)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        rows = [run(idle, a.busy, 6, a.window, Path(tmp) / f"s{idle}") for idle in (0, a.stored - a.busy)]
    print(table(rows, ["stored_entries", "due_per_s", "landed_per_s", "late_p50_ms", "late_p99_ms", "store_commands_per_tick",
                       "store_cpu_ms_per_1000", "beat_cpu_s_per_1000", "memory_bytes_per_idle_entry", "idle_written_s"]))
    save("scale", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
