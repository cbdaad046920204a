"""Registering and changing entries: the decisions around the upsert script.

The rules that keep registration idempotent and monotonic live here:

* same definition: nothing is written (N beats starting at once change nothing);
* changed arguments or options, same schedule: the next tick is kept;
* changed schedule: the next tick is recomputed from the server's "now";
* a paused entry stays paused unless the caller says otherwise; resuming
  continues the schedule from now (no burst of missed runs).

Each write is a compare-and-set on the entry's version; a conflict means
someone else changed it in between, so we re-read and decide again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .definitions import EntryDef
from .store import RedisStore, UpsertItem

CHUNK = 500
ATTEMPTS = 20


@dataclass
class State:
    version: int
    definition_hash: str
    schedule_hash: str
    runs: int
    last: int | None
    hold: int | None
    enabled: bool
    done: bool
    source: str
    created_ms: int | None
    updated_ms: int | None


def parse_state(raw: bytes | str | None) -> State | None:
    """A stored state record, or None when it is missing or not valid state."""
    if raw is None:
        return None
    try:
        data: Any = json.loads(raw)
        if not isinstance(data, dict) or isinstance(data.get("ver"), bool):
            return None
        return State(
            version=int(data["ver"]),
            definition_hash=str(data.get("dh", "")),
            schedule_hash=str(data.get("sh", "")),
            runs=int(data.get("runs", 0)),
            last=None if int(data.get("last", -1)) < 0 else int(data["last"]),
            hold=None if int(data.get("hold", -1)) < 0 else int(data["hold"]),
            enabled=bool(data.get("enabled", True)),
            done=bool(data.get("done", False)),
            source=str(data.get("src", "api")),
            created_ms=None if data.get("ctime") is None else int(data["ctime"]),
            updated_ms=None if data.get("mtime") is None else int(data["mtime"]),
        )
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, RecursionError, OverflowError):
        return None


@dataclass
class Restore:
    """Where a newly created entry starts when it comes from elsewhere (import)."""

    next: int | None  #: its next tick; None: computed from now as for a new entry
    runs: int = 0
    last: int | None = None
    enabled: bool = True


def _decide(
    entry: EntryDef,
    raw_state: bytes | None,
    score: bytes | None,
    now: int,
    source: str,
    enabled: bool | None,
    from_now: bool = True,
    restore: Restore | None = None,
) -> tuple[str, UpsertItem | None]:
    """What to write for one entry, given its stored state; (outcome, item or None)."""
    st = parse_state(raw_state)
    dh, sh = entry.definition_hash, entry.schedule_hash

    def item(expected: int | None | str, nxt: int | str | None, on: bool, runs: int | None = None, last: int | None = None) -> UpsertItem:
        return UpsertItem(entry.name, expected, entry.to_json(), dh, sh, source, nxt, on, runs, last)

    if st is None:
        expected: int | str | None = None if raw_state is None else "!"
        if restore is not None:
            nxt = entry.schedule.first_after(now) if restore.next is None else restore.next
            return "created", item(expected, nxt, restore.enabled if enabled is None else enabled, restore.runs, restore.last)
        return "created", item(expected, entry.schedule.first_after(now), True if enabled is None else enabled)
    want = st.enabled if enabled is None else enabled
    resuming = want and not st.enabled
    if st.definition_hash == dh and want == st.enabled:
        if st.enabled and not st.done and score is None:
            # set aside as unreadable (a record edited by hand): writing it again repairs it
            return "repaired", item(st.version, entry.schedule.first_after(now), want)
        if source == "static" and st.source != "static":
            # a beat_schedule now declares an entry made through the API or an
            # import: it becomes static, so it is pruned once no config has it
            return "adopted", item(st.version, "keep", want)
        return "unchanged", None
    if st.schedule_hash != sh:
        return "updated", item(st.version, entry.schedule.first_after(now), want)
    if resuming and from_now and st.hold is not None:
        # continue the schedule from now, on its own phase: no burst of missed runs
        return "resumed", item(st.version, entry.schedule.at_or_after(st.hold, now + 1), want)
    outcome = "updated" if st.definition_hash != dh else ("resumed" if want else "paused")
    return outcome, item(st.version, "keep", want)


def upsert(
    store: RedisStore,
    entries: Sequence[EntryDef],
    source: str | Mapping[str, str],
    enabled: bool | None = None,
    *,
    from_now: bool = True,
    restore: Mapping[str, Restore] | None = None,
) -> dict[str, str]:
    """Write entries idempotently; returns name -> created/updated/unchanged/paused/resumed/adopted/repaired.

    ``source`` is "static" or "api", or one per entry name. ``restore`` gives
    entries that do not exist yet their next tick, runs and last tick.
    """
    results: dict[str, str] = {}
    for start in range(0, len(entries), CHUNK):
        pending = {e.name: e for e in entries[start : start + CHUNK]}
        for _ in range(ATTEMPTS):
            now, snap = store.snapshot(list(pending))
            items, outcomes = [], {}
            for name, entry in pending.items():
                src = source if isinstance(source, str) else source[name]
                outcome, it = _decide(entry, snap[name][0], snap[name][1], now, src, enabled, from_now, (restore or {}).get(name))
                if it is None:
                    results[name] = outcome
                else:
                    items.append(it)
                    outcomes[name] = outcome
            ok = store.upsert(items) if items else []
            pending = {it.name: pending[it.name] for it, won in zip(items, ok, strict=True) if not won}
            results.update({it.name: outcomes[it.name] for it, won in zip(items, ok, strict=True) if won})
            if not pending:
                break
        else:
            raise RuntimeError(f"could not write {', '.join(sorted(pending))}: changed concurrently {ATTEMPTS} times in a row")
    return results
