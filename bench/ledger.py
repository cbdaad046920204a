"""The run ledger's cost on the worker side: tasks per second of a no-op task published
by redbeat_safe (its headers), with and without `imports = ["redbeat_safe.runs"]`,
alternating in one run.

    python -m bench.ledger                    # 2,000 tasks, solo and prefork (-c 2), a no-op and a 10 ms task, 3 rounds
    python -m bench.ledger --tasks 5000 --pools solo
    python -m bench.ledger --before /path/to/older/checkout   # a third variant: that checkout's ledger

Per row: a fresh broker and store redis-server; the variants alternate, and the summary
gives each one's median over the rounds; N messages with redbeat_safe's headers
are queued first, then one worker starts; the rate is N over the time from the first
task's start to the last task's end (each task stamps its own time in the broker Redis,
the same work with and without the ledger). Beside it, the CPU the worker (all its
processes) and the store Redis spent per task: steadier than a rate on a shared
machine. Writes bench/results/ledger.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import ROOT, TICKS, Servers, code_shim, save, table, wait_for

APP = '''
import os, time, redis
from celery import Celery
app = Celery("ledgerbench")
app.conf.update(broker_url=os.environ["LB_BROKER"], redbeat_safe_redis_url=os.environ["LB_STORE"], redbeat_safe_key_prefix="lb",
                task_default_queue="lb", result_backend=None, result_expires=None, worker_prefetch_multiplier=4)
if os.environ.get("LB_LEDGER"):
    app.conf.imports = ["redbeat_safe.runs"]
    if os.environ.get("LB_FLUSH"):
        import redbeat_safe.runs
        redbeat_safe.runs.FLUSH_EVERY = float(os.environ["LB_FLUSH"])
_r = None

@app.task(name="lb.noop")
def noop(i):
    global _r
    work = float(os.environ.get("LB_TASK_MS") or 0)
    if work:
        time.sleep(work / 1000)
    if _r is None:
        _r = redis.Redis.from_url(os.environ["LB_BROKER"])
    _r.rpush("lb:done", f"{i} {time.time()}")
'''


def _tree_cpu(root: int) -> float:
    """User + system CPU seconds of a process and every descendant still running (a
    prefork worker's pool children included), from /proc."""
    parent, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parent[pid], cpu[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS
    total = 0.0
    for pid, seconds in cpu.items():
        p = pid
        while p and p != root:
            p = parent.get(p, 0)
        if p == root:
            total += seconds
    return total


def _redis_cpu(port: int) -> float:
    info = redis.Redis(port=port).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _fill(servers: Servers, workdir: Path, n: int) -> None:
    env = {**os.environ, "LB_BROKER": servers.broker.url, "LB_STORE": servers.store.url, "PYTHONPATH": f"{workdir}:{ROOT}"}
    code = ("import uuid\nfrom lbapp import app\nfrom redbeat_safe import Schedules, every\n"
            "Schedules(app).upsert('e', 'lb.noop', every(3600))\n"
            "with app.producer_or_acquire() as p:\n"
            f"    for i in range({n}):\n"
            "        app.send_task('lb.noop', [i], producer=p, task_id=str(uuid.uuid4()), "
            "headers={'redbeat_safe_entry': 'e', 'redbeat_safe_tick_ms': 1800000000000 + i * 1000})\n")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=workdir)


def run_one(pool: str, ledger: bool, n: int, workdir: Path, task_ms: float = 0.0, code: str | None = None) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "lbapp.py").write_text(APP)
    with Servers(workdir) as servers:
        _fill(servers, workdir, n)
        path = os.pathsep.join([str(workdir), *([code_shim(code)] if code else []), str(ROOT)])
        env = {**os.environ, "LB_BROKER": servers.broker.url, "LB_STORE": servers.store.url, "PYTHONPATH": path,
               "LB_LEDGER": "1" if ledger else "", "LB_TASK_MS": str(task_ms)}
        cmd = [sys.executable, "-m", "celery", "-A", "lbapp", "worker", "--pool", pool, "-c", "1" if pool == "solo" else "2",
               "-Q", "lb", "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        log = open(workdir / f"worker-{pool}-{ledger}.log", "ab")
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        broker = redis.Redis(port=servers.broker.port)
        try:
            # CPU from the first task on (the worker's start-up is the same with and without)
            wait_for(lambda: broker.llen("lb:done") >= 1 or proc.poll() is not None, 120, interval=0.01, what="the first task")
            done0, worker0, store0 = broker.llen("lb:done"), _tree_cpu(proc.pid), _redis_cpu(servers.store.port)
            wait_for(lambda: broker.llen("lb:done") >= n or proc.poll() is not None, 600, interval=0.2, what="every task")
            time.sleep(0.2)  # the ledger's last batch
            worker_cpu = (_tree_cpu(proc.pid) - worker0) / (n - done0) * n
            store_cpu = (_redis_cpu(servers.store.port) - store0) / (n - done0) * n
        finally:
            proc.terminate()
            proc.wait(30)
        stamps = sorted(float(x.split()[1]) for x in broker.lrange("lb:done", 0, -1))
        recorded = redis.Redis(port=servers.store.port).zcard("{lb}:runs:e")
    return {"pool": pool, "task_ms": task_ms, "ledger": ("before" if code else "yes") if ledger else "no",
            "worker_cpu_us_per_task": worker_cpu / n * 1e6, "store_cpu_us_per_task": store_cpu / n * 1e6, "tasks": len(stamps), "tasks_per_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
            "ledger_records": recorded}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--pools", default="solo,prefork")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--task-ms", default="0,10", help="How long each task works (sleeps), ms: 0 is a no-op task.")
    p.add_argument("--before", help="Another checkout: its ledger is a third variant, alternating with the other two.")
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        for r in range(args.rounds):
            for task_ms in map(float, args.task_ms.split(",")):
                for pool in args.pools.split(","):
                    variants: list[tuple[bool, str | None]] = [(False, None), (True, None)] + ([(True, args.before)] if args.before else [])
                    for v, (ledger, code) in enumerate(variants):
                        row = run_one(pool, ledger, args.tasks, Path(tmp) / f"{pool}-{task_ms}-{v}-{r}", task_ms, code)
                        rows.append(row)
                        print(table([row], list(row)), flush=True)
    summary = []
    for task_ms in map(float, args.task_ms.split(",")):
        for pool in args.pools.split(","):
            same = [r for r in rows if r["pool"] == pool and r["task_ms"] == task_ms]

            def median(variant: str, field: str = "tasks_per_s", same: list[dict[str, Any]] = same) -> float:
                values = sorted(r[field] for r in same if r["ledger"] == variant)
                return values[len(values) // 2] if values else float("nan")

            cpu = "worker_cpu_us_per_task"
            row = {"pool": pool, "task_ms": task_ms, "without_ledger_per_s": median("no"), "with_ledger_per_s": median("yes"),
                   "overhead_pct": (1 - median("yes") / median("no")) * 100,
                   "worker_cpu_us_without": median("no", cpu), "worker_cpu_us_with": median("yes", cpu),
                   "worker_cpu_overhead_pct": (median("yes", cpu) / median("no", cpu) - 1) * 100,
                   "store_cpu_us_with": median("yes", "store_cpu_us_per_task")}
            if args.before:
                row.update({"before_per_s": median("before"), "before_overhead_pct": (1 - median("before") / median("no")) * 100,
                            "worker_cpu_us_before": median("before", cpu)})
            summary.append(row)
    print()
    print(table(summary, list(summary[0])))
    save("ledger", {"rows": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
