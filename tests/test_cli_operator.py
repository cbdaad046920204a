"""Operator surprises removed (issue 14): times shown with their zone, `next`, `add`'s
new options and warnings, `edit`, entries from a beat_schedule guarded, dry runs that
say what the real run does. Real subprocesses of `celery -A beatapp schedules`, real
Redis, a real beat where the entry must come from a beat_schedule."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from typing import Any

from conftest import BeatGroup, cli, make_app
from harness import wait_for
from redbeat_safe import Schedules, StaticEntry, every

UTC = timezone.utc


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.lstrip().startswith(("{", "[")) else result.stdout


def test_times_are_shown_in_the_entrys_zone_with_the_offset_or_in_tz(beats: BeatGroup) -> None:
    ok(cli(beats, "add", "berlin", "--task", "beatapp.record", "--pattern", "30 2 * * *", "--tz", "Europe/Berlin",
           "--end", "2099-01-01T00:00:00+00:00", "--limit", "500"))
    listed = ok(cli(beats, "list"))
    row = next(line for line in listed.splitlines() if line.startswith("berlin"))
    assert " 02:30:00+01:00 (in " in row or " 02:30:00+02:00 (in " in row, row  # local, labelled
    assert "until 2099-01-01 01:00:00+01:00" in row and "0 of 500 runs" in row, row  # end and limit shown
    tokyo = next(line for line in ok(cli(beats, "list", "--tz", "Asia/Tokyo")).splitlines() if line.startswith("berlin"))
    assert ":30:00+09:00 (in " in tokyo, tokyo
    shown = ok(cli(beats, "show", "berlin"))
    assert "zone: Europe/Berlin" in shown and "02:30:00.000+0" in shown
    assert ok(cli(beats, "show", "berlin", "--json"))["next_tick"].endswith("+00:00")  # machines get UTC
    assert "until 2099-01-01 01:00:00+01:00, 0 of 500 runs" in shown, shown  # show has the bounds too
    bad = cli(beats, "list", "--tz", "Mars/Olympus")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --tz: unknown time zone 'Mars/Olympus'"), bad.stderr
    empty = cli(beats, "list", "--tz", "Mars/Olympus", prefix=beats.prefix + "empty")  # found by the issue-14 check: exit 0
    assert empty.returncode == 2 and empty.stderr == bad.stderr, empty.stderr


def test_next_previews_the_coming_ticks_in_local_time_and_utc(beats: BeatGroup) -> None:
    ok(cli(beats, "add", "dst", "--task", "beatapp.record", "--pattern", "30 2 * * *", "--tz", "Europe/Berlin"))
    text = ok(cli(beats, "next", "dst", "-n", "3"))
    lines = text.splitlines()
    assert lines[0].split() == ["#", "LOCAL", "(Europe/Berlin)", "UTC"] and len(lines) == 4, text
    data = ok(cli(beats, "next", "dst", "-n", "20", "--json"))
    assert len(data["ticks"]) == 20 and data["zone"] == "Europe/Berlin"
    for t in data["ticks"]:
        local = datetime.fromisoformat(t["local"])
        assert local.strftime("%H:%M") == "02:30" or local.strftime("%H:%M") == "03:00"  # 03:00 on a spring-forward day
        assert datetime.fromisoformat(t["utc"]) == local and int(local.timestamp() * 1000) == t["tick_ms"]
    ok(cli(beats, "add", "few", "--task", "beatapp.record", "--every", "1h", "--limit", "2"))
    assert len(ok(cli(beats, "next", "few", "-n", "10", "--json"))["ticks"]) == 2  # the limit is respected
    ok(cli(beats, "pause", "few"))
    assert ok(cli(beats, "next", "few")) .strip() == "paused: no tick until it is resumed"
    assert cli(beats, "next", "ghost").returncode == 1


def test_add_refuses_what_never_fires_warns_on_unknown_tasks_and_takes_message_options(beats: BeatGroup) -> None:
    past = cli(beats, "add", "old", "--task", "beatapp.record", "--every", "10s", "--end", "2020-01-01T00:00:00+00:00")
    assert past.returncode == 2, past.stderr
    assert past.stderr.strip() == "error: refused, nothing written: entry 'old' would never fire: its end 2020-01-01T00:00:00.000Z has passed"
    reversed_ = cli(beats, "add", "rev", "--task", "beatapp.record", "--every", "10s", "--start", "2030-02-01T00:00:00+00:00",
                    "--end", "2030-01-01T00:00:00+00:00")
    assert reversed_.returncode == 2 and "end is before start" in reversed_.stderr
    assert ok(cli(beats, "list")).strip() == "no entries"  # nothing was written

    typo = cli(beats, "add", "t", "--task", "beatapp.recrod", "--every", "10s")
    assert typo.returncode == 0 and "warning: the app does not know a task named 'beatapp.recrod'" in typo.stderr
    known = cli(beats, "add", "k", "--task", "beatapp.record", "--every", "10s", "--expires", "30s", "--priority", "3",
                "--options", '{"routing_key": "rk"}', "--align", "--json")
    assert known.returncode == 0 and "warning" not in known.stderr, known.stderr
    entry = json.loads(known.stdout)["entry"]
    assert entry["options"] == {"expires": 30.0, "priority": 3, "routing_key": "rk"}
    assert entry["schedule_spec"] == {"kind": "every", "interval_ms": 10000, "align": True}
    assert cli(beats, "add", "p", "--task", "beatapp.record", "--pattern", "* * * * *", "--align").returncode == 2
    both = cli(beats, "add", "q", "--task", "beatapp.record", "--every", "10s", "--queue", "q2", "--options", '{"queue": "reports"}')
    assert both.returncode == 2 and both.stderr.strip() == ("error: --queue 'q2' and --options 'queue': 'reports' disagree; "
                                                           "give it once"), both.stderr  # was: q2 kept, silently


def test_edit_changes_one_field_and_keeps_the_rest_and_the_next_tick(beats: BeatGroup) -> None:
    ok(cli(beats, "add", "e", "--task", "beatapp.record", "--every", "1h", "--kwargs", '{"n": 1}', "--queue", "q1"))
    before = ok(cli(beats, "show", "e", "--json"))
    after = ok(cli(beats, "edit", "e", "--kwargs", '{"n": 2}', "--json"))
    assert after["outcome"] == "updated"
    changed = after["entry"]
    assert changed["kwargs"] == {"n": 2}
    assert {k: changed[k] for k in ("task", "schedule_spec", "options", "next_tick", "args")} == \
        {k: before[k] for k in ("task", "schedule_spec", "options", "next_tick", "args")}  # the rest, and the phase
    retimed = ok(cli(beats, "edit", "e", "--every", "2h", "--json"))["entry"]
    assert retimed["schedule_spec"]["interval_ms"] == 7_200_000 and retimed["kwargs"] == {"n": 2}
    nothing = cli(beats, "edit", "e")
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    assert cli(beats, "edit", "ghost", "--kwargs", "{}").returncode == 1


def test_an_entry_from_a_beat_schedule_is_not_changed_or_removed_silently(beats: BeatGroup) -> None:
    beats.start({"static": {"every": 1}}, "a").wait_log("registered 1 static entries")
    changed = cli(beats, "add", "static", "--task", "beatapp.record", "--every", "5s")
    assert changed.returncode == 2 and "comes from a beat_schedule" in changed.stderr and "--force" in changed.stderr, changed.stderr
    removed = cli(beats, "remove", "static")
    assert removed.returncode == 2 and "comes from a beat_schedule" in removed.stderr
    forced = ok(cli(beats, "add", "static", "--task", "beatapp.record", "--every", "5s", "--force"))
    assert "a beat puts its beat_schedule definition back when it next starts" in forced, forced
    shown = ok(cli(beats, "show", "static", "--json"))
    assert shown["source"] == "static" and shown["schedule_spec"]["interval_ms"] == 5000  # changed, still static
    gone = ok(cli(beats, "remove", "static", "--force"))
    assert gone.strip() == "static: removed; a beat creates it again from its beat_schedule when it next starts"
    beats.stop_all()
    beats.start({"static": {"every": 1}}, "b").wait_log("registered 1 static entries")
    assert ok(cli(beats, "show", "static", "--json"))["schedule_spec"]["interval_ms"] == 1000  # put back, as said

    api = Schedules(make_app(beats.server, beats.prefix))
    try:
        api.upsert("static", "beatapp.record", every(7))
    except StaticEntry as exc:
        assert "comes from a beat_schedule" in str(exc)
    else:
        raise AssertionError("the API changed a beat_schedule entry without force")
    assert api.upsert("static", "beatapp.record", every(7), force=True) == "updated"
    # import: found by the issue-14 check, it changed a beat_schedule entry silently ("updated", exit 0)
    exported = json.loads(cli(beats, "export").stdout)
    for item in exported["entries"]:
        item["definition"]["kwargs"] = {"kind": "imported"}
    text = json.dumps(exported)
    for extra in ([], ["--dry-run"]):
        refused = cli(beats, "import", "-", *extra, stdin=text)
        assert refused.returncode == 2 and "entry 'static' comes from a beat_schedule" in refused.stderr and "--force" in refused.stderr, refused.stderr
        assert "nothing was written" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert ok(cli(beats, "show", "static", "--json"))["kwargs"] == {}
    assert ok(cli(beats, "import", "-", "--force", "--json", stdin=text))["results"] == {"static": "updated"}
    assert ok(cli(beats, "show", "static", "--json"))["kwargs"] == {"kind": "imported"}
    assert api.remove("ghost") is False and api.get("ghost") is None and api.history("ghost") == []  # the one rule


def test_import_dry_run_reports_what_the_real_run_reports(beats: BeatGroup) -> None:
    ok(cli(beats, "add", "a", "--task", "beatapp.record", "--every", "1h"))
    exported = cli(beats, "export", "--json").stdout
    same = ok(cli(beats, "import", "-", "--dry-run", "--json", stdin=exported))
    real = ok(cli(beats, "import", "-", "--json", stdin=exported))
    assert same["results"] == real["results"] == {"a": "unchanged"}
    other = beats.prefix + "x"
    fresh = ok(cli(beats, "import", "-", "--dry-run", "--json", stdin=exported, prefix=other))
    assert fresh["results"] == {"a": "would create"}
    assert ok(cli(beats, "list", prefix=other)).strip() == "no entries"
    assert ok(cli(beats, "import", "-", "--json", stdin=exported, prefix=other))["results"] == {"a": "created"}


def test_started_is_shown_in_the_zone_asked_for(beats: BeatGroup) -> None:
    beats.start({"s": {"every": 1}}, "a").wait_log("registered 1 static entries")
    wait_for(lambda: ok(cli(beats, "instances", "--json")), 15, what="the beat to register")
    text = ok(cli(beats, "instances", "--tz", "Asia/Kolkata"))
    started = datetime.fromisoformat(ok(cli(beats, "instances", "--json"))[0]["started"])
    assert started.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat(sep=" ", timespec="seconds") in text, text


def test_purge_removes_every_key_of_the_prefix_and_refuses_while_beats_are_alive(beats: BeatGroup) -> None:
    client = beats.server.client()
    other = beats.prefix + "keep"
    ok(cli(beats, "add", "neighbour", "--task", "beatapp.record", "--every", "1h", prefix=other))
    a = beats.start({"s": {"every": 1}}, "a")
    a.wait_log("registered 1 static entries")
    wait_for(lambda: client.llen("{" + beats.prefix + "}:history:s") > 0, 15, what="a dispatch")
    refused = cli(beats, "purge", "--yes")
    assert refused.returncode == 2 and "beat(s) alive" in refused.stderr and "stop them first" in refused.stderr
    assert client.keys("{" + beats.prefix + "}:*")
    beats.stop_all()
    mine = client.keys("{" + beats.prefix + "}:*")
    dry = ok(cli(beats, "purge", "--json"))
    assert dry == {"keys": len(mine), "deleted": 0, "dry_run": True, "beats_alive": 0} and len(client.keys("{" + beats.prefix + "}:*")) == len(mine)
    done = ok(cli(beats, "purge", "--yes", "--json"))
    assert done["deleted"] == len(mine) and client.keys("{" + beats.prefix + "}:*") == []
    assert ok(cli(beats, "purge", "--yes", "--json"))["deleted"] == 0  # again: nothing more
    assert client.keys("{" + other + "}:*")  # another prefix is untouched


def test_triggering_an_entry_whose_task_refuses_its_arguments_is_one_line_not_a_traceback(beats: BeatGroup) -> None:
    ok(cli(beats, "add", "strict", "--task", "beatapp.strict", "--every", "1h", "--args", "[1, 2, 3]"))
    result = cli(beats, "trigger", "strict")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: refused, nothing written: entry 'strict': the task refuses its arguments"), result.stderr
    assert beats.broker.messages() == []
    assert json.loads(cli(beats, "status", "--json").stdout)["in_flight"] == []  # the claim was withdrawn


def test_without_an_app_the_cli_says_so_not_that_the_redis_url_is_wrong(tmp_path: Any) -> None:
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    result = subprocess.run([sys.executable, "-m", "celery", "schedules", "list"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr == "error: no Celery app: give yours with -A, as for every Celery command (celery -A proj schedules ...)\n"


def test_edit_takes_zero_and_no_and_keeps_what_it_was_not_asked_to_change(beats: BeatGroup) -> None:
    """Found by review: `edit --limit 0` alone said "nothing to change"; `edit --every`
    dropped `align`, `edit --pattern` dropped the day rule of a converted crontab."""
    ok(cli(beats, "add", "a", "--task", "beatapp.record", "--every", "1h", "--align", "--limit", "3"))
    assert "limit" not in ok(cli(beats, "edit", "a", "--limit", "0", "--json"))["entry"]["schedule_spec"]
    assert ok(cli(beats, "edit", "a", "--every", "2h", "--json"))["entry"]["schedule_spec"] == {
        "kind": "every", "interval_ms": 7_200_000, "align": True}
    assert "align" not in ok(cli(beats, "edit", "a", "--no-align", "--json"))["entry"]["schedule_spec"]
    api = Schedules(make_app(beats.server, beats.prefix))
    from celery.schedules import crontab

    from redbeat_safe.schedules import from_celery

    api.upsert("c", "beatapp.record", from_celery(crontab(minute=0, hour=4)))
    spec = ok(cli(beats, "edit", "c", "--pattern", "0 5 * * *", "--json"))["entry"]["schedule_spec"]
    assert spec["expr"] == "0 5 * * *" and spec["day_and"] is True


def test_purge_says_what_it_would_delete_even_while_beats_run(beats: BeatGroup) -> None:
    beats.start({"s": {"every": 1}}, "a").wait_log("registered 1 static entries")
    shown = cli(beats, "purge")
    assert shown.returncode == 0 and "would delete" in shown.stdout and "beat(s) alive: stop them first" in shown.stdout, shown


def test_the_cli_refuses_a_store_of_another_key_layout_and_writes_nothing(beats: BeatGroup) -> None:
    client = beats.server.client()
    meta = "{" + beats.prefix + "}:meta"
    client.hset(meta, mapping={"epoch": "e", "layout": "2"})
    added = cli(beats, "add", "x", "--task", "beatapp.record", "--every", "1h")
    assert added.returncode == 2 and "use key layout '2'" in added.stderr, added.stderr
    assert client.keys("{" + beats.prefix + "}:*") == [meta.encode()]


def test_health_on_host_counts_only_that_hosts_refusals(beats: BeatGroup) -> None:
    import socket

    here = socket.gethostname()
    beats.start({"s": {"every": 1}}, "a").wait_log("registered 1 static entries")
    store = Schedules(make_app(beats.server, beats.prefix)).store
    store.note_refusal("otherhost:1", json.dumps({"at": store.now(), "reason": "bad", "host": "otherhost", "pid": 1}), 60_000)
    assert cli(beats, "health").returncode == 1  # the cluster is not all well
    assert cli(beats, "health", "--on-host", here).returncode == 0  # but this host's beat is
    assert cli(beats, "health", "--on-host", "otherhost").returncode == 1
