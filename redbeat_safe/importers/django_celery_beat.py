"""Import from django-celery-beat: its PeriodicTask rows, read from a
``manage.py dumpdata django_celery_beat`` JSON file (no Django needed) or, inside a
Django project, from the database through its models.

Every PeriodicTask field maps to something here, or the row is refused with the reason
(docs/migrating-from-django-celery-beat.md has the table):

- one of ``interval`` (``every`` + ``period``), ``crontab`` (its fields and its
  ``timezone``, with Celery's crontab day rule), ``solar`` (``event``, ``latitude``,
  ``longitude``) or ``clocked`` (``clocked_time``: a one-off ``at``);
- ``enabled`` (a disabled row is imported paused), ``one_off`` (``limit=1``; a clocked
  one is one run anyway), ``start_time`` (``start``), ``expires`` (``end``: no tick
  after it), ``expire_seconds`` (Celery's ``expires`` option, seconds after the send),
  ``queue``, ``exchange``, ``routing_key``, ``priority``, ``headers`` (a JSON object),
  ``args``/``kwargs`` (JSON);
- ``last_run_at``/``total_run_count``: where the entry stands (the next tick follows the
  last run, as django-celery-beat computes it, and the count goes on for ``limit``);
  ``date_changed`` is the phase of an interval that never ran;
- ``description`` is not kept (there is no field for it), and said so per entry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from celery import schedules as cs

from ..definitions import DefinitionError, EntryDef, build
from ..registry import Restore
from ..schedules import ScheduleError, at, every, ms_to_datetime, solar, to_ms
from ..store import RedisStore
from ..transfer import write_entries

APP = "django_celery_beat"
#: Celery's own result clean-up, which django-celery-beat adds as a row: beats install it themselves.
BACKEND_CLEANUP = "celery.backend_cleanup"
_PERIODS = ("days", "hours", "minutes", "seconds", "microseconds")
_OPTION_FIELDS = ("queue", "exchange", "routing_key")


class Refused(ValueError):
    """A row that cannot be represented; the message says why."""


@dataclass
class Report:
    results: dict[str, str] = field(default_factory=dict)  #: name -> created/updated/unchanged/...
    refused: dict[str, str] = field(default_factory=dict)  #: name -> why it was not imported
    details: dict[str, str] = field(default_factory=dict)  #: name -> what it became (schedule, next tick, notes)
    skipped: dict[str, str] = field(default_factory=dict)  #: name -> why it needs no entry (not a refusal)

    def as_dict(self) -> dict[str, Any]:
        return {"results": self.results, "refused": self.refused, "details": self.details, "skipped": self.skipped}

    def rows(self) -> list[tuple[str, str]]:
        done = [(k, v + (f": {self.details[k]}" if k in self.details else "")) for k, v in sorted(self.results.items())]
        return (done + [(k, f"not imported: {v}") for k, v in sorted(self.skipped.items())]
                + [(k, f"REFUSED: {v}") for k, v in sorted(self.refused.items())])


# -- reading -----------------------------------------------------------------------------

def from_dump(data: Any) -> list[dict[str, Any]]:
    """PeriodicTask rows of a dumpdata file, each with its schedule row inlined (as
    ``interval``, ``crontab``, ``solar`` or ``clocked``: a dict, or None)."""
    if not isinstance(data, list):
        raise Refused("not a dumpdata file (a JSON list of objects with model, pk and fields)")
    tables: dict[str, dict[Any, dict[str, Any]]] = {}
    for obj in data:
        if isinstance(obj, Mapping) and isinstance(obj.get("model"), str) and isinstance(obj.get("fields"), Mapping):
            tables.setdefault(obj["model"], {})[obj.get("pk")] = dict(obj["fields"])
    rows = []
    for _pk, task in sorted(tables.get(f"{APP}.periodictask", {}).items(), key=lambda kv: str(kv[0])):
        row = dict(task)
        for kind, model in (("interval", "intervalschedule"), ("crontab", "crontabschedule"), ("solar", "solarschedule"),
                            ("clocked", "clockedschedule")):
            ref = row.get(kind)
            row[kind] = None if ref is None else tables.get(f"{APP}.{model}", {}).get(ref, {"missing": ref})
        rows.append(row)
    return rows


def from_database() -> list[dict[str, Any]]:
    """The same rows read through django-celery-beat's models (inside a Django project:
    DJANGO_SETTINGS_MODULE set, the app installed)."""
    import django  # noqa: PLC0415 - only for this mode, in a Django project
    from django.conf import settings  # noqa: PLC0415

    if not settings.configured:
        raise Refused("Django is not configured: set DJANGO_SETTINGS_MODULE, or give a dumpdata file")
    django.setup()
    from django.forms.models import model_to_dict  # noqa: PLC0415
    from django_celery_beat.models import PeriodicTask  # noqa: PLC0415

    rows = []
    for task in PeriodicTask.objects.select_related("interval", "crontab", "solar", "clocked").order_by("name"):
        row = model_to_dict(task)
        row["date_changed"] = task.date_changed
        row["last_run_at"] = task.last_run_at
        for kind in ("interval", "crontab", "solar", "clocked"):
            sched = getattr(task, kind)
            row[kind] = None if sched is None else model_to_dict(sched)
        if row["crontab"] is not None:
            row["crontab"]["timezone"] = str(task.crontab.timezone)
        rows.append(row)
    return rows


# -- converting ----------------------------------------------------------------------------

def _when(value: Any, what: str) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise Refused(f"{what} {value!r} is not a date-time") from None
    else:
        raise Refused(f"{what} {value!r} is not a date-time")
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)  # django stores UTC when USE_TZ


def _json(value: Any, what: str, kind: type) -> Any:
    if value in (None, ""):
        return kind()
    if isinstance(value, kind):
        return value
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        raise Refused(f"{what} is not JSON: {str(value)[:60]!r}") from None
    if not isinstance(parsed, kind):
        raise Refused(f"{what} must be a JSON {'list' if kind is list else 'object'}, not {type(parsed).__name__}")
    return parsed


def _number(value: Any, what: str) -> float:
    try:
        return float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        raise Refused(f"{what} {value!r} is not a number") from None


def _schedule(row: Mapping[str, Any]) -> Any:
    kinds = [k for k in ("interval", "crontab", "solar", "clocked") if row.get(k) is not None]
    if len(kinds) != 1:
        raise Refused(f"it has {len(kinds)} schedules ({', '.join(kinds) or 'none'}); django-celery-beat needs exactly one")
    kind, spec = kinds[0], row[kinds[0]]
    if "missing" in spec:
        raise Refused(f"its {kind} schedule (pk {spec['missing']!r}) is not in the file")
    start = _when(row.get("start_time"), "start_time")
    end = _when(row.get("expires"), "expires")
    try:
        if kind == "interval":
            period, n = spec.get("period"), spec.get("every")
            if period not in _PERIODS or isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise Refused(f"interval every={n!r} period={period!r} is not a django-celery-beat interval")
            return every(timedelta(**{period: n}), start=start, end=end, limit=1 if row.get("one_off") else None)
        if kind == "crontab":
            c = cs.crontab(minute=spec.get("minute", "*"), hour=spec.get("hour", "*"), day_of_week=spec.get("day_of_week", "*"),
                           day_of_month=spec.get("day_of_month", "*"), month_of_year=spec.get("month_of_year", "*"))
            from ..schedules import from_celery  # noqa: PLC0415 - crontab's conversion, Celery's AND of the day fields

            p = from_celery(c).with_zone(str(spec.get("timezone") or "UTC"))
            return p.__class__(p.expr, tz=p.tz_name, day_and=True, start=start, end=end, limit=1 if row.get("one_off") else None)
        if kind == "solar":
            return solar(str(spec.get("event")), _number(spec.get("latitude"), "latitude"), _number(spec.get("longitude"), "longitude"),
                         start=start, end=end, limit=1 if row.get("one_off") else None)
        when = _when(spec.get("clocked_time"), "clocked_time")
        if when is None:
            raise Refused("its clocked schedule has no clocked_time")
        return at(when)
    except (ScheduleError, ValueError, TypeError) as exc:
        if isinstance(exc, Refused):
            raise
        raise Refused(f"its {kind} schedule: {exc}") from None


def convert(row: Mapping[str, Any], tz: str, now_ms: int) -> tuple[EntryDef, Restore, list[str]]:
    """One PeriodicTask row as an entry, where it stands, and notes; Refused says why not."""
    name, task = row.get("name"), row.get("task")
    if not isinstance(name, str) or not name:
        raise Refused("it has no name")
    if not isinstance(task, str) or not task:
        raise Refused("it has no task")
    sched = _schedule(row)
    options: dict[str, Any] = {k: row[k] for k in _OPTION_FIELDS if row.get(k) not in (None, "")}
    if row.get("priority") is not None:
        options["priority"] = row["priority"]
    if row.get("expire_seconds") not in (None, ""):
        options["expires"] = row["expire_seconds"]
    headers = _json(row.get("headers"), "headers", dict)
    if headers:
        options["headers"] = headers
    args, kwargs = _json(row.get("args"), "args", list), _json(row.get("kwargs"), "kwargs", dict)
    try:
        entry = build(name, task, sched, args, kwargs, options, default_tz=tz)
    except DefinitionError as exc:
        raise Refused(str(exc).removeprefix(f"entry {name!r}: ")) from None
    runs = row.get("total_run_count") or 0
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 0:
        raise Refused(f"total_run_count {runs!r} is not a count")
    last = _when(row.get("last_run_at"), "last_run_at")
    last_ms = None if last is None else to_ms(last, "last_run_at")
    s = entry.schedule
    if isinstance(s, at):
        nxt = None if runs and last_ms is not None else s.when_ms
    elif last_ms is not None:
        nxt = (last_ms + s.interval_ms) if isinstance(s, every) and s.start_ms is None else s.next_after(last_ms)
    elif isinstance(s, every) and s.start_ms is None:
        changed = _when(row.get("date_changed"), "date_changed")
        nxt = (to_ms(changed, "date_changed") if changed else now_ms) + s.interval_ms  # django-celery-beat's phase
    else:
        nxt = s.first_after(now_ms)
    notes = []
    if row.get("description"):
        notes.append("its description is not kept")
    if isinstance(s, at) and runs:
        notes.append("it ran already: imported finished")
    spent = bool(row.get("one_off")) and runs > 0 and not isinstance(s, at)  # a one-off that ran: kept, paused
    enabled = bool(row.get("enabled", True)) and not spent
    if not row.get("enabled", True):
        notes.append("paused (disabled in django-celery-beat)")
    elif spent:
        notes.append("paused (a one_off that ran already)")
    return entry, Restore(next=nxt, runs=runs, last=last_ms if runs else None, enabled=enabled), notes


def import_rows(store: RedisStore, rows: Iterable[Mapping[str, Any]], tz: str, dry_run: bool = False) -> Report:
    """Create entries for the rows (idempotent: a second run reports them unchanged)."""
    now = store.now()
    report = Report()
    entries, restore, notes = [], {}, {}
    for row in rows:
        name = str(row.get("name"))
        if name == BACKEND_CLEANUP:  # django-celery-beat writes this row itself: nothing to fix, no refusal
            report.skipped[name] = "Celery's own result clean-up: beats install it themselves when results expire"
            continue
        try:
            entry, rest, said = convert(row, tz, now)
        except Refused as exc:
            report.refused[name] = str(exc)
            continue
        if entry.name in restore:
            report.refused[name] = "the file has it twice"
            continue
        entries.append(entry)
        restore[entry.name], notes[entry.name] = rest, said
    report.results = write_entries(store, entries, {e.name: "api" for e in entries}, restore, dry_run)
    for e in entries:
        rest = restore[e.name]
        when = "no next tick (finished)" if rest.next is None else f"next {ms_to_datetime(rest.next).isoformat(timespec='seconds')}"
        report.details[e.name] = ", ".join([e.schedule.human(), when, *notes[e.name]])
    return report
