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
from .schedules import ScheduleError, every, ms_to_datetime, pattern
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


def _api(ctx: click.Context) -> Schedules:
    return Schedules(ctx.obj.app)


def _emit(as_json: bool, data: Any, human: Callable[[], str]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else human())


def _local(when: datetime) -> datetime:
    """In the machine's zone; in UTC where that zone would pass year 9999 (a tick at
    the end of time, east of UTC), which datetime cannot hold."""
    try:
        return when.astimezone()
    except (OverflowError, ValueError):
        return when


def _ago(ms: int | None, now: int) -> str:
    if ms is None:
        return "-"
    delta = (ms - now) / 1000
    when = _local(ms_to_datetime(ms)).strftime("%Y-%m-%d %H:%M:%S")
    span = abs(delta)
    text = f"{span:.0f}s" if span < 120 else f"{span / 60:.0f}m" if span < 7200 else f"{span / 3600:.1f}h"
    return f"{when} ({'in ' + text if delta >= 0 else text + ' ago'})"


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


@click.group(name="schedules")
@click.pass_context
def schedules(ctx: click.Context) -> None:
    """Operate redbeat_safe entries: list, add, pause, trigger, export, ..."""


@schedules.command(name="list")
@json_option
@click.pass_context
@_handled
def list_(ctx: click.Context, as_json: bool) -> None:
    """Every entry with its schedule, next and last tick."""
    entries = _api(ctx).list()
    now = _now()
    rows = [
        (e.name, "?" if e.schedule is None else e.schedule.human(), e.task or "?", _enabled(e),
         _ago(_ms(e.next_tick), now), _ago(_ms(e.last_tick), now), e.total_runs, e.source)
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


@schedules.command()
@click.argument("name")
@json_option
@click.pass_context
@_handled
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """One entry in full."""
    e = _api(ctx).get(name)
    if e is None:
        raise EntryNotFound(name)
    data = e.as_dict()
    _emit(as_json, data, lambda: "\n".join(f"{k:>13}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in data.items()))


@schedules.command()
@click.argument("name")
@click.option("--task", required=True, help="Task name to send.")
@click.option("--every", "interval", help="Interval: 30s, 5m, 1h30m, 1d.")
@click.option("--pattern", "expr", help="Cron pattern, 5 fields or 6 with seconds first.")
@click.option("--tz", help="IANA zone of the pattern (default: the app's timezone).")
@click.option("--args", "args_json", help="Positional arguments, a JSON array.")
@click.option("--kwargs", "kwargs_json", help="Keyword arguments, a JSON object.")
@click.option("--queue", help="Queue to route to.")
@click.option("--start", help="ISO date-time of the first tick (naive = the app's timezone).")
@click.option("--end", help="ISO date-time after which it stops.")
@click.option("--limit", type=int, help="At most this many runs.")
@click.option("--catchup", type=click.Choice(["coalesce", "skip", "all"]), help="Missed-tick policy for this entry.")
@click.option("--paused", is_flag=True, help="Create it paused.")
@json_option
@click.pass_context
@_handled
def add(ctx: click.Context, name: str, task: str, interval: str | None, expr: str | None, tz: str | None,
        args_json: str | None, kwargs_json: str | None, queue: str | None, start: str | None, end: str | None,
        limit: int | None, catchup: str | None, paused: bool, as_json: bool) -> None:
    """Create or change an entry (idempotent)."""
    api = _api(ctx)
    zone = api.settings.timezone
    if (interval is None) == (expr is None):
        raise Failure(2, "give exactly one of --every or --pattern")
    if tz is not None and expr is None:
        raise Failure(2, "--tz applies to --pattern only")
    common: dict[str, Any] = {"start": _when(start, zone, "--start"), "end": _when(end, zone, "--end"), "limit": limit, "catchup": catchup}
    sched = every(parse_interval(interval), **common) if interval is not None else pattern(expr or "", tz=tz, **common)
    options = {"queue": queue} if queue else None
    outcome = api.upsert(name, task, sched, _json_arg(args_json, list, "--args") or (), _json_arg(kwargs_json, dict, "--kwargs"),
                         options, enabled=not paused)
    e = api.get(name)
    data = {"outcome": outcome, "entry": e.as_dict() if e else None}
    _emit(as_json, data, lambda: f"{name}: {outcome}; next tick {_ago(_ms(e.next_tick) if e else None, _now())}")


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


def _remove(api: Schedules, name: str) -> str:
    if not api.remove(name):
        raise EntryNotFound(name)
    return "removed"


_simple("remove", _remove)
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
@json_option
@click.pass_context
@_handled
def history(ctx: click.Context, name: str, limit: int, as_json: bool) -> None:
    """The latest dispatches of an entry: nominal tick, task id, instance, time published."""
    api = _api(ctx)
    if api.get(name) is None:
        raise EntryNotFound(name)
    rows = api.history(name, limit)
    table = [(_local(d.tick).isoformat(timespec="milliseconds"), d.kind, d.task_id, d.instance,
              f"{(_ms(d.published_at) or 0) - d.tick_ms:+d} ms") for d in rows]
    _emit(as_json, [d.as_dict() for d in rows],
          lambda: _table(("TICK", "KIND", "TASK ID", "BY", "PUBLISHED"), table) if table else "no dispatches yet")


@schedules.command()
@click.option("--min-beats", type=click.IntRange(min=0), default=health_checks.DEFAULT_MIN_BEATS, show_default=True,
              help="Fail when fewer beats are alive.")
@click.option("--max-late", default=f"{health_checks.DEFAULT_MAX_LATE_S:g}s", show_default=True,
              help="Fail when an enabled entry's next tick, or an in-flight tick's lease, is older than this.")
@json_option
@click.pass_context
@_handled
def health(ctx: click.Context, min_beats: int, max_late: str, as_json: bool) -> None:
    """Exit 0 when Redis answers, enough beats are alive and nothing is late; else 1,
    one line per failed check (for probes and cron checks)."""
    api = _api(ctx)
    result = health_checks.check(api.store, min_beats=min_beats, max_late_s=parse_interval(max_late),
                                 redis_url=api.settings.redis_url)
    _emit(as_json, result.as_dict(), lambda: "ok: " + f"{result.beats_alive} beat(s) alive, nothing late" if result.ok
          else "\n".join(_shown(line) for line in result.failures))
    sys.exit(0 if result.ok else 1)


def _age(ms: int | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f}s ago"


def _beats_table(instances: list[dict[str, Any]]) -> str:
    """Live beats as a table; beats that stopped heartbeating (not yet pruned) on one line."""
    live = [(i["id"], i["host"], i["pid"], i["version"], _age(i["heartbeat_age_ms"]), i["ticks_dispatched"], i["static_entries"],
             i["started"] or "-") for i in instances if i["alive"]]
    out = _table(("INSTANCE", "HOST", "PID", "VERSION", "HEARTBEAT", "TICKS SENT", "STATIC", "STARTED"), live) if live else "no beat alive"
    dead = [f"{_shown(i['id'])} (last heartbeat {_age(i['heartbeat_age_ms'])})" for i in instances if not i["alive"]]
    if dead:
        out += f"\nstopped heartbeating, not counted: {', '.join(dead)}"
    return out


@schedules.command()
@json_option
@click.pass_context
@_handled
def instances(ctx: click.Context, as_json: bool) -> None:
    """Live beats: host, pid, version, last heartbeat's age, ticks sent."""
    rows = [i.as_dict() for i in _api(ctx).instances()]
    _emit(as_json, rows, lambda: _beats_table(rows))


@schedules.command()
@json_option
@click.pass_context
@_handled
def status(ctx: click.Context, as_json: bool) -> None:
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

    def human() -> str:
        now = data["now_ms"]
        lines = [f"redis {data['redis']}  keys {{{data['prefix']}}}:*", "", _beats_table(data["instances"]), ""]
        soon = [(d["name"], _ago(d["tick_ms"], now)) for d in data["due_next_minute"]]
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
    app = wsgi_app(ctx.obj.app, token=token, show_args=show_args, entry_series=entry_series)
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


@schedules.command(name="export")
@click.pass_context
@_handled
def export_(ctx: click.Context) -> None:
    """Write every entry as JSON to stdout (for `import`)."""
    click.echo(json.dumps(export(_api(ctx).store), indent=2, sort_keys=True))


@schedules.command(name="import")
@click.argument("file", type=click.File("r"))
@click.option("--dry-run", is_flag=True, help="Check and show, write nothing.")
@json_option
@click.pass_context
@_handled
def import_(ctx: click.Context, file: Any, dry_run: bool, as_json: bool) -> None:
    """Load entries written by `export` (idempotent; keeps each entry's phase)."""
    try:
        data = loads(file.read())
    except ImportRefused as exc:
        raise Failure(2, f"{file.name}: {exc}; nothing was written") from None
    report = import_export(_api(ctx).store, data, dry_run=dry_run)
    _emit(as_json, report.as_dict(), lambda: _table(("NAME", "RESULT"), sorted(report.results.items())))


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
    conf = ctx.obj.app.conf
    prefix = redbeat_prefix or conf.get("redbeat_key_prefix") or "redbeat:"
    url = redbeat_url or conf.get("redbeat_redis_url") or api.settings.redis_url
    source = redis.Redis.from_url(url, socket_timeout=10)
    try:
        report = import_redbeat(api.store, source, prefix, api.settings.timezone, dry_run=dry_run)
    finally:
        source.close()
    rows = sorted(report.results.items()) + [(k, f"NOT CONVERTED: {v}") for k, v in sorted(report.skipped.items())]
    _emit(as_json, report.as_dict(), lambda: _table(("ENTRY", "RESULT"), rows) if rows else f"no celery-redbeat entries under {prefix!r}")
    if report.skipped:
        sys.exit(2)
