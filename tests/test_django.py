"""Django projects: a real minimal project (tests/djangoproj, SQLite) whose Celery app
reads Django's settings in the CELERY_ namespace; two beats in it publish each tick once;
and the import from django-celery-beat, of a database written by the real package's own
models (every schedule type and a row that must be refused), from a `dumpdata` file
and from the database itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import BeatGroup
from harness import HERE, ROOT, Beat
from history import assert_exactly_once, check
from redbeat_safe import every
from redbeat_safe.store import Keys


def _env(group: BeatGroup, db: Path, schedule: dict[str, Any] | None = None) -> dict[str, str]:
    return {**os.environ, **group.env(schedule or {}), "DJANGO_SETTINGS_MODULE": "djangoproj.settings", "DJANGO_DB": str(db),
            "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}


def _run(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture
def django_db(beats: BeatGroup, tmp_path: Path) -> Path:
    """A SQLite database migrated and filled by django-celery-beat's own models."""
    db = tmp_path / "db.sqlite3"
    env = _env(beats, db)
    for args in (["-m", "django", "migrate", "-v", "0"], ["-m", "djangoproj.make_rows"]):
        done = _run(env, *args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    return db


def _cli(group: BeatGroup, db: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(_env(group, db), "-m", "celery", "-A", "djangoproj.celery_app", "schedules", *args, cwd=cwd)


def test_import_from_django_celery_beat_from_a_dump_and_from_the_database(beats: BeatGroup, django_db: Path, tmp_path: Path) -> None:
    dump = _run(_env(beats, django_db), "-m", "django", "dumpdata", "django_celery_beat", cwd=tmp_path)
    assert dump.returncode == 0, dump.stderr
    (tmp_path / "dump.json").write_text(dump.stdout)

    dry = _cli(beats, django_db, tmp_path, "import-django-celery-beat", "dump.json", "--dry-run", "--json")
    assert dry.returncode == 2, dry.stderr  # a row was refused: said, and the exit says so
    plan = json.loads(dry.stdout)
    names = {"interval-10m", "crontab-weekday-0230-berlin", "solar-sunrise-berlin", "clocked-once", "one-off-hourly"}
    assert plan["results"] == {n: "would create" for n in names}
    assert plan["refused"] == {"refused-5-microseconds": "its interval schedule: the interval must be a whole number of "
                                                         "milliseconds (got 0.005 ms)"}
    assert _cli(beats, django_db, tmp_path, "list").stdout.strip() == "no entries"  # a dry run writes nothing

    real = json.loads(_cli(beats, django_db, tmp_path, "import-django-celery-beat", "dump.json", "--json").stdout)
    assert real["results"] == {n: "created" for n in names} and real["details"] == plan["details"]
    again = json.loads(_cli(beats, django_db, tmp_path, "import-django-celery-beat", "dump.json", "--json").stdout)
    assert again["results"] == {n: "unchanged" for n in names}  # idempotent
    from_db = json.loads(_cli(beats, django_db, tmp_path, "import-django-celery-beat", "--json").stdout)  # no file: the models
    assert from_db["results"] == {n: "unchanged" for n in names} and from_db["refused"] == plan["refused"]

    shown = {n: json.loads(_cli(beats, django_db, tmp_path, "show", n, "--json").stdout) for n in names}
    interval = shown["interval-10m"]
    assert interval["schedule_spec"] == {"kind": "every", "interval_ms": 600_000}
    assert interval["args"] == [1, 2] and interval["kwargs"] == {"k": "v"}
    assert interval["options"] == {"queue": "reports", "routing_key": "reports", "priority": 5, "expires": 300,
                                   "headers": {"team": "billing"}}
    assert interval["total_runs"] == 42 and interval["last_tick"].startswith("2026-12-04T09:03:00")
    assert interval["next_tick"].startswith("2026-12-04T09:13:00")  # django-celery-beat's phase: the last run + the interval
    cron = shown["crontab-weekday-0230-berlin"]["schedule_spec"]
    assert cron["expr"] == "30 2 * * 1,2,3,4,5" and cron["tz"] == "Europe/Berlin" and cron["day_and"] is True
    assert cron["start"] == 1767225600000 and cron["end"] == 1893456000000  # start_time, expires
    assert shown["solar-sunrise-berlin"]["schedule_spec"] == {"kind": "solar", "event": "sunrise", "lat": 52.52, "lon": 13.405}
    assert shown["solar-sunrise-berlin"]["enabled"] is False  # disabled there: paused here
    assert shown["clocked-once"]["schedule_spec"] == {"kind": "at", "when": int(datetime(2027, 6, 1, 12, tzinfo=timezone.utc).timestamp() * 1000)}
    assert shown["one-off-hourly"]["schedule_spec"]["limit"] == 1  # one_off


def test_two_beats_in_a_django_project_publish_each_tick_once(beats: BeatGroup, django_db: Path, tmp_path: Path) -> None:
    schedule = {"e1": {"every": 1}, "e07": {"every": 0.7}}
    env = _env(beats, django_db, schedule)
    run = [Beat(tmp_path, env, f"dj{i}", scheduler="redbeat_safe", app="djangoproj.celery_app") for i in range(2)]
    for b in run:
        b.start()
        beats.beats.append(b)
    for b in run:
        b.wait_log("registered 2 static entries", timeout=60)
    time.sleep(6)
    beats.stop_all()
    messages = beats.broker.messages()
    assert_exactly_once(check(messages, beats.prefix, {"e1": every(1), "e07": every(0.7)}), min_ticks=5)
    # the settings came from Django's: the key prefix (CELERY_REDBEAT_SAFE_KEY_PREFIX), the store URL
    assert beats.server.client().exists(Keys(beats.prefix).due)
    assert "redbeat_safe.scheduler.Scheduler" in run[0].output() and f"keys {{{beats.prefix}}}" in run[0].output()


def test_the_dashboard_behind_django_staff_login(beats: BeatGroup, django_db: Path) -> None:
    """redbeat_safe.web.django.dashboard_view: staff get the page (links under the route),
    anyone else is sent to the admin login."""
    code = '''
import django, json
django.setup()
from django.test import RequestFactory
from redbeat_safe import Schedules, every
from redbeat_safe.web.django import dashboard_view
from djangoproj.celery_app import app
Schedules(app).upsert("nightly", "djangoproj.record", every(3600))
view = dashboard_view(app)
class User:
    is_active = True
    def __init__(self, staff): self.is_staff = staff
out = {}
for staff in (True, False):
    request = RequestFactory().get("/schedules/")
    request.user = User(staff)
    response = view(request, path="")
    out[str(staff)] = [response.status_code, response.get("Location", ""), response.content.decode()]
print(json.dumps(out))
'''
    env = _env(beats, django_db)
    env["DJANGO_SETTINGS_MODULE"] = "djangoproj.settings_web"
    done = _run(env, "-c", code, cwd=django_db.parent)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    status, _, page = out["True"]
    assert status == 200 and "nightly" in page and 'href="/schedules/entry/nightly"' in page, page[:2000]
    status, location, _ = out["False"]
    assert status == 302 and "/admin/login/" in location


def test_backend_cleanup_is_left_out_without_a_refusal_and_a_spent_one_off_is_paused(beats: BeatGroup, tmp_path: Path) -> None:
    """django-celery-beat writes `celery.backend_cleanup` itself: every project's dump has
    it, so it must not make each import exit 2. A one_off interval that ran is paused."""
    dump = [
        {"model": "django_celery_beat.intervalschedule", "pk": 1, "fields": {"every": 1, "period": "hours"}},
        {"model": "django_celery_beat.crontabschedule", "pk": 1,
         "fields": {"minute": "0", "hour": "4", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*", "timezone": "UTC"}},
        {"model": "django_celery_beat.periodictask", "pk": 1,
         "fields": {"name": "celery.backend_cleanup", "task": "celery.backend_cleanup", "crontab": 1, "enabled": True}},
        {"model": "django_celery_beat.periodictask", "pk": 2,
         "fields": {"name": "once-hourly", "task": "djangoproj.record", "interval": 1, "one_off": True, "enabled": True,
                    "total_run_count": 1, "last_run_at": "2026-12-01T10:00:00Z"}},
    ]
    (tmp_path / "dump.json").write_text(json.dumps(dump))
    env = _env(beats, tmp_path / "unused.sqlite3")
    done = _run(env, "-m", "celery", "-A", "djangoproj.celery_app", "schedules", "import-django-celery-beat", "dump.json", "--json",
                cwd=tmp_path)
    assert done.returncode == 0, (done.stdout, done.stderr)
    report = json.loads(done.stdout)
    assert report["refused"] == {} and set(report["skipped"]) == {"celery.backend_cleanup"}
    assert report["results"] == {"once-hourly": "created"} and "paused (a one_off that ran already)" in report["details"]["once-hourly"]
    shown = _run(env, "-m", "celery", "-A", "djangoproj.celery_app", "schedules", "show", "once-hourly", "--json", cwd=tmp_path)
    assert json.loads(shown.stdout)["enabled"] is False
