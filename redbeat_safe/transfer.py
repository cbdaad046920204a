"""Backup and migration: export/import of our own entries, and import from celery-redbeat.

Imports keep phase: a new entry starts at the next tick its source would have
run (and with its run count and last run), so nothing fires early or twice.
Everything is validated before anything is written.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import redis
from celery import schedules as cs

from . import registry
from .definitions import DefinitionError, EntryDef, build, canonical_json, check_name
from .registry import Restore
from .schedules import MAX_TICK_MS, ScheduleError, ms_to_datetime, to_ms
from .store import RedisStore

FORMAT = "redbeat_safe-export"
VERSION = 1


class ImportRefused(ValueError):
    """The input cannot be imported; nothing was written."""


@dataclass
class Report:
    results: dict[str, str] = field(default_factory=dict)  #: name -> created/updated/unchanged/...
    skipped: dict[str, str] = field(default_factory=dict)  #: name -> why it was not converted
    details: dict[str, str] = field(default_factory=dict)  #: name -> what a created entry is (schedule, next tick, paused)

    def as_dict(self) -> dict[str, Any]:
        return {"results": self.results, "skipped": self.skipped, "details": self.details}

    def rows(self) -> list[tuple[str, str]]:
        """(name, what happened) for a table, converted entries first."""
        done = [(k, v + (f": {self.details[k]}" if k in self.details else "")) for k, v in sorted(self.results.items())]
        return done + [(k, f"NOT CONVERTED: {v}") for k, v in sorted(self.skipped.items())]


def export(store: RedisStore) -> dict[str, Any]:
    """Every readable entry: its definition exactly as stored, and where it stands.

    A damaged entry (``Schedules.list`` shows which and why) is left out.
    """
    now, rows = store.read(store.names())
    entries = []
    for row in rows:
        st = row.state
        if st is None or row.definition is None or row.stored_hash != st.definition_hash:
            continue
        try:
            definition = json.loads(row.definition)
        except (ValueError, UnicodeDecodeError, RecursionError):  # damaged or planted: not exported
            continue
        entries.append({
            "name": row.name,
            "definition": definition,
            "enabled": st.enabled,
            "source": st.source,
            "next_tick_ms": row.score if row.score is not None else st.hold,
            "last_tick_ms": st.last,
            "runs": st.runs,
        })
    return {"format": FORMAT, "version": VERSION, "prefix": store.keys.prefix, "exported_at_ms": now, "entries": entries}


#: What a dry run says for each outcome the real run would report.
WOULD = {"created": "would create", "updated": "would update", "paused": "would pause", "resumed": "would resume",
         "adopted": "would adopt", "repaired": "would repair", "unchanged": "unchanged"}


def write_entries(store: RedisStore, entries: list[EntryDef], sources: dict[str, str], restore: dict[str, Restore],
           dry_run: bool = False) -> dict[str, str]:
    """Write (or, ``dry_run``, decide without writing) the entries; a dry run reports
    what the real run would report now ("would create", "unchanged", ...)."""
    results: dict[str, str] = {}
    for enabled in (True, False):
        group = [e for e in entries if restore[e.name].enabled is enabled]
        if group:
            results.update(registry.upsert(store, group, sources, enabled=enabled, restore=restore, dry_run=dry_run))
    return {name: WOULD.get(outcome, outcome) for name, outcome in results.items()} if dry_run else results


#: The fields of one exported entry; anything else is refused (a typo would be lost silently).
ENTRY_FIELDS = ("name", "definition", "enabled", "source", "next_tick_ms", "last_tick_ms", "runs")
#: Runs are counted exactly in Lua and in JSON only up to 2**53.
MAX_RUNS = 2**53


def _no_constant(name: str) -> Any:
    raise ImportRefused(f"the file contains {name}, which is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ImportRefused(f"an object in the file has the key {key!r} twice")
        out[key] = value
    return out


def loads(text: str) -> Any:
    """Parse an import file as strict JSON: no NaN or Infinity (Python's reader takes
    them), no key twice in one object; too deep a file is refused, not a crash."""
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except ImportRefused:
        raise
    except RecursionError:
        raise ImportRefused("the file is nested too deeply to be an export") from None
    except ValueError as exc:
        raise ImportRefused(f"the file is not JSON: {exc}") from None


def _tick(value: Any, field_name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TICK_MS:
        raise ValueError(f"{field_name} must be whole ms between 0 and {MAX_TICK_MS} (year 9999) or null, not {value!r:.40}")
    return value


def _entry(item: Any) -> tuple[EntryDef, str, Restore]:
    """One exported entry, every field checked; ValueError names the field."""
    if not isinstance(item, dict):
        raise ValueError(f"an entry must be an object, not {type(item).__name__}")
    unknown = sorted(set(item) - set(ENTRY_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))} (known: {', '.join(ENTRY_FIELDS)})")
    if not isinstance(item.get("definition"), dict):
        raise ValueError(f"definition must be an object, not {type(item.get('definition')).__name__}")
    try:
        entry = EntryDef.from_json(item["name"], canonical_json(item["definition"]))
    except (ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"definition: {exc}") from None
    source = item.get("source", "api")
    if source not in ("static", "api"):
        raise ValueError(f"source must be 'static' or 'api', not {source!r:.40}")
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be true or false, not {enabled!r:.40}")
    runs = item.get("runs", 0)
    if runs is None:
        runs = 0
    if isinstance(runs, bool) or not isinstance(runs, int) or not 0 <= runs <= MAX_RUNS:
        raise ValueError(f"runs must be a whole number from 0 to 2**53, not {runs!r:.40}")
    nxt, last = _tick(item.get("next_tick_ms"), "next_tick_ms"), _tick(item.get("last_tick_ms"), "last_tick_ms")
    if nxt is not None and last is not None and nxt <= last:
        raise ValueError(f"next_tick_ms ({nxt}) must be after last_tick_ms ({last}): that tick already ran")
    return entry, source, Restore(next=nxt, runs=runs, last=last, enabled=enabled)


def import_export(store: RedisStore, data: Any, dry_run: bool = False, force: bool = False) -> Report:
    """Load a file written by export(); idempotent (a second import changes nothing).

    The whole file is checked first (every field of every entry, names unique);
    one problem refuses it with ImportRefused naming each bad entry and field,
    and nothing is written. So is a change to an entry that comes from a
    ``beat_schedule`` (a beat restores it when it next starts), unless ``force``.
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ImportRefused(f"not a redbeat_safe export (expected format {FORMAT!r}), nothing was written")
    if data.get("version") != VERSION:
        raise ImportRefused(f"unsupported export version {data.get('version')!r:.40}, nothing was written")
    items = data.get("entries", [])
    if not isinstance(items, list):
        raise ImportRefused(f"'entries' must be a list, not {type(items).__name__}; nothing was written")
    entries, sources, restore, problems = [], {}, {}, []
    counts = Counter(i.get("name") for i in items if isinstance(i, dict) and isinstance(i.get("name"), str))
    for position, item in enumerate(items, 1):
        name = item.get("name") if isinstance(item, dict) else None
        label = f"entry {name!r}" if isinstance(name, str) else f"entry #{position}"
        try:
            check_name(name)
            if counts[name] > 1:
                raise ValueError(f"appears {counts[name]} times in the file")
            entry, source, rest = _entry(item)
        except (DefinitionError, ValueError, TypeError) as exc:
            text = str(exc)
            problems.append(text if text.startswith(label) else f"{label}: {text}")
            continue
        entries.append(entry)
        sources[entry.name], restore[entry.name] = source, rest
    if problems:
        shown = "; ".join(dict.fromkeys(problems[:20])) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ImportRefused(f"{shown}; nothing was written")
    if not force:
        _refuse_static_changes(store, entries, sources, restore)
    report = Report()
    report.results = write_entries(store, entries, sources, restore, dry_run)
    return report


def _refuse_static_changes(store: RedisStore, entries: list[EntryDef], sources: dict[str, str], restore: dict[str, Restore]) -> None:
    """What ``add``, ``edit`` and ``remove`` refuse without --force, an import refuses too:
    changing an entry a ``beat_schedule`` defines lasts only until a beat next starts."""
    _, found = store.snapshot([e.name for e in entries])
    static = [e for e in entries if (st := found[e.name].state) is not None and st.source == "static"]
    if not static:
        return
    would = write_entries(store, static, sources, restore, dry_run=True)
    changed = sorted(e.name for e in static if would.get(e.name) != "unchanged")
    if changed:
        names = f"{', '.join(map(repr, changed[:20]))}{' and more' if len(changed) > 20 else ''}"
        which = f"entry {names} comes" if len(changed) == 1 else f"entries {names} come"
        raise ImportRefused(f"{which} from a beat_schedule: the import would change it only until a beat next starts and "
                            "registers its beat_schedule again; change the beat_schedule, or import with --force; nothing was written")


# -- celery-redbeat --------------------------------------------------------

def _decode(value: Any) -> Any:
    """celery-redbeat's JSON objects ({"__type__": ...}) into plain Python."""
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    decoded = {k: _decode(v) for k, v in value.items()}
    kind = decoded.pop("__type__", None)
    if kind == "datetime":
        zone = decoded.pop("timezone", "UTC")
        if isinstance(zone, (int, float)):
            tz: Any = timezone(timedelta(seconds=zone))
        else:
            from zoneinfo import ZoneInfo

            tz = ZoneInfo(zone)
        return datetime(tzinfo=tz, **decoded)
    if kind == "interval":
        return cs.schedule(run_every=decoded["every"], relative=bool(decoded.get("relative")))
    if kind == "crontab":
        return cs.crontab(**decoded)
    if kind is not None:
        raise ValueError(f"celery-redbeat {kind!r} schedules have no equivalent here")
    return decoded


def _redbeat_entry(raw_def: Any, raw_meta: Any, tz: str, now_ms: int) -> tuple[EntryDef, Restore]:
    d = _decode(json.loads(raw_def))
    meta = _decode(json.loads(raw_meta)) if raw_meta else {}
    name = str(d.get("name"))
    entry = build(name, d.get("task"), d.get("schedule"), d.get("args") or [], d.get("kwargs") or {}, d.get("options") or {}, default_tz=tz)
    last_run = meta.get("last_run_at")
    last_ms = to_ms(last_run, "last_run_at") if isinstance(last_run, datetime) else None
    sched = entry.schedule
    nxt: int | None
    if last_ms is None:
        nxt = now_ms  # celery-redbeat runs a never-run entry at once
    else:
        nxt = sched.next_after(last_ms)  # its due time: the next run after the last one
    runs = int(meta.get("total_run_count") or 0)
    # celery-redbeat writes last_run_at when it creates an entry: with no run counted it
    # is not a run (it sets the phase above, but shown as "last" it would be a lie)
    return entry, Restore(next=nxt, runs=runs, last=last_ms if runs else None, enabled=bool(d.get("enabled", True)))


def import_redbeat(store: RedisStore, source: redis.Redis, prefix: str, tz: str, dry_run: bool = False) -> Report:
    """Create entries equivalent to celery-redbeat's (its ``<prefix>:schedule`` zset and entry hashes)."""
    keys: list[Any] = source.zrange(prefix + ":schedule", 0, -1)
    now = store.now()
    entries, restore, report = [], {}, Report()
    for key in keys:
        label = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        label = label[len(prefix):] if label.startswith(prefix) else label  # its entry name
        raw_def, raw_meta = source.hmget(key, ["definition", "meta"])
        if raw_def is None:
            report.skipped[label] = "no definition field"
            continue
        try:
            entry, rest = _redbeat_entry(raw_def, raw_meta, tz, now)
        except (DefinitionError, ScheduleError, ValueError, TypeError, KeyError) as exc:
            report.skipped[label] = str(exc)
            continue
        if rest.next is None:
            report.skipped[label] = "its schedule has no future run"
            continue
        entries.append(entry)
        restore[entry.name] = rest
    report.results = write_entries(store, entries, {e.name: "api" for e in entries}, restore, dry_run)
    for e in entries:  # what the outcome alone does not say: the schedule, the next tick, a paused import
        rest = restore[e.name]
        if report.results[e.name] in ("created", "would create"):
            zone = ZoneInfo(getattr(e.schedule, "tz_name", None) or tz)  # the entry's zone, as list shows it
            when = ms_to_datetime(rest.next or 0).astimezone(zone).isoformat(sep=" ", timespec="seconds")
            report.details[e.name] = (f"{e.schedule.human()}, next {when}"
                                      + ("" if rest.enabled else ", paused (disabled in celery-redbeat)"))
    return report
