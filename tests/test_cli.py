"""`celery -A app schedules ...` as real subprocesses against a real Redis, with real beats."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import BeatGroup, cli, make_app
from harness import RedisServer, wait_for
from history import check
from redbeat_safe import every
from redbeat_safe.dispatch import task_id_for
from redbeat_safe.store import Keys

HERE = Path(__file__).parent


def ms() -> int:
    return int(time.time() * 1000)


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.lstrip().startswith(("{", "[")) else result.stdout


@pytest.mark.slow
def test_add_pause_resume_trigger_history_against_a_running_beat(beats: BeatGroup) -> None:
    beats.start({}, "a")
    created = ms()
    added = ok(cli(beats, "add", "tick", "--task", "beatapp.record", "--every", "1s", "--kwargs", '{"n": 1}', "--json"))
    assert added["outcome"] == "created"
    first_tick = int(datetime.fromisoformat(added["entry"]["next_tick"]).timestamp() * 1000)
    assert 900 <= first_tick - created <= 2500  # one interval after creation
    wait_for(lambda: len(beats.broker.messages()) >= 3, 15, what="three dispatches")
    first = min(m.tick for m in beats.broker.messages())
    assert first == first_tick  # dispatched on time, on the tick the CLI reported

    assert ok(cli(beats, "pause", "tick", "--json"))["result"] == "paused"
    paused_at = ms()
    time.sleep(4)
    assert [m for m in beats.broker.messages() if m.tick > paused_at + 100] == []  # nothing while paused

    resuming = ms()  # before the command: its own start-up and exit take a while
    assert ok(cli(beats, "resume", "tick", "--json"))["result"] == "resumed"
    time.sleep(3)
    after = sorted(m.tick for m in beats.broker.messages() if m.tick > paused_at + 100)
    assert after and after[0] > resuming, "resume replayed ticks from the pause (a burst)"
    assert all((t - first) % 1000 == 0 for t in after), "resume moved the phase"

    # trigger while the entry is due every second: distinct ticks, distinct ids
    ids = {ok(cli(beats, "trigger", "tick")).split(": ")[1].strip() for _ in range(3)}
    time.sleep(2)
    beats.stop_all()
    messages = beats.broker.messages()
    triggered = [m for m in messages if m.headers.get("redbeat_safe_trigger")]
    assert {m.task_id for m in triggered} == ids and len(triggered) == 3
    assert all((m.tick - first) % 1000 != 0 for m in triggered), "a trigger landed on a scheduled tick"
    reports = check(messages, beats.prefix, {})  # one task id per (entry, tick), the derived one
    assert reports == {}
    assert len({m.task_id for m in messages}) == len(messages)

    hist = ok(cli(beats, "history", "tick", "--limit", "100", "--json"))
    kinds = {h["task_id"]: h["kind"] for h in hist}
    assert all(kinds[i] == "triggered" for i in ids)
    scheduled = [m for m in messages if not m.headers.get("redbeat_safe_trigger")]
    assert all(kinds.get(m.task_id) == "scheduled" for m in scheduled)
    assert "TASK ID" in ok(cli(beats, "history", "tick"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["add", "x", "--task", "t", "--every", "5 parsecs"], "cannot read interval"),
        (["add", "x", "--task", "t", "--every", "5s", "--pattern", "* * * * *"], "exactly one of --every or --pattern"),
        (["add", "x", "--task", "t", "--pattern", "61 * * * *"], "not a valid pattern"),
        (["add", "x", "--task", "t", "--pattern", "0 0 30 2 *"], "never matches"),
        (["add", "x", "--task", "t", "--pattern", "* * * * *", "--tz", "Mars/Base"], "unknown time zone"),
        (["add", "x", "--task", "t", "--every", "5s", "--args", "[1,"], "--args is not valid JSON"),
        (["add", "x", "--task", "t", "--every", "5s", "--kwargs", "[1]"], "--kwargs must be a JSON object"),
        (["add", "x", "--task", "t", "--every", "5s", "--start", "tomorrow"], "not an ISO 8601"),
        (["add", "x", "--task", "t", "--every", "5s", "--limit", "0"], "limit must be"),
        (["add", "x", "--task", "t", "--every", "1ms"], "at least 10 ms"),
        (["add", "x" * 300, "--task", "t", "--every", "5s"], "300 characters long"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(beats: BeatGroup, redis_server: RedisServer, args: list[str], message: str) -> None:
    result = cli(beats, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert redis_server.client().keys("{" + beats.prefix + "}*") == []


def test_unknown_entries_exit_1(beats: BeatGroup) -> None:
    for verb in ("show", "remove", "pause", "resume", "trigger", "history"):
        result = cli(beats, verb, "ghost")
        assert result.returncode == 1 and "no entry named 'ghost'" in result.stderr, (verb, result.stderr)


def test_export_then_import_into_an_empty_prefix_reproduces_every_entry(beats: BeatGroup, redis_server: RedisServer) -> None:
    ok(cli(beats, "add", "a", "--task", "t.a", "--every", "1h30m", "--args", "[1, 2]", "--queue", "q1", "--limit", "5"))
    ok(cli(beats, "add", "b", "--task", "t.b", "--pattern", "*/5 * * * * *", "--tz", "Asia/Tokyo", "--kwargs", '{"k": "v"}'))
    ok(cli(beats, "add", "c", "--task", "t.c", "--every", "1d", "--start", "2031-01-01T09:00:00+01:00", "--paused"))
    before = ok(cli(beats, "list", "--json"))
    exported = cli(beats, "export").stdout
    other = beats.prefix + "copy"
    result = ok(cli(beats, "import", "-", "--json", prefix=other, stdin=exported))
    assert result["results"] == {"a": "created", "b": "created", "c": "created"}
    after = ok(cli(beats, "list", "--json", prefix=other))

    def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        keep = ("name", "task", "schedule_spec", "args", "kwargs", "options", "enabled", "next_tick", "last_tick", "total_runs", "source")
        return [{k: r[k] for k in keep} for r in rows]

    assert comparable(after) == comparable(before)
    again = ok(cli(beats, "import", "-", "--json", prefix=other, stdin=exported))
    assert set(again["results"].values()) == {"unchanged"}
    assert cli(beats, "import", "-", prefix=other, stdin='{"format": "something else"}').returncode == 2


def test_import_redbeat_keeps_its_phase_and_reports_what_it_cannot_convert(beats: BeatGroup, redis_server: RedisServer) -> None:
    from celery.schedules import crontab, schedule
    from redbeat import RedBeatSchedulerEntry
    from redbeat.schedules import rrule

    rb_prefix = f"rb-{beats.prefix}:"
    app = make_app(redis_server, beats.prefix, redbeat_redis_url=redis_server.url, redbeat_key_prefix=rb_prefix, timezone="UTC")
    last = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=2)
    e = RedBeatSchedulerEntry("every5", "beatapp.record", schedule(timedelta(seconds=5)), args=[1], app=app)
    e.save()
    e.reschedule(last_run_at=last)  # what celery-redbeat writes after a run
    c = RedBeatSchedulerEntry("cron", "beatapp.record", crontab(minute="*/10"), kwargs={"x": 1}, app=app)
    c.save()
    c.reschedule(last_run_at=last)
    RedBeatSchedulerEntry("rrule", "beatapp.record", rrule("MINUTELY", dtstart=last), app=app).save()
    RedBeatSchedulerEntry("off", "beatapp.record", schedule(timedelta(hours=1)), enabled=False, app=app).save()

    dry = cli(beats, "import-redbeat", "--redbeat-prefix", rb_prefix, "--redbeat-url", redis_server.url, "--dry-run", "--json")
    said = json.loads(dry.stdout)
    assert dry.returncode == 2 and "rrule" in said["skipped"]
    assert said["results"] == {"every5": "would create", "cron": "would create", "off": "would create"}
    assert said["details"]["off"].endswith(", paused (disabled in celery-redbeat)")  # the dry run says so too
    assert redis_server.client().keys("{" + beats.prefix + "}*") == []  # dry run wrote nothing
    real = cli(beats, "import-redbeat", "--redbeat-prefix", rb_prefix, "--redbeat-url", redis_server.url, "--json")
    report = json.loads(real.stdout)
    assert report["results"] == {"every5": "created", "cron": "created", "off": "created"}, real.stderr
    assert report["details"] == said["details"]
    assert "no equivalent" in report["skipped"]["rrule"]
    again = cli(beats, "import-redbeat", "--redbeat-prefix", rb_prefix, "--redbeat-url", redis_server.url, "--dry-run", "--json")
    assert json.loads(again.stdout)["results"] == {"every5": "unchanged", "cron": "unchanged", "off": "unchanged"}
    colonless = cli(beats, "import-redbeat", "--redbeat-prefix", rb_prefix.rstrip(":"), "--redbeat-url", redis_server.url)
    assert colonless.returncode == 1 and f"there are some under {rb_prefix!r}" in colonless.stderr, colonless.stderr

    rows = {r["name"]: r for r in ok(cli(beats, "list", "--json"))}
    last_ms = int(last.timestamp() * 1000)
    assert rows["every5"]["next_tick"] == (last + timedelta(seconds=5)).isoformat()  # its phase is kept
    # celery-redbeat wrote that last_run_at without counting a run (save, reschedule): not shown as a run
    assert rows["every5"]["last_tick"] is None and rows["every5"]["total_runs"] == 0
    assert rows["off"]["enabled"] is False
    assert rows["cron"]["schedule_spec"]["day_and"] is True  # Celery's crontab semantics kept
    beats.start({}, "a")
    wait_for(lambda: [m for m in beats.broker.messages() if m.entry == "every5"], 15, what="the imported entry to fire")
    time.sleep(5.5)
    beats.stop_all()
    ticks = sorted(m.tick for m in beats.broker.messages() if m.entry == "every5")
    assert ticks[0] == last_ms + 5000 and ticks[1] == last_ms + 10000  # on celery-redbeat's phase
    msg = next(m for m in beats.broker.messages() if m.entry == "every5")
    assert msg.task_id == task_id_for(beats.prefix, "every5", ticks[0]) and msg.args == [1]


def test_status_shows_instances_due_entries_and_json(beats: BeatGroup) -> None:
    beats.start({"e": {"every": 1}}, "a").wait_log("registered 1 static entries")
    data = ok(cli(beats, "status", "--json"))
    assert len(data["instances"]) == 1 and data["instances"][0]["alive"]
    assert data["instances"][0]["static_entries"] == 1
    assert any(d["name"] == "e" for d in data["due_next_minute"])
    text = ok(cli(beats, "status"))
    assert "INSTANCE" in text and "most late" in text
    from redbeat_safe import Schedules

    api = Schedules(make_app(beats.server, beats.prefix))
    api.upsert("later", "t", every(3600))
    assert [i.alive for i in api.instances()] == [True]
    assert Keys(beats.prefix).history("e").endswith(":history:e")
