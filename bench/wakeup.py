"""Changes through the API, and an idle beat's cost: how late is the first publish of an
entry added, changed or resumed through `Schedules` while two beats sleep, measured
from the tick it falls due at (one interval after the change), for
`beat_max_loop_interval` = 1, 30 and 300 s; and how many Redis round trips and
commands an idle beat makes per second.

    python -m bench.wakeup                       # loops 1, 30, 300 s; 20 changes of each kind
    python -m bench.wakeup --loops 1 --changes 5
    BENCH_CODE=/path/to/older/checkout python -m bench.wakeup   # the beats run that code ("before")

Per row: a fresh store and broker redis-server, two beats with no due entry. First
--idle seconds of nothing: round trips per beat (counted in each beat process, a
pipeline is one) and store commands per beat (INFO commandstats). Then --changes
operations of each kind, one every 0.3 s, on entries `every(--interval)`:
`added` (a new entry), `changed` (an `every(1h)` entry given the short interval), and
`resumed` (a paused entry resumed). Lateness is the publish stamp of the entry's
first message minus its nominal tick (see bench/benchapp.py). Writes
bench/results/wakeup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.common import Servers, pct, save, start_beat, table, wait_for
from redbeat_safe import Schedules, every

KINDS = ("added", "changed", "resumed")


def _app(servers: Servers) -> Celery:
    app = Celery("bench-driver", set_as_current=False)
    app.conf.update(broker_url=servers.broker.url, redbeat_safe_redis_url=servers.store.url, redbeat_safe_key_prefix="bench",
                    task_default_queue="bench", result_backend=None, result_expires=None)
    return app


def _first_lateness(servers: Servers) -> dict[str, float]:
    """entry -> publish stamp minus nominal tick of its first message (ms)."""
    client = redis.Redis(port=servers.broker.port, socket_timeout=60)
    first: dict[str, tuple[float, float]] = {}
    for raw in client.lrange("bench", 0, -1):
        h = json.loads(raw)["headers"]
        name, tick, pub = h.get("redbeat_safe_entry"), h.get("redbeat_safe_tick_ms"), h.get("bench_pub_ms")
        if name and tick is not None and (name not in first or tick < first[name][0]):
            first[name] = (tick, pub - tick)
    client.close()
    return {name: late for name, (_, late) in first.items()}


def _store_commands(servers: Servers) -> float:
    stats = redis.Redis(port=servers.store.port).info("commandstats")
    return float(sum(v.get("calls", 0) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_xread", "cmdstat_eval")))


def _round_trips(files: list[Path]) -> float:
    total = 0.0
    for f in files:
        try:
            total += json.loads(f.read_text()).get("round_trips", 0)
        except (OSError, ValueError):
            pass
    return total


def run_one(loop: float, changes: int, interval: float, idle: float, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    with Servers(workdir) as servers:
        files = [workdir / f"rt-{i}.json" for i in range(2)]
        procs = [start_beat(servers, workdir, "redbeat_safe", f"w{loop:g}-{i}",
                            {"BENCH_ENTRIES": "0", "BENCH_MAX_INTERVAL": str(loop), "BENCH_RT_FILE": str(files[i])}) for i in range(2)]
        try:
            store = redis.Redis(port=servers.store.port)
            wait_for(lambda: store.zcard("{bench}:instances") >= 2, 60, what="two beats registered")
            app = _app(servers)
            s = Schedules(app)
            for i in range(changes):  # set up before measuring: nothing here is due during the run
                s.upsert(f"changed{i}", "bench.noop", every(hours=1), args=[i])
                s.upsert(f"resumed{i}", "bench.noop", every(interval), args=[i], enabled=False)
            time.sleep(3)  # let the beats settle into their sleep
            rt0, cmd0, t0 = _round_trips(files), _store_commands(servers), time.time()
            time.sleep(idle)
            rt1, cmd1, t1 = _round_trips(files), _store_commands(servers), time.time()
            for i in range(changes):
                s.upsert(f"added{i}", "bench.noop", every(interval), args=[i])
                time.sleep(0.1)
                s.upsert(f"changed{i}", "bench.noop", every(interval), args=[i])
                time.sleep(0.1)
                s.resume(f"resumed{i}")
                time.sleep(0.1)
            want = {f"{k}{i}" for k in KINDS for i in range(changes)}
            wait_for(lambda: want <= set(_first_lateness(servers)) or not all(p.alive() for p in procs),
                     loop + interval + 60, interval=0.5, what="every changed entry's first publish")
            late = _first_lateness(servers)
            alive = all(p.alive() for p in procs)
        finally:
            for p in procs:
                p.stop()
    row: dict[str, Any] = {"loop_s": loop, "code": os.environ.get("BENCH_CODE", "this checkout"), "alive": alive,
                           "idle_round_trips_per_s_per_beat": (rt1 - rt0) / (t1 - t0) / 2,
                           "idle_commands_per_s_per_beat": (cmd1 - cmd0) / (t1 - t0) / 2}
    for kind in KINDS:
        values = [late[f"{kind}{i}"] for i in range(changes) if f"{kind}{i}" in late]
        row[f"{kind}_p50_ms"], row[f"{kind}_p99_ms"], row[f"{kind}_max_ms"] = pct(values, 50), pct(values, 99), max(values, default=0)
        row[f"{kind}_n"] = len(values)
    return row


COLUMNS = ["loop_s", "idle_round_trips_per_s_per_beat", "idle_commands_per_s_per_beat",
           *(f"{k}_{m}" for k in KINDS for m in ("p50_ms", "p99_ms", "max_ms")), "alive"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loops", default="1,30,300")
    p.add_argument("--changes", type=int, default=20)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--idle", type=float, default=10.0)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-wakeup-") as tmp:
        for loop in map(float, args.loops.split(",")):
            row = run_one(loop, args.changes, args.interval, args.idle, Path(tmp) / f"loop{loop:g}")
            rows.append(row)
            print(table([row], COLUMNS), flush=True)
    print()
    print(table(rows, COLUMNS))
    save("wakeup" + ("-before" if os.environ.get("BENCH_CODE") else ""), {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
