"""Instructions per dispatch, counted by valgrind (callgrind): a measure that does not
move with the machine's load, unlike the drain times of bench/burst.py on a shared VM.

    python -m bench.instructions                 # 1,000 entries, pattern and every
    python -m bench.instructions --entries 3000 --kinds pattern
    BENCH_CODE=/path/to/older/checkout python -m bench.instructions    # that checkout's engine ("before")

Needs valgrind (Debian: apt-get install valgrind).

Each figure is the difference between two runs of the same process under callgrind,
one doing a warm burst more than the other, divided by the messages of that burst:
start-up, imports and the first (cold) burst cancel out. Counted: the beat's own
process (the engine on a real store redis-server, publishing through Celery to a real
broker redis-server), and the bare `send_task` loop sending the same number of
messages. The Redis servers are separate processes and are not counted (their CPU is
in bench/burst.py's redis_cpu column). Writes bench/results/instructions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ROOT, Servers, _other_code, save, table

CHILD = r'''
import sys, uuid
sys.path[:0] = [p for p in sys.argv[5].split(":") if p]
from celery import Celery
mode, n, bursts, broker, store = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split("|")[0], sys.argv[4].split("|")[1]
app = Celery("instr", set_as_current=False)
app.conf.update(broker_url=broker, task_default_queue="bench", result_backend=None, result_expires=None)

@app.task(name="bench.noop")
def noop(*a): pass

if mode == "ceiling":
    with app.producer_or_acquire() as producer:
        for _ in range(bursts):
            for i in range(n):
                app.send_task("bench.noop", [i], {}, producer=producer, task_id=str(uuid.uuid4()), headers={"celery_beat_task": True})
    raise SystemExit(0)

import redis
from redbeat_safe import every, pattern, registry
from redbeat_safe.config import Settings
from redbeat_safe.definitions import build
from redbeat_safe.dispatch import publish
from redbeat_safe.engine import Engine
from redbeat_safe.store import RedisStore
T0 = 1_800_000_000_000
client = redis.Redis.from_url(store)
prefix = "instr" + uuid.uuid4().hex[:6]
clock = "{" + prefix + "}:testclock"
client.set(clock, T0)
sched = pattern("*/10 * * * * *", tz="UTC") if mode == "pattern" else every(10, align=True)
registry.upsert(RedisStore(client, prefix, test_clock_key=clock), [build(f"e{i}", "bench.noop", sched, args=[i], default_tz="UTC") for i in range(n)], "api")
settings = Settings(redis_url=store, key_prefix=prefix, lease_ms=600_000)
conn = app.connection_for_write()
producer = app.amqp.Producer(conn, auto_declare=False)
engine = Engine(RedisStore(client, prefix, test_clock_key=clock), settings, lambda e, name, t: publish(app, e, prefix, t, producer=producer, instance="i"), 1.0, instance_id="i")
engine.register()
for k in range(1, bursts + 1):
    client.set(clock, T0 + k * 10_000)
    for _ in range(10_000):
        if engine.run_once() > 0:
            break
'''


def _count(mode: str, n: int, bursts: int, servers: Servers, workdir: Path) -> int:
    out = workdir / f"cg-{mode}-{n}-{bursts}.out"
    code = _other_code() or ""
    path = os.pathsep.join(p for p in (code, str(ROOT)) if p)
    script = workdir / "child.py"
    script.write_text(CHILD)
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(script), mode, str(n), str(bursts),
                    f"{servers.broker.url}|{servers.store.url}", path], check=True, capture_output=True, cwd=workdir,
                   env={**os.environ, "PYTHONHASHSEED": "0"})
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
    assert found, f"no totals in {out}"
    return int(found.group(1))


def per_message(mode: str, n: int, workdir: Path) -> float:
    """Instructions of one warm burst of ``n`` messages."""
    counts = []
    for bursts in (2, 3):
        with Servers(workdir / f"{mode}-{bursts}") as servers:
            counts.append(_count(mode, n, bursts, servers, workdir))
    return (counts[1] - counts[0]) / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=1000)
    p.add_argument("--kinds", default="pattern,every")
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp:
        top = per_message("ceiling", args.entries, Path(tmp))
        print(f"bare send_task loop: {top:,.0f} instructions per message", flush=True)
        for kind in args.kinds.split(","):
            ours = per_message(kind, args.entries, Path(tmp))
            rows.append({"kind": kind, "entries": args.entries, "code": os.environ.get("BENCH_CODE", "this checkout"),
                         "beat_instructions_per_dispatch": ours, "ceiling_instructions_per_message": top,
                         "ceiling_over_beat": top / ours})
            print(table(rows[-1:], list(rows[-1])), flush=True)
    print()
    print(table(rows, list(rows[0])))
    save("instructions" + ("-before" if os.environ.get("BENCH_CODE") else ""), {"rows": rows})
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
