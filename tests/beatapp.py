"""The Celery app the end-to-end tests run `celery beat` against, configured by environment."""

from __future__ import annotations

import json
import os
import signal
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.schedules import crontab

import redbeat_safe
from redbeat_safe.engine import Engine
from redbeat_safe.scheduler import Scheduler

app = Celery("beatapp")
env = os.environ
app.conf.update(
    broker_url=env["BEAT_BROKER_URL"],
    redbeat_safe_redis_url=env["BEAT_REDIS_URL"],
    redbeat_safe_key_prefix=env["BEAT_PREFIX"],
    task_default_queue=env["BEAT_QUEUE"],
    timezone=env.get("BEAT_TIMEZONE", "UTC"),
    redbeat_safe_lease=float(env.get("BEAT_LEASE", "10")),
    redbeat_safe_redis_options=json.loads(env.get("BEAT_REDIS_OPTIONS", "{}")),
    redbeat_safe_wait_replicas=int(env.get("BEAT_WAIT_REPLICAS", "0")),
    redbeat_safe_wait_timeout=float(env.get("BEAT_WAIT_TIMEOUT", "1")),
    redbeat_safe_catchup=env.get("BEAT_CATCHUP", "coalesce"),
    beat_max_loop_interval=int(env.get("BEAT_MAX_INTERVAL", "0")) or None,
    result_backend=None,
    result_expires=None,  # else Celery's beat (and so ours) adds celery.backend_cleanup
    broker_connection_retry_on_startup=True,
    redbeat_safe_metrics_port=int(env["BEAT_METRICS_PORT"]) if env.get("BEAT_METRICS_PORT") else None,
)
app.conf.update(json.loads(env.get("BEAT_EXTRA_CONF", "{}")))  # any other setting, as a test gives it
if env.get("BEAT_STAMP"):  # when each message left its publisher (wall clock ms), for the jitter test
    from celery.signals import before_task_publish

    @before_task_publish.connect(weak=False)
    def _stamp(headers: dict[str, Any], **_: Any) -> None:
        import time as _time

        headers["test_pub_ms"] = _time.time() * 1000

if env.get("BEAT_LEDGER"):  # the one line that turns the run ledger on in the workers
    app.conf.imports = ["redbeat_safe.runs"]


def _schedule(spec: dict[str, Any]) -> Any:
    if "every" in spec:
        return timedelta(seconds=spec["every"]) if spec.get("as_timedelta") else redbeat_safe.every(spec["every"])
    if "pattern" in spec:
        return redbeat_safe.pattern(spec["pattern"], tz=spec.get("tz"))
    if "crontab" in spec:
        return crontab(**spec["crontab"])
    raise ValueError(spec)


def _run_options(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: spec[k] for k in ("overlap", "terminate", "expires_after", "jitter") if k in spec}


app.conf.beat_schedule = {
    name: {"task": spec.get("task", "beatapp.record"), "schedule": _schedule(spec), "args": spec.get("args", []),
           "kwargs": spec.get("kwargs", {}), **_run_options(spec)}
    for name, spec in json.loads(env.get("BEAT_SCHEDULE", "{}")).items()
}


@app.task(name="beatapp.record")
def record(*args: Any, **kwargs: Any) -> None:
    """Never executed in these tests: the messages are read off the broker."""


def _runs_log() -> Any:
    import redis

    return redis.Redis.from_url(env["BEAT_REDIS_URL"]), f"{{{env['BEAT_PREFIX']}}}:test:runs"


@app.task(name="beatapp.sleepy", bind=True)
def sleepy(self: Any, seconds: float = 1.0) -> None:
    """Runs for ``seconds``, writing its own start and end (wall clock) to a Redis list:
    what the overlap tests check the ledger against."""
    import time as _time

    client, key = _runs_log()
    headers = self.request.headers or {}
    entry = getattr(self.request, "redbeat_safe_entry", None) or headers.get("redbeat_safe_entry")
    tick = getattr(self.request, "redbeat_safe_tick_ms", None) or headers.get("redbeat_safe_tick_ms")
    record = {"entry": entry, "tick": tick, "id": self.request.id, "pid": os.getpid(), "start": _time.time()}
    client.rpush(key, json.dumps({**record, "event": "start"}))
    _time.sleep(seconds)
    client.rpush(key, json.dumps({**record, "event": "end", "end": _time.time()}))


@app.task(name="beatapp.boom")
def boom() -> None:
    raise ValueError("planted failure")


@app.task(name="beatapp.strict")
def strict(x: int) -> None:
    """Takes exactly one argument: Celery refuses other calls before publishing."""


class CrashingEngine(Engine):
    """Dies by SIGKILL right after its first successful claim, before publishing.

    A deterministic stand-in for "the host died between claim and publish".
    """

    def _publish_claimed(self, claimed: Any, lease_start: float) -> None:
        if any(it.ticks for it, _ in claimed):
            marker = env.get("BEAT_CRASH_MARKER")
            if marker:
                with open(marker, "w") as fh:
                    json.dump([[it.name, it.ticks] for it, _ in claimed], fh)
            os.kill(os.getpid(), signal.SIGKILL)
        super()._publish_claimed(claimed, lease_start)


class CrashingScheduler(Scheduler):
    engine_class = CrashingEngine


class BuggyEngine(Engine):
    """Raises an unforeseen exception in its first BEAT_BUG_REGISTER registrations and
    in passes BEAT_BUG_FROM..BEAT_BUG_TO (counted from 1): a stand-in for a bug or a
    record no parser foresaw."""

    passes = 0
    registrations = 0

    def register(self) -> Any:
        BuggyEngine.registrations += 1
        if BuggyEngine.registrations <= int(env.get("BEAT_BUG_REGISTER", "0")):
            raise KeyError("planted bug in registration")
        return super().register()

    def plan_pass(self, look: Any) -> Any:
        BuggyEngine.passes += 1
        if int(env.get("BEAT_BUG_FROM", "2")) <= BuggyEngine.passes <= int(env.get("BEAT_BUG_TO", "6")):
            raise KeyError("planted bug")
        return super().plan_pass(look)


class BuggyScheduler(Scheduler):
    engine_class = BuggyEngine
