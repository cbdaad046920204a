"""The Celery app every benchmark runs (`celery -A bench.benchapp beat -S ...`), configured by environment.

Every message gets two headers stamped in the publishing process, so all
schedulers are measured the same way from the broker's contents alone:
``bench_pub_ms`` (time of publishing) and ``bench_due_ms`` (the tick it was due
for: redbeat_safe's nominal tick, or for Celery's own schedulers and
celery-redbeat their own due time, ``last_run_at + run_every``).
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery, beat
from celery.signals import before_task_publish

env = os.environ
N = int(env.get("BENCH_ENTRIES", "0"))
IDLE = int(env.get("BENCH_IDLE_ENTRIES", "0"))  # stored but not due during the run
PERIOD = float(env.get("BENCH_PERIOD", "1"))

app = Celery("benchapp")
app.conf.update(
    broker_url=env["BENCH_BROKER_URL"],
    task_default_queue="bench",
    timezone="UTC",
    result_backend=None,
    result_expires=None,
    beat_max_loop_interval=float(env.get("BENCH_MAX_INTERVAL", "1")),
    broker_connection_retry_on_startup=True,
    # redbeat_safe
    redbeat_safe_redis_url=env.get("BENCH_STORE_URL"),
    redbeat_safe_key_prefix="bench",
    redbeat_safe_metrics_port=int(env["BENCH_METRICS_PORT"]) if env.get("BENCH_METRICS_PORT") else None,
    # celery-redbeat: its default lock (5 x the loop interval) expires during a
    # long tick with thousands of entries, and the beat then crashes; see docs/benchmarks.md
    redbeat_redis_url=env.get("BENCH_STORE_URL"),
    redbeat_lock_timeout=int(env.get("BENCH_REDBEAT_LOCK", "300")),
)


def _busy(i: int) -> Any:
    burst = env.get("BENCH_BURST")  # redbeat_safe only: every entry due at the same instant, every PERIOD seconds
    if burst:
        import redbeat_safe

        if burst == "pattern":
            return redbeat_safe.pattern(f"*/{int(PERIOD)} * * * * *")
        return redbeat_safe.every(seconds=PERIOD, align=True)
    if env.get("BENCH_SPREAD"):  # redbeat_safe only: entry i on its own phase, i/N of a period in
        import redbeat_safe

        return redbeat_safe.every(seconds=PERIOD, start=datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=PERIOD * i / N))
    return timedelta(seconds=PERIOD)


app.conf.beat_schedule = {
    **{f"e{i}": {"task": "bench.noop", "schedule": _busy(i), "args": [i]} for i in range(N)},
    **{f"idle{i}": {"task": "bench.noop", "schedule": timedelta(days=1), "args": [i]} for i in range(IDLE)},
}

_due = threading.local()
_apply_async = beat.Scheduler.apply_async


def _stamped_apply_async(self: beat.Scheduler, entry: beat.ScheduleEntry, *args: Any, **kwargs: Any) -> Any:
    last = entry.last_run_at
    run_every = getattr(entry.schedule, "run_every", None)
    _due.ms = None if last is None or run_every is None else int((last + run_every).timestamp() * 1000)
    try:
        return _apply_async(self, entry, *args, **kwargs)
    finally:
        _due.ms = None


beat.Scheduler.apply_async = _stamped_apply_async  # Celery's and celery-redbeat's publishing path


@before_task_publish.connect
def _stamp(headers: dict[str, Any], **_: Any) -> None:
    headers["bench_pub_ms"] = time.time() * 1000
    due = headers.get("redbeat_safe_tick_ms") or getattr(_due, "ms", None)
    if due is not None:
        headers["bench_due_ms"] = due


@app.task(name="bench.noop")
def noop(*args: Any) -> None:
    """Never executed: the benchmarks read the messages off the broker."""


def _count_round_trips(path: str, port: int) -> None:
    """Counts, in this process, the round trips to the store Redis (one per
    ``send_packed_command``: a single command or a whole pipeline) and which
    scripts were called; a thread writes the counts to ``path`` twice a second."""
    import json
    from collections import Counter

    from redis.connection import AbstractConnection

    counts: Counter[str] = Counter()
    send_packed, send = AbstractConnection.send_packed_command, AbstractConnection.send_command

    def packed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "port", None) == port:
            counts["round_trips"] += 1
        return send_packed(self, *args, **kwargs)

    def command(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "port", None) == port and args:
            name = str(args[0]).upper()
            counts[f"{name} {str(args[1])[:12]}" if name == "EVALSHA" else name] += 1
        return send(self, *args, **kwargs)

    AbstractConnection.send_packed_command, AbstractConnection.send_command = packed, command  # type: ignore[method-assign]

    def dump() -> None:
        while True:
            time.sleep(0.5)
            with open(path + ".tmp", "w") as fh:
                json.dump(dict(counts), fh)
            os.replace(path + ".tmp", path)

    threading.Thread(target=dump, daemon=True).start()


if env.get("BENCH_RT_FILE") and env.get("BENCH_STORE_URL"):
    _count_round_trips(env["BENCH_RT_FILE"], int(env["BENCH_STORE_URL"].rsplit(":", 1)[1].split("/")[0]))


def _profile_ticks(path: str) -> None:
    """Profiles every Scheduler.tick of this beat (cProfile, cumulative across ticks)
    and writes the stats to ``path`` at exit: where a burst pass spends its time."""
    import atexit
    import cProfile

    from redbeat_safe.scheduler import Scheduler

    profiler = cProfile.Profile()
    tick = Scheduler.tick

    def profiled(self: Any, *args: Any, **kwargs: Any) -> float:
        profiler.enable()
        try:
            return tick(self, *args, **kwargs)
        finally:
            profiler.disable()

    Scheduler.tick = profiled  # type: ignore[method-assign]
    atexit.register(lambda: profiler.dump_stats(path))


if env.get("BENCH_PROFILE"):
    _profile_ticks(env["BENCH_PROFILE"])
