"""Bursts: thousands of entries due at the same instant (`*/10 * * * * *`, or an
aligned `every(10)`), drained by 1, 2 and 3 instances, beside the bare `send_task`
ceiling: one process sending a burst of the same size, measured right before each
group of rows (the machine's speed drifts; compare within a group).

    python -m bench.burst                                  # 3,000 and 10,000, pattern and every, x1 x2 x3
    python -m bench.burst --entries 3000 --kinds pattern --instances 1,2

Per row: a fresh store and broker redis-server, N entries due together every
--period seconds; after --warmup bursts, --bursts bursts are measured from the
broker's contents (the publish stamp of every message, see bench/benchapp.py):
the drain (last publish of a burst minus its nominal tick), the rate it implies
(N / drain, against the ceiling's N / its first-to-last publish), lateness of the first and last message of each
burst, beat CPU and store-Redis CPU per 1,000 dispatches. Writes
bench/results/burst.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis

from bench.common import Servers, pct, queue_length, read_messages, save, start_beat, start_ceiling, table, wait_for


def _redis_cpu(server: Any) -> float:
    info = redis.Redis(port=server.port).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def ceiling(workdir: Path, entries: int, runs: int = 2) -> float:
    """The bare send_task loop's rate for a burst of the same size: N messages sent as fast
    as one process can, first publish to last (the median of ``runs``, each on fresh servers)."""
    rates = []
    for r in range(runs):
        where = workdir / f"ceiling-{entries}-{r}"
        where.mkdir(parents=True, exist_ok=True)
        with Servers(where) as servers:
            proc = start_ceiling(servers, where, 0, count=entries)
            wait_for(lambda p=proc, s=servers: queue_length(s) >= entries or not p.alive(), 300, what="the ceiling's burst")
            proc.stop()
            pubs = [m.pub_ms for m in read_messages(servers)]
        rates.append(len(pubs) / ((max(pubs) - min(pubs)) / 1000))
    return sorted(rates)[len(rates) // 2]


def run_one(kind: str, entries: int, instances: int, period: float, warmup: int, bursts: int, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    with Servers(workdir) as servers:
        env = {"BENCH_ENTRIES": str(entries), "BENCH_PERIOD": str(period), "BENCH_BURST": kind}
        procs = [start_beat(servers, workdir, "redbeat_safe", f"{kind}-{instances}-{i}", env) for i in range(instances)]
        try:
            wait_for(lambda: queue_length(servers) > 0 or not all(p.alive() for p in procs), 300, what="the first burst")
            time.sleep(period * (warmup - 0.5))  # past the warm-up bursts, just before the next
            cpu0, rcpu0, sent0 = sum(p.cpu_seconds() for p in procs), _redis_cpu(servers.store), queue_length(servers)
            time.sleep(period * bursts)
            cpu1, rcpu1, sent1 = sum(p.cpu_seconds() for p in procs), _redis_cpu(servers.store), queue_length(servers)
            alive = all(p.alive() for p in procs)
        finally:
            for p in procs:
                p.stop()
        msgs = read_messages(servers)
    by_tick: dict[float, list[float]] = defaultdict(list)
    for m in msgs:
        if m.due_ms is not None:
            by_tick[m.due_ms].append(m.pub_ms)
    full = sorted(t for t, pubs in by_tick.items() if len(pubs) >= entries)[warmup:warmup + bursts]
    drains = [max(by_tick[t]) - t for t in full]
    firsts = [min(by_tick[t]) - t for t in full]
    ids = [m.task_id for m in msgs]
    dispatched = max(1, sent1 - sent0)
    return {
        "kind": kind, "entries": entries, "instances": instances, "bursts": len(full),
        "drain_ms": pct(drains, 50), "rate_per_s": entries / (pct(drains, 50) / 1000) if drains else float("nan"),
        "first_p50_ms": pct(firsts, 50), "first_p99_ms": pct(firsts, 99), "last_p50_ms": pct(drains, 50), "last_p99_ms": pct(drains, 99),
        "cpu_s_per_1000": (cpu1 - cpu0) / dispatched * 1000, "redis_cpu_s_per_1000": (rcpu1 - rcpu0) / dispatched * 1000,
        "duplicate_ids": len(ids) - len(set(ids)), "alive": alive,
    }


COLUMNS = ["kind", "entries", "instances", "bursts", "drain_ms", "rate_per_s", "ceiling_per_s", "of_ceiling", "split", "first_p50_ms", "first_p99_ms",
           "last_p50_ms", "last_p99_ms", "cpu_s_per_1000", "redis_cpu_s_per_1000", "duplicate_ids", "alive"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", default="3000,10000")
    p.add_argument("--kinds", default="pattern,every")
    p.add_argument("--instances", default="1,2,3")
    p.add_argument("--period", type=float, default=10.0)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--bursts", type=int, default=3)
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    ceilings: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        for kind in args.kinds.split(","):
            for n in map(int, args.entries.split(",")):
                top = ceiling(Path(tmp), n)  # measured beside each group of rows: the machine's speed drifts
                ceilings.setdefault(n, top)
                print(f"bare send_task ceiling, {n:,} messages in one process: {top:,.0f} msg/s", flush=True)
                base = None
                for k in map(int, args.instances.split(",")):
                    row = run_one(kind, n, k, args.period, args.warmup, args.bursts, Path(tmp) / f"{kind}-{n}-{k}")
                    row["ceiling_per_s"] = top
                    row["of_ceiling"] = row["rate_per_s"] / top
                    base = row["drain_ms"] if k == 1 else base
                    row["split"] = row["drain_ms"] / base if base else float("nan")
                    rows.append(row)
                    print(table([row], COLUMNS), flush=True)
    print()
    print(table(rows, COLUMNS))
    save("burst" + ("-before" if os.environ.get("BENCH_CODE") else ""), {"ceilings_per_s": ceilings, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
