"""``celery -A proj schedules ...``: operate entries from the shell.

Exit status: 0 done, 1 no such entry (for `health` and `status`: not all
is well), 2 bad input (nothing written) or a refused configuration, 3 Redis unreachable, 4 Redis refused
the command (permission, authentication). Errors go to stderr as one line; ``--json`` everywhere.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from functools import wraps
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import click
import redis
from celery.exceptions import ImproperlyConfigured

from . import health as health_checks
from .api import EntryDamaged, EntryNotFound, Schedules
from .connection import STORE_ERRORS, redact, refusal
from .definitions import HIDDEN_CATEGORIES, DefinitionError
from .schedules import Schedule, ScheduleError, ms_to_datetime, zone_name
from .transfer import ImportRefused, export, import_export, import_redbeat, loads
from .trigger import new_request_id
from .views import Entry, printable

F = TypeVar("F", bound=Callable[..., Any])
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


class Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_interval(text: str) -> float:
    """'30s', '5m', '1h30m', '1d', '250ms' or a plain number of seconds -> seconds."""
    value = text.strip().lower()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _INTERVAL.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise Failure(2, f"cannot read interval {text!r}: use e.g. 30s, 5m, 1h30m, 1d or 250ms")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _json_arg(text: str | None, kind: type, what: str) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise Failure(2, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise Failure(2, f"{what} must be a JSON {'array' if kind is list else 'object'}")
    return value


def _when(text: str | None, zone: str, what: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise Failure(2, f"{what} {text!r} is not an ISO 8601 date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=ZoneInfo(zone))


def _handled(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Failure as exc:
            code, message = exc.code, str(exc)
        except (EntryNotFound, EntryDamaged) as exc:
            code, message = 1, str(exc)
        except ImportRefused as exc:
            code, message = 2, f"refused: {exc}"
        except (DefinitionError, ScheduleError) as exc:
            code, message = 2, f"refused, nothing written: {exc}"
        except ImproperlyConfigured as exc:
            code, message = 2, f"configuration: {exc}"
        except STORE_ERRORS as exc:
            said = refusal(exc)
            code, message = (4, said) if said is not None else (3, f"Redis unavailable: {exc}")
        click.echo(f"error: {message}", err=True)
        sys.exit(code)

    return wrapper  # type: ignore[return-value]


def _app(ctx: click.Context) -> Any:
    """The app given with -A. Without one, Celery hands over its default app, whose
    settings are empty: say that, instead of blaming the Redis URL it lacks."""
    app = ctx.obj.app
    if getattr(app, "main", None) == "default" and not app.conf.get("redbeat_safe_redis_url"):
        raise Failure(2, "no Celery app: give yours with -A, as for every Celery command (celery -A proj schedules ...)")
    return app


def _api(ctx: click.Context) -> Schedules:
    return Schedules(_app(ctx))


def _emit(as_json: bool, data: Any, human: Callable[[], str]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else human())


def _in_zone(when: datetime, zone: ZoneInfo) -> datetime:
    """``when`` in ``zone``; in UTC where that zone would pass year 9999 (a tick at the
    end of time, east of UTC), which datetime cannot hold."""
    try:
        return when.astimezone(zone)
    except (OverflowError, ValueError):
        return when


def _at(when: datetime | None, zone: ZoneInfo, timespec: str = "seconds") -> str:
    """A time with its UTC offset, in ``zone``: 2026-12-02 02:30:00+01:00."""
    return "-" if when is None else _in_zone(when, zone).isoformat(sep=" ", timespec=timespec)


def _ago(ms: int | None, now: int, zone: ZoneInfo) -> str:
    if ms is None:
        return "-"
    delta = (ms - now) / 1000
    span = abs(delta)
    text = f"{span:.0f}s" if span < 120 else f"{span / 60:.0f}m" if span < 7200 else f"{span / 3600:.1f}h"
    return f"{_at(ms_to_datetime(ms), zone)} ({'in ' + text if delta >= 0 else text + ' ago'})"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(zone_name(name))
    except ScheduleError as exc:
        raise Failure(2, f"--tz: {exc}") from None


def _entry_shown(ctx: click.Context, name: str, show_tz: str | None) -> tuple[Schedules, Entry, ZoneInfo]:
    """The API, an existing entry (else EntryNotFound) and the zone to show its times in."""
    api = _api(ctx)
    e = api.get(name)
    if e is None:
        raise EntryNotFound(name)
    return api, e, _shown_zone(e, show_tz, api.settings.timezone)


def _shown_zone(e: Entry | None, tz: str | None, app_zone: str) -> ZoneInfo:
    """Where an entry's times are shown: ``--tz`` if given, else the entry's own zone
    (a pattern's ``tz``; the app's ``timezone`` for an interval)."""
    if tz is not None:
        return _zone(tz)
    own = getattr(e.schedule, "tz_name", None) if e is not None else None
    return ZoneInfo(own or app_zone)


def _bounds(e: Entry, zone: ZoneInfo) -> str:
    """start, end and limit, as ``list`` shows them after the schedule."""
    s = e.schedule
    if s is None:
        return ""
    parts = [] if s.start_ms is None else [f"from {_at(ms_to_datetime(s.start_ms), zone)}"]
    parts += [] if s.end_ms is None else [f"until {_at(ms_to_datetime(s.end_ms), zone)}"]
    parts += [f"{e.total_runs} of {s.limit} runs"] * (s.limit is not None)
    return "".join(", " + p for p in parts)


def _shown(value: Any) -> str:
    """Printable: a name that is not UTF-8 in Redis shows its bytes escaped (\\xff), and
    one planted with a control or format character (U+202E turns text around) shows
    it escaped (\\u202e), so what is printed is what is stored."""
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in HIDDEN_CATEGORIES else c for c in printable(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers]] + [[_shown(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _ms(d: datetime | None) -> int | None:
    return None if d is None else int(d.timestamp() * 1000)


def _now() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def _checked_zone(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--tz is checked before anything is read: a bad zone is the same error with no entries."""
    if value is not None:
        try:
            zone_name(value)
        except ScheduleError as exc:
            click.echo(f"error: --tz: {exc}", err=True)  # one line, as _handled says it
            ctx.exit(2)
    return value


tz_option = click.option("--tz", "show_tz", callback=_checked_zone,
                         help="Show times in this IANA zone (default: each entry's own zone).")


@click.group(name="schedules")
@click.pass_context
def schedules(ctx: click.Context) -> None:
    """Operate redbeat_safe entries: list, add, pause, trigger, export, ..."""


@schedules.command(name="list")
@tz_option
@json_option
@click.pass_context
@_handled
def list_(ctx: click.Context, show_tz: str | None, as_json: bool) -> None:
    """Every entry with its schedule (and start, end, limit), next and last tick, in the
    entry's zone with the UTC offset."""
    api = _api(ctx)
    entries = api.list()
    now = _now()
    zones = {e.name: _shown_zone(e, show_tz, api.settings.timezone) for e in entries}
    rows = [
        (e.name, ("?" if e.schedule is None else e.schedule.human()) + _bounds(e, zones[e.name]), e.task or "?", _enabled(e),
         _ago(_ms(e.next_tick), now, zones[e.name]), _ago(_ms(e.last_tick), now, zones[e.name]), e.total_runs, e.source)
        for e in entries
    ]
    damaged = [f"  {_shown(e.name)}: {_shown(e.problem)}" for e in entries if e.problem]
    note = "" if not damaged else "\n\nDAMAGED (beats skip these; `add` it again to repair, or `remove` it):\n" + "\n".join(damaged)
    _emit(as_json, [e.as_dict() for e in entries],
          lambda: _table(("NAME", "SCHEDULE", "TASK", "ENABLED", "NEXT", "LAST", "RUNS", "SOURCE"), rows) + note if rows else "no entries")


def _enabled(e: Entry) -> str:
    if e.problem:
        return "DAMAGED"
    return "finished" if e.finished else ("yes" if e.enabled else "paused")


_TIMES = ("next_tick", "last_tick", "created_at", "updated_at")


@schedules.command()
@click.argument("name")
@tz_option
@json_option
@click.pass_context
@_handled
def show(ctx: click.Context, name: str, show_tz: str | None, as_json: bool) -> None:
    """One entry in full; times in its zone with the UTC offset (--json: UTC)."""
    api = _api(ctx)
    e = api.get(name)
    if e is None:
        raise EntryNotFound(name)
    data = e.as_dict()
    zone = _shown_zone(e, show_tz, api.settings.timezone)

    def human() -> str:
        shown = {k: (_at(getattr(e, k), zone, "milliseconds") if k in _TIMES else v) for k, v in data.items()}
        if e.schedule is not None and "schedule" in shown:
            shown["schedule"] = f"{shown['schedule']}{_bounds(e, zone)}"  # start, end and limit, as in list
        shown["zone"] = zone.key
        return "\n".join(f"{k:>13}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in shown.items())

    _emit(as_json, data, human)


_DEFINITION_OPTIONS = [
    click.option("--task", help="Task name to send."),
    click.option("--every", "interval", help="Interval: 30s, 5m, 1h30m, 1d."),
    click.option("--pattern", "expr", help="Cron pattern, 5 fields or 6 with seconds first."),
    click.option("--tz", help="IANA zone of the pattern (default: the app's timezone)."),
    click.option("--align/--no-align", default=None, help="--every only: ticks on multiples of the interval (UTC) instead of from creation."),
    click.option("--args", "args_json", help="Positional arguments, a JSON array."),
    click.option("--kwargs", "kwargs_json", help="Keyword arguments, a JSON object."),
    click.option("--queue", help="Queue to route to."),
    click.option("--options", "options_json", help="apply_async options, a JSON object (e.g. '{\"routing_key\": \"r\"}')."),
    click.option("--expires", help="Celery's expires option: a worker discards the message this long after it is sent (30s, 5m)."),
    click.option("--priority", type=click.IntRange(0, 255), help="Message priority, 0-255."),
    click.option("--start", help="ISO date-time of the first tick (naive = the app's timezone); edit: 'none' clears it."),
    click.option("--end", help="ISO date-time after which it stops; edit: 'none' clears it."),
    click.option("--limit", type=click.IntRange(min=0), help="At most this many runs; edit: 0 clears it."),
    click.option("--catchup", type=click.Choice(["coalesce", "skip", "all"]), help="Missed-tick policy for this entry."),
    click.option("--overlap", type=click.Choice(["allow", "skip", "buffer_one", "replace"]),
                 help="While the previous run is queued or running (needs the run ledger in the workers; docs/runs.md)."),
    click.option("--terminate/--no-terminate", default=None, help="--overlap replace: kill the running task, not only revoke it."),
    click.option("--expires-after", help="A worker discards a tick this long after its nominal tick (30s, 5m); edit: 'none' clears it."),
    click.option("--jitter", help="Publish each tick up to this much later, the same delay for the same tick (2s); edit: 0 clears it."),
    click.option("--force", is_flag=True, help="Change an entry that comes from a beat_schedule anyway (until a beat next starts)."),
]


def _definition_options(fn: F) -> F:
    for option in reversed(_DEFINITION_OPTIONS):
        fn = option(fn)
    return fn


def _edited(api: Schedules, current: Entry | None, c: dict[str, Any]) -> tuple[str, Schedule, list[Any], dict[str, Any], dict[str, Any]]:
    """The definition ``add`` (``current`` None) or ``edit`` writes: what is given
    replaces what is stored; everything else is kept."""
    zone = api.settings.timezone
    if current is None and (c["interval"] is None) == (c["expr"] is None):
        raise Failure(2, "give exactly one of --every or --pattern")
    if c["interval"] is not None and c["expr"] is not None:
        raise Failure(2, "give at most one of --every or --pattern")
    if current is not None and current.schedule is None:
        raise Failure(2, f"{_shown(current.name)!r} is damaged; `add` it again with its whole definition")
    spec: dict[str, Any] = {} if current is None else dict(current.schedule.to_json())  # type: ignore[union-attr]
    common = {k: spec.get(k) for k in ("start", "end", "limit", "catchup", "overlap", "terminate", "expires_after_ms", "jitter_ms")}
    if c["interval"] is not None:  # an aligned interval stays aligned unless --no-align
        spec = {"kind": "every", "interval_ms": round(parse_interval(c["interval"]) * 1000),
                **({"align": True} if spec.get("kind") == "every" and spec.get("align") else {})}
    elif c["expr"] is not None:  # a pattern keeps its zone and its day rule (a converted crontab ANDs its days)
        was = spec if spec.get("kind") == "pattern" else {}
        spec = {"kind": "pattern", "expr": c["expr"], "tz": was.get("tz"), **({"day_and": True} if was.get("day_and") else {})}
    if c["tz"] is not None:
        if spec.get("kind") != "pattern":
            raise Failure(2, "--tz applies to --pattern only")
        spec["tz"] = c["tz"]
    if c["align"] is not None:
        if spec.get("kind") != "every":
            raise Failure(2, "--align applies to --every only")
        spec["align"] = c["align"]
    for key in ("start", "end"):
        if c[key] is not None:
            cleared = c[key].lower() == "none" and current is not None
            common[key] = None if cleared else _ms(_when(c[key], zone, f"--{key}"))
    if c["limit"] is not None:
        if c["limit"] == 0 and current is None:
            raise Failure(2, "--limit must be at least 1")
        common["limit"] = c["limit"] or None
    if c["catchup"] is not None:
        common["catchup"] = c["catchup"]
    if c["overlap"] is not None:
        common["overlap"] = None if c["overlap"] == "allow" and current is not None else c["overlap"]
        if common["overlap"] != "replace":
            common["terminate"] = None
    if c["terminate"] is not None:
        common["terminate"] = c["terminate"] or None
    if c["expires_after"] is not None:
        cleared = c["expires_after"].lower() == "none" and current is not None
        common["expires_after_ms"] = None if cleared else round(parse_interval(c["expires_after"]) * 1000)
    if c["jitter"] is not None:
        common["jitter_ms"] = round(parse_interval(c["jitter"]) * 1000) or None
    spec.update({k: v for k, v in common.items() if v is not None})
    for key in ("start", "end", "limit", "catchup", "overlap", "terminate", "expires_after_ms", "jitter_ms"):
        if common[key] is None:
            spec.pop(key, None)
    if spec.get("kind") == "pattern" and spec.get("tz") is None:
        spec["tz"] = zone
    sched = Schedule.from_json(spec)
    task = c["task"] or (current.task if current is not None else None)
    if not task:
        raise Failure(2, "--task is required")
    args = _json_arg(c["args_json"], list, "--args")
    kwargs = _json_arg(c["kwargs_json"], dict, "--kwargs")
    options = dict(current.options) if current is not None else {}
    given = _json_arg(c["options_json"], dict, "--options") or {}
    options.update(given)
    flags = {"queue": c["queue"] or None, "expires": None if c["expires"] is None else parse_interval(c["expires"]),
             "priority": c["priority"]}
    for key, value in flags.items():
        if value is None:
            continue
        if key in given and given[key] != value:  # which one was meant? say so rather than pick one
            raise Failure(2, f"--{key} {value!r} and --options {key!r}: {given[key]!r} disagree; give it once")
        options[key] = value
    return (task, sched, list(current.args) if args is None and current is not None else (args or []),
            dict(current.kwargs) if kwargs is None and current is not None else (kwargs or {}), options)


def _known_task(ctx: click.Context, task: str) -> None:
    """Warn (stderr, still exit 0) when the app does not know ``task``: a beat sends it
    by name anyway, and a worker without it rejects the message."""
    app = _app(ctx)
    try:
        app.loader.import_default_modules()
        known = task in app.tasks
    except Exception:  # noqa: BLE001 - the app's own modules failing to import is not ours to report here
        return
    if not known:
        click.echo(f"warning: the app does not know a task named {_shown(task)!r} (a typo, or a task only the workers "
                   "import?); beats send it by name", err=True)


def _write(ctx: click.Context, name: str, current: Entry | None, c: dict[str, Any], enabled: bool | None, as_json: bool) -> None:
    api = _api(ctx)
    task, sched, args, kwargs, options = _edited(api, current, c)
    outcome = api.upsert(name, task, sched, args, kwargs, options or None,
                         enabled=current.enabled if enabled is None and current is not None else enabled is not False,
                         force=c["force"])
    if current is None or c["task"]:
        _known_task(ctx, task)
    e = api.get(name)
    zone = _shown_zone(e, None, api.settings.timezone)
    static = e is not None and e.source == "static"
    note = "; a beat puts its beat_schedule definition back when it next starts" if static and outcome == "updated" else ""
    data = {"outcome": outcome, "entry": e.as_dict() if e else None, "reverted_at_next_beat_start": bool(note)}
    _emit(as_json, data, lambda: f"{name}: {outcome}; next tick {_ago(_ms(e.next_tick) if e else None, _now(), zone)}{note}")


@schedules.command()
@click.argument("name")
@_definition_options
@click.option("--paused", is_flag=True, help="Create it paused.")
@json_option
@click.pass_context
@_handled
def add(ctx: click.Context, /, name: str, paused: bool, as_json: bool, **given: Any) -> None:
    """Create or replace an entry (idempotent): the whole definition is given. Refused
    (exit 2) when it could never fire; warns when the app does not know the task."""
    _write(ctx, name, None, given, False if paused else True, as_json)


@schedules.command()
@click.argument("name")
@_definition_options
@json_option
@click.pass_context
@_handled
def edit(ctx: click.Context, /, name: str, as_json: bool, **given: Any) -> None:
    """Change some fields of an entry (e.g. --kwargs) and keep the rest. A new schedule
    restarts its phase; new arguments or options keep the next tick."""
    if all(v is None for k, v in given.items() if k != "force"):  # 0 and --no-align are changes
        raise Failure(2, "nothing to change: give at least one option (see --help)")
    current = _api(ctx).get(name)
    if current is None:
        raise EntryNotFound(name)
    _write(ctx, name, current, given, None, as_json)


_HELP = {
    "remove": "Delete an entry (ticks already claimed are still sent).",
    "pause": "Stop dispatching an entry until resumed.",
    "resume": "Dispatch a paused entry again, from its next tick after now (no burst).",
    "trigger": "Dispatch an entry now, outside its schedule; prints the task id.",
}


def _simple(verb: str, action: Callable[[Schedules, str], Any]) -> None:
    @schedules.command(name=verb, help=_HELP[verb])
    @click.argument("name")
    @json_option
    @click.pass_context
    @_handled
    def command(ctx: click.Context, name: str, as_json: bool) -> None:
        result = action(_api(ctx), name)
        _emit(as_json, {"name": name, "result": result}, lambda: f"{name}: {result}")


@schedules.command(name="remove", help=_HELP["remove"])
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove an entry that comes from a beat_schedule anyway (a beat creates it again when it next starts).")
@json_option
@click.pass_context
@_handled
def remove_(ctx: click.Context, name: str, force: bool, as_json: bool) -> None:
    api = _api(ctx)
    e = api.get(name)
    if e is None or not api.remove(name, force=force):
        raise EntryNotFound(name)
    result = "removed" + ("; a beat creates it again from its beat_schedule when it next starts" if e.source == "static" else "")
    _emit(as_json, {"name": name, "result": "removed", "static": e.source == "static"}, lambda: f"{name}: {result}")
_simple("pause", lambda api, name: api.pause(name))
_simple("resume", lambda api, name: api.resume(name))


@schedules.command(name="trigger", help=_HELP["trigger"])
@click.argument("name")
@click.option("--request-id", help="Idempotency key: the same id (within a day) never runs the entry twice. Default: a new one.")
@json_option
@click.pass_context
@_handled
def trigger_(ctx: click.Context, name: str, request_id: str | None, as_json: bool) -> None:
    request = request_id or new_request_id()
    task_id = _api(ctx).trigger(name, request_id=request)
    _emit(as_json, {"name": name, "result": task_id, "request_id": request}, lambda: f"{name}: {task_id}")


@schedules.command()
@click.argument("name")
@click.option("--limit", default=20, show_default=True, help="How many of the latest dispatches.")
@tz_option
@json_option
@click.pass_context
@_handled
def history(ctx: click.Context, name: str, limit: int, show_tz: str | None, as_json: bool) -> None:
    """The latest dispatches of an entry: nominal tick (in its zone, with the UTC offset),
    task id, instance, how late it was published."""
    api, e, zone = _entry_shown(ctx, name, show_tz)
    rows = api.history(name, limit)
    table = [(_at(d.tick, zone, "milliseconds"), d.kind, d.task_id, d.instance,
              f"{(_ms(d.published_at) or 0) - d.tick_ms:+d} ms", d.outcome_text()) for d in rows]
    _emit(as_json, [d.as_dict() for d in rows],
          lambda: _table(("TICK", "KIND", "TASK ID", "BY", "PUBLISHED", "OUTCOME"), table) if table else "no dispatches yet")


@schedules.command()
@click.argument("name")
@click.option("-n", "limit", type=click.IntRange(1, 100), default=20, show_default=True, help="How many ticks.")
@tz_option
@json_option
@click.pass_context
@_handled
def why(ctx: click.Context, name: str, limit: int, show_tz: str | None, as_json: bool) -> None:
    """What became of each recent tick, in one line: published (by whom, how late),
    re-published, triggered, the run's outcome, or skipped and why."""
    api, e, zone = _entry_shown(ctx, name, show_tz)
    rows = api.why(name, limit)
    _emit(as_json, [r.as_dict() for r in rows],
          lambda: "\n".join(f"{_at(r.tick, zone, 'milliseconds')}  {_shown(r.detail)}" for r in rows) if rows else "no ticks yet")


@schedules.command(name="next")
@click.argument("name")
@click.option("-n", "count", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many ticks.")
@tz_option
@json_option
@click.pass_context
@_handled
def next_(ctx: click.Context, name: str, count: int, show_tz: str | None, as_json: bool) -> None:
    """Preview the next ticks of an entry, from its stored next tick (local time and UTC)."""
    api, e, zone = _entry_shown(ctx, name, show_tz)
    if e.problem or e.schedule is None:
        raise Failure(1, f"{_shown(name)!r} is damaged: {_shown(e.problem)}")
    ticks: list[int] = []
    why = "paused: no tick until it is resumed" if not e.enabled else "finished: no tick is left" if e.next_tick is None else ""
    if not why:
        left = count if e.schedule.limit is None else max(0, min(count, e.schedule.limit - e.total_runs))
        first = _ms(e.next_tick)
        ticks = [] if first is None or left == 0 else e.schedule.ticks_from(first, 2**62, left)
    utc = ZoneInfo("UTC")
    data = {"name": name, "zone": zone.key, "ticks": [{"tick_ms": t, "local": _at(ms_to_datetime(t), zone).replace(" ", "T"),
                                                        "utc": ms_to_datetime(t).isoformat()} for t in ticks], "note": why or None}
    rows = [(i + 1, _at(ms_to_datetime(t), zone), _at(ms_to_datetime(t), utc)) for i, t in enumerate(ticks)]
    _emit(as_json, data, lambda: why or _table(("#", f"LOCAL ({zone.key})", "UTC"), rows))


@schedules.command()
@click.option("--min-beats", type=click.IntRange(min=0), default=health_checks.DEFAULT_MIN_BEATS, show_default=True,
              help="Fail when fewer beats are alive.")
@click.option("--max-late", default=f"{health_checks.DEFAULT_MAX_LATE_S:g}s", show_default=True,
              help="Fail when an enabled entry's next tick, or an in-flight tick's lease, is older than this.")
@click.option("--on-host", help="Count only the beats on this host (as `instances` shows it): a per-pod or per-host probe.")
@json_option
@click.pass_context
@_handled
def health(ctx: click.Context, min_beats: int, max_late: str, on_host: str | None, as_json: bool) -> None:
    """Exit 0 when Redis answers, enough beats are alive and nothing is late; else 1,
    one line per failed check (for probes and cron checks)."""
    api = _api(ctx)
    result = health_checks.check(api.store, min_beats=min_beats, max_late_s=parse_interval(max_late),
                                 redis_url=api.settings.redis_url, on_host=on_host)
    _emit(as_json, result.as_dict(), lambda: "ok: " + f"{result.beats_alive} beat(s) alive, nothing late" if result.ok
          else "\n".join(_shown(line) for line in result.failures))
    sys.exit(0 if result.ok else 1)


def _age(ms: int | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f}s ago"


def _beats_table(instances: list[dict[str, Any]], zone: ZoneInfo) -> str:
    """Live beats as a table; beats that stopped heartbeating (not yet pruned) on one line."""
    live = [(i["id"], i["host"], i["pid"], i["version"], _age(i["heartbeat_age_ms"]), i["ticks_dispatched"], i["static_entries"],
             _at(datetime.fromisoformat(i["started"]), zone) if i["started"] else "-") for i in instances if i["alive"]]
    out = _table(("INSTANCE", "HOST", "PID", "VERSION", "HEARTBEAT", "TICKS SENT", "STATIC", "STARTED"), live) if live else "no beat alive"
    dead = [f"{_shown(i['id'])} (last heartbeat {_age(i['heartbeat_age_ms'])})" for i in instances if not i["alive"]]
    if dead:
        out += f"\nstopped heartbeating, not counted: {', '.join(dead)}"
    return out


@schedules.command()
@tz_option
@json_option
@click.pass_context
@_handled
def instances(ctx: click.Context, show_tz: str | None, as_json: bool) -> None:
    """Live beats: host, pid, version, last heartbeat's age, ticks sent, when it started."""
    api = _api(ctx)
    rows = [i.as_dict() for i in api.instances()]
    _emit(as_json, rows, lambda: _beats_table(rows, _zone(show_tz or api.settings.timezone)))


@schedules.command()
@tz_option
@json_option
@click.pass_context
@_handled
def status(ctx: click.Context, show_tz: str | None, as_json: bool) -> None:
    """Beats, entries due in the next minute, ticks in flight, the most late entry.
    Exit 0 when all is well (the `health` checks pass with their defaults and no entry
    is damaged), else 1 with the problems listed last."""
    api = _api(ctx)
    data = api.status()
    data["redis"] = redact(api.settings.redis_url)
    data["prefix"] = api.settings.key_prefix
    checked = health_checks.check(api.store, redis_url=api.settings.redis_url)
    problems = checked.failures + [f"damaged: {len(data['damaged'])} entr{'y' if len(data['damaged']) == 1 else 'ies'} set aside "
                                   "(see `list`)"] * bool(data["damaged"])
    data["problems"] = problems

    zone = _zone(show_tz or api.settings.timezone)

    def human() -> str:
        now = data["now_ms"]
        lines = [f"redis {data['redis']}  keys {{{data['prefix']}}}:*  times in {zone.key}", "", _beats_table(data["instances"], zone), ""]
        soon = [(d["name"], _ago(d["tick_ms"], now, zone)) for d in data["due_next_minute"]]
        lines.append(_table(("DUE IN THE NEXT MINUTE", "TICK"), soon) if soon else "nothing due in the next minute")
        lines.append(f"in flight: {len(data['in_flight'])} tick(s)" + "".join(
            f"\n  {_shown(f['name'])} @ {f['tick_ms']} (lease {f['lease_left_ms'] / 1000:.1f}s left)"
            + (f" PROBLEM: {f['problem']}" if f.get("problem") else "") for f in data["in_flight"]))
        late = data["most_late"]
        lines.append("most late: none" if late is None else f"most late: {_shown(late['name'])}, {late['late_ms'] / 1000:.1f}s behind")
        lines.append("" if not problems else "\nPROBLEMS:\n" + "\n".join(f"  {_shown(p)}" for p in problems))
        lines.append("all well" if not problems else "")
        return "\n".join(lines).rstrip()

    _emit(as_json, data, human)
    sys.exit(1 if problems else 0)


@schedules.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=9808, show_default=True, help="Port (0 picks a free one).")
@click.option("--token", envvar="REDBEAT_SAFE_DASHBOARD_TOKEN", default=None,
              help="Enables the pause, resume and trigger buttons for whoever signs in with it "
                   "(default: redbeat_safe_dashboard_token; env REDBEAT_SAFE_DASHBOARD_TOKEN keeps it out of `ps`).")
@click.option("--show-args", is_flag=True, help="Show entry arguments (hidden by default: they may hold secrets).")
@click.option("--entry-series", type=click.Choice(["late", "all", "none"]), default="late", show_default=True,
              help="Per-entry series on /metrics: the lateness of entries whose tick has come; all: also every entry's next "
                   "tick and latest dispatch; none.")
@click.pass_context
@_handled
def serve(ctx: click.Context, host: str, port: int, token: str | None, show_args: bool, entry_series: str) -> None:
    """Serve the dashboard (/), the cluster's metrics (/metrics) and /healthz (200 exactly
    when `health` would exit 0). Needs the web extra."""
    try:
        from .web import server, wsgi_app
    except ImportError as exc:
        raise Failure(2, f"the dashboard needs the web extra: pip install 'redbeat-safe[web]' ({exc})") from None
    app = wsgi_app(_app(ctx), token=token, show_args=show_args, entry_series=entry_series)
    try:
        httpd = server.make(app, host, port)
    except OSError as exc:
        raise Failure(2, f"cannot listen on {host}:{port}: {exc}") from None
    where = f"http://{host}:{httpd.server_port}/"
    mode = "actions enabled for token holders" if app.token else "read-only (no token)"
    click.echo(f"serving the dashboard on {where} ({mode}); /metrics and /healthz beside it", err=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


@schedules.command()
@click.option("--yes", is_flag=True, help="Really delete (without it: say what would be deleted, delete nothing).")
@click.option("--force", is_flag=True, help="Delete even while beats are alive (they register again at once and recreate their beat_schedule).")
@json_option
@click.pass_context
@_handled
def purge(ctx: click.Context, yes: bool, force: bool, as_json: bool) -> None:
    """Delete every key of this prefix: entries, history, instances, everything. For
    uninstalling, or starting over: stop every beat first (refused while one is alive)."""
    api = _api(ctx)
    keys = api.store.all_keys()
    alive = [i for i in api.instances() if i.alive]
    where = f"{{{api.settings.key_prefix}}}:* at {redact(api.settings.redis_url)}"
    if alive and not force and yes:  # saying what it would delete is always allowed
        raise Failure(2, f"{len(alive)} beat(s) alive ({', '.join(_shown(i.id) for i in alive)}): stop them first, "
                         "or --force (a running beat registers again and recreates its beat_schedule entries)")
    if not yes:
        busy = f" ({len(alive)} beat(s) alive: stop them first)" if alive and not force else ""
        _emit(as_json, {"keys": len(keys), "deleted": 0, "dry_run": True, "beats_alive": len(alive)},
              lambda: f"would delete {len(keys)} key(s) under {where}{busy}; run again with --yes to delete them")
        return
    deleted = api.store.delete_keys(keys)
    _emit(as_json, {"keys": len(keys), "deleted": deleted, "dry_run": False}, lambda: f"deleted {deleted} key(s) under {where}")


@schedules.command(name="export")
@click.option("--json", "as_json", is_flag=True, help="Accepted for symmetry: the export is always JSON.")
@click.pass_context
@_handled
def export_(ctx: click.Context, as_json: bool) -> None:
    """Write every entry as JSON to stdout (for `import`)."""
    click.echo(json.dumps(export(_api(ctx).store), indent=2, sort_keys=True))


@schedules.command(name="import")
@click.argument("file", type=click.File("r"))
@click.option("--dry-run", is_flag=True, help="Check and show, write nothing.")
@click.option("--force", is_flag=True, help="Change entries that come from a beat_schedule anyway (until a beat next starts).")
@json_option
@click.pass_context
@_handled
def import_(ctx: click.Context, file: Any, dry_run: bool, force: bool, as_json: bool) -> None:
    """Load entries written by `export` (idempotent; keeps each entry's phase)."""
    try:
        data = loads(file.read())
        report = import_export(_api(ctx).store, data, dry_run=dry_run, force=force)
    except ImportRefused as exc:
        text = str(exc)
        raise Failure(2, f"{file.name}: {text}" + ("" if text.endswith("nothing was written") else "; nothing was written")) from None
    _emit(as_json, report.as_dict(), lambda: _table(("NAME", "RESULT"), report.rows()))


@schedules.command(name="import-django-celery-beat")
@click.argument("file", type=click.File("r"), required=False)
@click.option("--dry-run", is_flag=True, help="Show what would be created, write nothing.")
@json_option
@click.pass_context
@_handled
def import_django_celery_beat_(ctx: click.Context, file: Any, dry_run: bool, as_json: bool) -> None:
    """Create entries equivalent to django-celery-beat's PeriodicTasks, from a `manage.py
    dumpdata django_celery_beat` file, or (no FILE, inside the Django project) its database."""
    from .importers import django_celery_beat as dcb  # noqa: PLC0415 - only this command needs it

    api = _api(ctx)
    try:
        rows = dcb.from_dump(loads(file.read())) if file is not None else dcb.from_database()
    except (ImportRefused, dcb.Refused) as exc:
        raise Failure(2, f"{file.name if file is not None else 'the database'}: {exc}; nothing was written") from None
    except ImportError as exc:
        raise Failure(2, f"reading the database needs Django and django-celery-beat installed ({exc}); or give a dumpdata file") from None
    report = dcb.import_rows(api.store, rows, api.settings.timezone, dry_run=dry_run)
    rows_out = report.rows()
    if not rows_out:
        raise Failure(1, "no django-celery-beat PeriodicTask rows found")
    _emit(as_json, report.as_dict(), lambda: _table(("ENTRY", "RESULT"), rows_out))
    if report.refused:
        sys.exit(2)


@schedules.command(name="import-redbeat")
@click.option("--redbeat-prefix", default=None, help="celery-redbeat's key prefix (default: redbeat_key_prefix, else 'redbeat:').")
@click.option("--redbeat-url", default=None, help="Redis holding celery-redbeat's keys (default: redbeat_redis_url, else ours).")
@click.option("--dry-run", is_flag=True, help="Show what would be created, write nothing.")
@json_option
@click.pass_context
@_handled
def import_redbeat_(ctx: click.Context, redbeat_prefix: str | None, redbeat_url: str | None, dry_run: bool, as_json: bool) -> None:
    """Create entries equivalent to celery-redbeat's, on its phase (last runs kept)."""
    api = _api(ctx)
    conf = _app(ctx).conf
    prefix = redbeat_prefix or conf.get("redbeat_key_prefix") or "redbeat:"
    url = redbeat_url or conf.get("redbeat_redis_url") or api.settings.redis_url
    source = redis.Redis.from_url(url, socket_timeout=10)
    try:
        report = import_redbeat(api.store, source, prefix, api.settings.timezone, dry_run=dry_run)
    finally:
        source.close()
    rows = report.rows()
    if not rows:
        hint = ""
        if not prefix.endswith(":"):
            probe = redis.Redis.from_url(url, socket_timeout=10)
            try:
                if probe.exists(prefix + "::schedule"):
                    hint = f"; there are some under {prefix + ':'!r}: celery-redbeat's prefixes end with a colon"
            finally:
                probe.close()
        raise Failure(1, f"no celery-redbeat entries under {prefix!r} (no {prefix + ':schedule'!r} key){hint}")
    _emit(as_json, report.as_dict(), lambda: _table(("ENTRY", "RESULT"), rows))
    if report.skipped:
        sys.exit(2)
