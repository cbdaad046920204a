"""The run ledger's cost on the worker side: tasks per second of a no-op task published
by redbeat_safe (its headers), with and without `imports = ["redbeat_safe.runs"]`,
alternating in one run.

    python -m bench.ledger                    # 2,000 tasks, solo and prefork (-c 2), a no-op and a 10 ms task, 3 rounds
    python -m bench.ledger --tasks 5000 --pools solo

Per row: a fresh broker and store redis-server; N messages with redbeat_safe's headers
are queued first, then one worker starts; the rate is N over the time from the first
task's start to the last task's end (each task stamps its own time in the broker Redis,
the same work with and without the ledger). Writes bench/results/ledger.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from bench.common import ROOT, Servers, save, table, wait_for

APP = '''
import os, time, redis
from celery import Celery
app = Celery("ledgerbench")
app.conf.update(broker_url=os.environ["LB_BROKER"], redbeat_safe_redis_url=os.environ["LB_STORE"], redbeat_safe_key_prefix="lb",
                task_default_queue="lb", result_backend=None, result_expires=None, worker_prefetch_multiplier=4)
if os.environ.get("LB_LEDGER"):
    app.conf.imports = ["redbeat_safe.runs"]
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


def _fill(servers: Servers, workdir: Path, n: int) -> None:
    env = {**os.environ, "LB_BROKER": servers.broker.url, "LB_STORE": servers.store.url, "PYTHONPATH": f"{workdir}:{ROOT}"}
    code = ("import uuid\nfrom lbapp import app\nfrom redbeat_safe import Schedules, every\n"
            "Schedules(app).upsert('e', 'lb.noop', every(3600))\n"
            "with app.producer_or_acquire() as p:\n"
            f"    for i in range({n}):\n"
            "        app.send_task('lb.noop', [i], producer=p, task_id=str(uuid.uuid4()), "
            "headers={'redbeat_safe_entry': 'e', 'redbeat_safe_tick_ms': 1800000000000 + i * 1000})\n")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=workdir)


def run_one(pool: str, ledger: bool, n: int, workdir: Path, task_ms: float = 0.0) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "lbapp.py").write_text(APP)
    with Servers(workdir) as servers:
        _fill(servers, workdir, n)
        env = {**os.environ, "LB_BROKER": servers.broker.url, "LB_STORE": servers.store.url, "PYTHONPATH": f"{workdir}:{ROOT}",
               "LB_LEDGER": "1" if ledger else "", "LB_TASK_MS": str(task_ms)}
        cmd = [sys.executable, "-m", "celery", "-A", "lbapp", "worker", "--pool", pool, "-c", "1" if pool == "solo" else "2",
               "-Q", "lb", "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        log = open(workdir / f"worker-{pool}-{ledger}.log", "ab")
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        broker = redis.Redis(port=servers.broker.port)
        try:
            wait_for(lambda: broker.llen("lb:done") >= n or proc.poll() is not None, 600, interval=0.2, what="every task")
        finally:
            proc.terminate()
            proc.wait(30)
        stamps = sorted(float(x.split()[1]) for x in broker.lrange("lb:done", 0, -1))
        recorded = redis.Redis(port=servers.store.port).zcard("{lb}:runs:e")
    return {"pool": pool, "task_ms": task_ms, "ledger": ledger, "tasks": len(stamps), "tasks_per_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
            "ledger_records": recorded}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--pools", default="solo,prefork")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--task-ms", default="0,10", help="How long each task works (sleeps), ms: 0 is a no-op task.")
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        for r in range(args.rounds):
            for task_ms in map(float, args.task_ms.split(",")):
                for pool in args.pools.split(","):
                    for ledger in (False, True):
                        row = run_one(pool, ledger, args.tasks, Path(tmp) / f"{pool}-{task_ms}-{ledger}-{r}", task_ms)
                        rows.append(row)
                        print(table([row], list(row)), flush=True)
    summary = []
    for task_ms in map(float, args.task_ms.split(",")):
        for pool in args.pools.split(","):
            same = [r for r in rows if r["pool"] == pool and r["task_ms"] == task_ms]
            without = sorted(r["tasks_per_s"] for r in same if not r["ledger"])
            with_ = sorted(r["tasks_per_s"] for r in same if r["ledger"])
            med_without, med_with = without[len(without) // 2], with_[len(with_) // 2]
            summary.append({"pool": pool, "task_ms": task_ms, "without_ledger_per_s": med_without, "with_ledger_per_s": med_with,
                            "overhead_pct": (1 - med_with / med_without) * 100})
    print()
    print(table(summary, list(summary[0])))
    save("ledger", {"rows": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
