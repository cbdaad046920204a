"""What a dispatched tick costs: Redis commands and round trips per tick, idle calls
per second, startup registration of 10,000 static entries, memory per entry, and
beat CPU per 1,000 dispatches; redbeat_safe beside celery-redbeat where both apply.

    python -m bench.cost            (~3 min; writes bench/results/cost.json)

Commands are counted by the store Redis itself (``INFO commandstats`` deltas,
which include the commands a Lua script runs); round trips are counted in the
beat process, per socket write to the store (see bench/benchapp.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.common import Servers, queue_length, read_messages, save, start_beat, table, wait_for
from redbeat_safe.config import Settings
from redbeat_safe.definitions import from_beat_entry
from redbeat_safe.engine import Engine
from redbeat_safe.store import _SOURCES, RedisStore

SHAS = {hashlib.sha1(src.encode()).hexdigest()[:12]: name for name, src in _SOURCES.items()}


def commandstats(port: int) -> dict[str, int]:
    info = redis.Redis(port=port).info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def _delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0)}


def _rt(path: Path) -> dict[str, int]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def under_load(scheduler: str, entries: int, warmup: float, window: float, workdir: Path) -> dict[str, Any]:
    """Per dispatched tick, at a load the scheduler keeps up with."""
    workdir.mkdir(parents=True, exist_ok=True)
    rt_file = workdir / "rt.json"
    with Servers(workdir) as servers:
        proc = start_beat(servers, workdir, scheduler, scheduler, {"BENCH_ENTRIES": str(entries), "BENCH_RT_FILE": str(rt_file)})
        try:
            wait_for(lambda: queue_length(servers) > 0, 300, what="the first message")
            time.sleep(warmup)
            c0, r0, cpu0, w0 = commandstats(servers.store.port), _rt(rt_file), proc.cpu_seconds(), time.time()
            time.sleep(window)
            time.sleep(0.6)  # one more dump of the round-trip counts
            c1, r1, cpu1, w1 = commandstats(servers.store.port), _rt(rt_file), proc.cpu_seconds(), time.time()
        finally:
            proc.stop()
        msgs = read_messages(servers)
    ticks = len([m for m in msgs if w0 * 1000 <= m.pub_ms < w1 * 1000])
    cmds, rts = _delta(c0, c1), _delta(r0, r1)
    scripts = {SHAS.get(k.split()[1], k.split()[1]): v for k, v in rts.items() if k.startswith("EVALSHA")}
    batches = scripts.get("claim", 0)
    return {
        "scheduler": scheduler, "entries": entries, "ticks": ticks, "ticks_per_s": ticks / (w1 - w0),
        "commands_per_tick": sum(cmds.values()) / max(1, ticks),
        "round_trips_per_tick": rts.get("round_trips", 0) / max(1, ticks),
        "claim_batches": batches, "round_trips_per_batch": rts.get("round_trips", 0) / batches if batches else None,
        "ticks_per_batch": ticks / batches if batches else None,
        "cpu_s_per_1000": (cpu1 - cpu0) / max(1, ticks) * 1000,
        "redis_commands": cmds, "client_calls": {**{k: v for k, v in rts.items() if not k.startswith("EVALSHA")}, **scripts},
    }


def idle(scheduler: str, seconds: float, workdir: Path) -> dict[str, Any]:
    """Calls per second of an instance with nothing due (10 entries, daily)."""
    workdir.mkdir(parents=True, exist_ok=True)
    rt_file = workdir / "rt.json"
    with Servers(workdir) as servers:
        proc = start_beat(servers, workdir, scheduler, scheduler, {"BENCH_IDLE_ENTRIES": "10", "BENCH_RT_FILE": str(rt_file)})
        try:
            wait_for(lambda: rt_file.exists(), 60, what="the beat to start")
            time.sleep(5)
            c0, r0, t0 = commandstats(servers.store.port), _rt(rt_file), time.time()
            time.sleep(seconds)
            time.sleep(0.6)
            c1, r1, t1 = commandstats(servers.store.port), _rt(rt_file), time.time()
        finally:
            proc.stop()
    cmds, rts = _delta(c0, c1), _delta(r0, r1)
    return {"scheduler": scheduler, "seconds": round(t1 - t0, 1), "round_trips_per_s": rts.get("round_trips", 0) / (t1 - t0),
            "commands_per_s": sum(cmds.values()) / (t1 - t0), "redis_commands": cmds}


def registration(entries: int, workdir: Path) -> list[dict[str, Any]]:
    """Engine.register() (what beat runs at startup) for N static entries: cold, warm, one changed."""
    rows = []
    with Servers(workdir) as servers:
        app = Celery("reg", broker=servers.broker.url)
        app.conf.update(redbeat_safe_redis_url=servers.store.url, redbeat_safe_key_prefix="reg", timezone="UTC")
        settings = Settings.from_app(app)
        spec = lambda i, every: {"task": "bench.noop", "schedule": float(every), "args": [i]}  # noqa: E731
        defs = [from_beat_entry(f"e{i}", spec(i, 60), "UTC") for i in range(entries)]
        client = redis.Redis(port=servers.store.port)
        mem0 = int(client.info("memory")["used_memory"])
        for label, batch in (("cold (empty Redis)", defs), ("warm restart (all unchanged)", defs),
                             ("restart with 1% changed", [from_beat_entry(d.name, spec(i, 30), "UTC") if i % 100 == 0 else d
                                                          for i, d in enumerate(defs)])):
            engine = Engine(RedisStore(client, "reg"), settings, lambda *a: None, 1.0, batch)
            t0 = time.perf_counter()
            results = engine.register()
            took = time.perf_counter() - t0
            outcomes: dict[str, int] = {}
            for o in results.values():
                outcomes[o] = outcomes.get(o, 0) + 1
            rows.append({"case": label, "entries": entries, "seconds": took, "outcomes": outcomes})
            if label.startswith("cold"):
                mem1 = int(client.info("memory")["used_memory"])
        for r in rows:
            r["memory_bytes_per_entry"] = (mem1 - mem0) / entries
        client.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=500, help="entries every 1 s for the per-tick figures")
    p.add_argument("--window", type=float, default=15.0)
    p.add_argument("--idle-seconds", type=float, default=30.0)
    p.add_argument("--static", type=int, default=10_000, help="static entries for the registration figures")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cost-") as tmp:
        load = [under_load(s, a.entries, 6, a.window, Path(tmp) / f"load-{s}") for s in ("redbeat_safe", "redbeat")]
        print("\nPer dispatched tick\n" + table(load, ["scheduler", "entries", "ticks_per_s", "commands_per_tick", "round_trips_per_tick",
              "ticks_per_batch", "round_trips_per_batch", "cpu_s_per_1000"]), flush=True)
        for r in load:
            print(f"  {r['scheduler']}: Redis commands {r['redis_commands']}\n  {r['scheduler']}: client calls {r['client_calls']}")
        quiet = [idle(s, a.idle_seconds, Path(tmp) / f"idle-{s}") for s in ("redbeat_safe", "redbeat")]
        print("\nIdle (10 entries, none due)\n" + table(quiet, ["scheduler", "seconds", "round_trips_per_s", "commands_per_s"]), flush=True)
        for r in quiet:
            print(f"  {r['scheduler']}: {r['redis_commands']}")
        reg = registration(a.static, Path(tmp) / "reg")
        print("\nStartup registration (Engine.register)\n" + table(reg, ["case", "entries", "seconds", "memory_bytes_per_entry", "outcomes"]), flush=True)
    save("cost", {"under_load": load, "idle": quiet, "registration": reg})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
