"""The Scheduler class against Celery's contract (in-process, real Redis)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from celery import Celery

from conftest import BeatGroup, make_app
from harness import RedisServer, free_port, wait_for
from redbeat_safe import Scheduler, every
from redbeat_safe.scheduler import BeatRefused
from redbeat_safe.store import Keys


def test_the_banner_instance_does_no_io_and_close_is_idempotent(prefix: str) -> None:
    app = Celery("lazy", set_as_current=False)
    dead = free_port()  # nothing listens here
    app.conf.update(broker_url=f"redis://127.0.0.1:{dead}/0", redbeat_safe_key_prefix=prefix)
    s = Scheduler(app=app, lazy=True, schedule_filename="x", max_interval=None)
    assert f"127.0.0.1:{dead}" in s.info and s.max_interval == 1
    assert s.tick() == 1.0
    s.close()
    s.close()
    assert s._client is None  # never connected


def test_settings_errors_are_clear() -> None:
    app = Celery("bad", set_as_current=False)
    app.conf.update(broker_url="amqp://guest@localhost//")
    with pytest.raises(BeatRefused, match="set redbeat_safe_redis_url"):
        Scheduler(app=app, lazy=True)
    app.conf.update(redbeat_safe_redis_url="redis://x", redbeat_safe_catchup="sometimes")
    with pytest.raises(BeatRefused, match="redbeat_safe_catchup must be one of"):
        Scheduler(app=app, lazy=True)
    app.conf.update(redbeat_safe_catchup="skip", redbeat_safe_lease=0)
    with pytest.raises(BeatRefused, match="redbeat_safe_lease must be a positive number"):
        Scheduler(app=app, lazy=True)
    app.conf.update(redbeat_safe_lease=5, beat_cron_starting_deadline=0)  # 0: never run a pattern tick late
    assert Scheduler(app=app, lazy=True).settings.starting_deadline_ms == 0


def test_an_invalid_beat_schedule_is_refused_naming_every_bad_entry_and_writes_nothing(
    redis_server: RedisServer, prefix: str
) -> None:
    app = make_app(redis_server, prefix, result_expires=None)
    app.conf.beat_schedule = {
        "ok": {"task": "t", "schedule": 5},
        "bad-args": {"task": "t", "schedule": 5, "args": [object()]},
        "bad-key": {"task": "t", "schedule": 5, "enabled": False},
        "bad-zone": {"task": "t", "schedule": every(5, end=None), "options": {"queue": 3}},
    }
    with pytest.raises(BeatRefused) as info:
        Scheduler(app=app)
    text = str(info.value)
    assert "nothing was written" in text
    for name in ("bad-args", "bad-key", "bad-zone"):
        assert f"'{name}'" in text
    assert redis_server.client().keys("{" + prefix + "}*") == []


def test_backend_cleanup_is_installed_where_celery_would(redis_server: RedisServer, prefix: str, tmp_path: Path) -> None:
    # the filesystem result backend cannot expire results by itself, so Celery's beat adds a cleanup
    app = make_app(redis_server, prefix, result_backend=f"file://{tmp_path}", result_expires=3600)
    s = Scheduler(app=app)
    try:
        (cleanup,) = s.static_entries
        assert cleanup.name == "celery.backend_cleanup" and cleanup.task == "celery.backend_cleanup"
        assert cleanup.schedule.to_json()["expr"] == "0 4 * * *" and cleanup.options == {"expires": 43200}
    finally:
        s.close()
    # a Redis result backend expires results itself: no cleanup entry
    autoexpiring = Scheduler(app=make_app(redis_server, prefix + "x", result_backend=redis_server.url, result_expires=3600))
    try:
        assert autoexpiring.static_entries == []
    finally:
        autoexpiring.close()


def test_static_entries_are_pruned_only_when_no_live_beat_declares_them(beats: BeatGroup, redis_server: RedisServer) -> None:
    """A rolling deploy: the old config has x and y, the new one only x."""
    k = Keys(beats.prefix)
    client = redis_server.client()
    old = beats.start({"x": {"every": 1}, "y": {"every": 1}}, "old")
    old.wait_log("registered 2 static entries")
    new = beats.start({"x": {"every": 1}}, "new")
    new.wait_log("registered 1 static entries")
    time.sleep(1)
    assert sorted(client.hkeys(k.defs)) == [b"x", b"y"]  # the old beat still declares y
    old.stop()
    wait_for(lambda: sorted(client.hkeys(k.defs)) == [b"x"], 10, what="y to be pruned once its last declarer left")
    assert client.zscore(k.due, "y") is None
    new.stop()
    assert sorted(client.hkeys(k.defs)) == [b"x"]  # the last beat leaving keeps everything


def test_a_publish_the_task_refuses_is_dropped_once_not_retried_forever(beats: BeatGroup, redis_server: RedisServer) -> None:
    from redbeat_safe import Schedules

    Schedules(make_app(redis_server, beats.prefix)).upsert("strict", "beatapp.strict", every(1), args=[1, 2, 3])
    a = beats.start({}, "a", BEAT_LEASE="2")
    wait_for(lambda: a.output().count("dropping strict tick") >= 2, 15, what="two refused ticks")
    time.sleep(3)
    a.stop()
    out = a.output()
    assert "re-publishing" not in out and "takes 1 positional argument" in out
    assert redis_server.client().zcard(Keys(beats.prefix).inflight) == 0


def test_state_records_are_plain_json(redis_server: RedisServer, prefix: str) -> None:
    app = make_app(redis_server, prefix, result_expires=None)
    app.conf.beat_schedule = {"e": {"task": "t", "schedule": 60, "args": [1]}}
    s = Scheduler(app=app)
    try:
        raw = redis_server.client().hget(Keys(prefix).state, "e")
        st = json.loads(raw)  # type: ignore[arg-type]
        assert st["ver"] == 1 and st["src"] == "static" and st["enabled"] is True
        d = json.loads(redis_server.client().hget(Keys(prefix).defs, "e"))  # type: ignore[arg-type]
        assert d == {"task": "t", "schedule": {"kind": "every", "interval_ms": 60000}, "args": [1], "kwargs": {}, "options": {}}
    finally:
        s.close()
