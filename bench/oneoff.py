"""A million one-off runs: `at` entries spread over a day, registered with
`Schedules.upsert_many`; Redis memory per entry; the cost of a tick with that many
stored beside the same tick with a thousand; and the clean-up of finished entries.

    python -m bench.oneoff                      # 1,000,000 and 1,000 stored, 2,000 due
    python -m bench.oneoff --stored 100000,1000

Per row: a fresh store and broker redis-server (no AOF). Registration time is the wall
clock of one upsert_many call (validation included; the items are built before); memory is Redis's used_memory
before and after, per entry. The tick: 2,000 more entries due now, drained by one
engine in this process publishing through Celery to the broker; per 1,000 dispatches:
store commands (INFO commandstats), store-Redis CPU, this process's CPU. The clean-up:
those 2,000 finish, and one sweep (SWEEP_BATCH, what a beat removes per call) is timed:
Redis serves nothing else meanwhile.
Writes bench/results/oneoff.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.common import Servers, save, table
from redbeat_safe import Schedules, at
from redbeat_safe.engine import SWEEP_BATCH, Engine


def _redis_stats(port: int) -> tuple[float, int, int]:
    c = redis.Redis(port=port)
    cpu = c.info("cpu")
    calls = sum(v.get("calls", 0) for v in c.info("commandstats").values())
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls, int(c.info("memory")["used_memory"])


def run_one(stored: int, due: int, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    with Servers(workdir) as servers:
        app = Celery("oneoff", set_as_current=False)
        app.conf.update(broker_url=servers.broker.url, redbeat_safe_redis_url=servers.store.url, redbeat_safe_key_prefix="b",
                        task_default_queue="bench", result_backend=None, result_expires=None)
        s = Schedules(app)
        start = datetime.now(timezone.utc) + timedelta(hours=1)
        # built beforehand: the caller's own work (about 6 µs an item), not upsert_many's
        items = [{"name": f"once-{i:07d}", "task": "bench.noop", "schedule": at(start + timedelta(seconds=86400 * i / stored)),
                  "args": [i]} for i in range(stored)]
        _, _, mem0 = _redis_stats(servers.store.port)
        t0 = time.perf_counter()
        counts = s.upsert_many(items)
        register_s = time.perf_counter() - t0
        _, _, mem1 = _redis_stats(servers.store.port)
        now = datetime.now(timezone.utc)
        s.upsert_many({"name": f"due-{i:05d}", "task": "bench.noop", "schedule": at(now - timedelta(milliseconds=i % 500)), "args": [i]}
                      for i in range(due))
        settings = s.settings
        engine = Engine(s.store, settings, lambda e, name, tick: _publish(app, producer, e, tick), 1.0, instance_id="bench")
        conn = app.connection_for_write()
        producer = app.amqp.Producer(conn, auto_declare=False)
        engine.register()
        cpu0, calls0, _ = _redis_stats(servers.store.port)
        p0, w0 = time.process_time(), time.perf_counter()
        sent0 = engine.published
        while engine.published - sent0 < due:
            if engine.run_once() > 0 and engine.published - sent0 < due:
                time.sleep(0.001)
        drain = time.perf_counter() - w0
        beat_cpu = time.process_time() - p0
        cpu1, calls1, _ = _redis_stats(servers.store.port)
        engine.run_once()  # acknowledgements out
        per = 1000 / due
        # the clean-up: the `due` entries finished just now; one sweep with the retention at 0
        t1 = time.perf_counter()
        swept = s.store.sweep_finished(0, SWEEP_BATCH)
        sweep_ms = (time.perf_counter() - t1) * 1000
        conn.release()
    return {"stored": stored, "register_s": register_s, "register_per_s": stored / register_s, "created": counts.get("created", 0),
            "memory_b_per_entry": (mem1 - mem0) / stored, "due": due, "drain_ms": drain * 1000,
            "store_cmds_per_1000": (calls1 - calls0) * per, "redis_cpu_s_per_1000": (cpu1 - cpu0) * per,
            "beat_cpu_s_per_1000": beat_cpu * per, "swept": len(swept), "sweep_ms": sweep_ms}


def _publish(app: Celery, producer: Any, entry: Any, tick: int) -> None:
    from redbeat_safe.dispatch import publish

    publish(app, entry, "b", tick, producer=producer, instance="bench")


COLUMNS = ["stored", "register_s", "register_per_s", "memory_b_per_entry", "due", "drain_ms", "store_cmds_per_1000",
           "redis_cpu_s_per_1000", "beat_cpu_s_per_1000", "swept", "sweep_ms"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stored", default="1000000,1000")
    p.add_argument("--due", type=int, default=2000)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-oneoff-") as tmp:
        for n in map(int, args.stored.split(",")):
            row = run_one(n, args.due, Path(tmp) / f"n{n}")
            rows.append(row)
            print(table([row], COLUMNS), flush=True)
    print()
    print(table(rows, COLUMNS))
    save("oneoff", {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
