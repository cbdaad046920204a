"""``Schedules(app)``: read and change entries at runtime, from any process, while beats run."""

from __future__ import annotations

import builtins
import gc
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery
from kombu.exceptions import EncodeError

from . import __version__, registry
from .config import Settings
from .connection import STORE_ERRORS, Client, connect
from .definitions import DefinitionError, EntryDef, build, check_stored_name
from .dispatch import confirming, publish
from .engine import LayoutRefused
from .registry import EntryDamaged, EntryNotFound, StaticEntry
from .schedules import ScheduleError, iso
from .store import LAYOUT, RedisStore, State, split_member
from .trigger import trigger
from .views import Dispatch, Entry, Explained, Instance, entry_from_stored, explain

__all__ = ["Schedules", "EntryNotFound", "EntryDamaged", "StaticEntry", "Entry", "Dispatch", "Instance"]


#: Keys an ``upsert_many`` item may have, and how many entries one registry.upsert call
#: writes (each in chunks of registry.CHUNK, one written while the next is read).
_MANY_KEYS = frozenset({"name", "task", "schedule", "args", "kwargs", "options", "enabled"})
MANY_CHUNK = 50_000


class Schedules:
    """Read and change one app's entries. Safe to call concurrently with running beats."""

    def __init__(self, app: Celery, client: Client | None = None) -> None:
        self.app = app
        self.settings = Settings.from_app(app)
        self._client = client
        self._store: RedisStore | None = None
        self._layout_checked = False
        self.caller = f"api@{socket.gethostname()}:{os.getpid()}"

    @property
    def store(self) -> RedisStore:
        """The store, once its key layout is known to be this version's (checked at the
        first access that reaches Redis: an unreachable Redis is the next call's error)."""
        if self._store is None:
            if self._client is None:
                self._client = connect(self.settings.topology)
            self._store = RedisStore(self._client, self.settings.key_prefix)
        if not self._layout_checked:
            try:
                raw = self._store.client.hget(self._store.keys.meta, "layout")
            except STORE_ERRORS:
                return self._store
            layout = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            if layout is not None and layout != LAYOUT:  # another version's keys: touch nothing
                raise LayoutRefused(f"redbeat_safe: the keys under {{{self.settings.key_prefix}}}: use key layout {layout!r}, and "
                                    f"this version ({__version__}) knows layout {LAYOUT!r} only; use the version that wrote "
                                    "them (docs/upgrading.md)")
            self._layout_checked = True
        return self._store

    # -- definitions ------------------------------------------------------
    def upsert(
        self,
        name: str,
        task: str,
        schedule: Any,
        args: Any = (),
        kwargs: Any = None,
        options: Any = None,
        enabled: bool = True,
        force: bool = False,
    ) -> str:
        """Create or change an entry; returns created, updated, unchanged, paused or resumed.

        Refuses bad input with DefinitionError before anything is written, a
        schedule that could never fire again (its ``end`` has passed) with
        ScheduleError, and a change to an entry that comes from a
        ``beat_schedule`` with StaticEntry unless ``force`` (a beat puts the
        ``beat_schedule`` definition back when it next starts).
        """
        entry = build(name, task, schedule, args, kwargs, options, default_tz=self.settings.timezone)
        now, found = self.store.snapshot([name])
        st = found[name].state
        changes = st is None or st.definition_hash != entry.definition_hash
        if changes and entry.schedule.first_after(now) is None:
            end = entry.schedule.end_ms
            raise ScheduleError(f"entry {name!r} would never fire: "
                                + (f"its end {iso(end)} has passed" if end is not None and end <= now else "no tick is left before its end"))
        static = st is not None and st.source == "static"
        if static and changes and not force:
            raise StaticEntry(name, "change")
        return registry.upsert(self.store, [entry], "static" if static else "api", enabled=bool(enabled))[name]

    def upsert_many(self, entries: Iterable[Mapping[str, Any]], *, force: bool = False) -> dict[str, int]:
        """Create or change many entries at once (a million one-off ``at`` runs, an import);
        returns how many were created, updated, unchanged, ... .

        Each item is a dict with ``name``, ``task`` and ``schedule``, and optionally
        ``args``, ``kwargs``, ``options`` and ``enabled`` (default True). Every item is
        validated first: one bad item refuses the whole call with DefinitionError naming
        it (and up to 19 more), and nothing is written. Then they are written in chunks,
        each chunk one snapshot read and one script call, each entry a compare-and-set
        as in ``upsert``. Entries of a ``beat_schedule`` are refused (StaticEntry) unless
        ``force``; a schedule that could never fire is refused like in ``upsert``.

        Python's cyclic garbage collector is paused for the call (and restored): it
        scanned the million live items again and again, a fifth of the time, and nothing
        made here forms a cycle."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._upsert_many(entries, force)
        finally:
            if collecting:
                gc.enable()

    def _upsert_many(self, entries: Iterable[Mapping[str, Any]], force: bool) -> dict[str, int]:
        built: dict[bool, list[EntryDef]] = {True: [], False: []}
        problems: list[str] = []
        names: set[str] = set()
        for position, item in enumerate(entries, 1):
            try:
                if not isinstance(item, Mapping):
                    raise DefinitionError(f"item #{position}: a dict with name, task and schedule, not {type(item).__name__}")
                unknown = set(item) - _MANY_KEYS
                if unknown:
                    raise DefinitionError(f"item #{position}: unknown key(s) {', '.join(sorted(map(repr, unknown)))}")
                entry = build(item.get("name"), item.get("task"), item.get("schedule"), item.get("args", ()), item.get("kwargs"),
                              item.get("options"), default_tz=self.settings.timezone)
                if entry.name in names:
                    raise DefinitionError(f"entry {entry.name!r} appears twice")
                names.add(entry.name)
                built[bool(item.get("enabled", True))].append(entry)
            except (DefinitionError, ScheduleError, TypeError) as exc:
                problems.append(str(exc))
                if len(problems) >= 20:
                    break
        if problems:
            raise DefinitionError("refused, nothing was written: " + "; ".join(problems))
        now = self.store.now()
        static = set() if force else {n for n in self.store.static_names() if n in names}
        for group in built.values():  # what upsert refuses, refused for all before anything is written
            for e in group:
                if e.name in static and not force:
                    raise StaticEntry(e.name, "change")
                if e.schedule.first_after(now) is None:
                    raise ScheduleError(f"entry {e.name!r} would never fire: no tick is left before its end")
        counts: dict[str, int] = {}
        for enabled, group in built.items():
            for start in range(0, len(group), MANY_CHUNK):
                sources = {e.name: "static" if e.name in static else "api" for e in group[start:start + MANY_CHUNK]}
                for outcome in registry.upsert(self.store, group[start:start + MANY_CHUNK], sources, enabled=enabled).values():
                    counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def get(self, name: str) -> Entry | None:
        """The entry, or None. A damaged entry is returned with ``problem`` set."""
        check_stored_name(name)
        _, found = self.store.snapshot([name], full=True)
        return entry_from_stored(found[name])

    def list(self) -> builtins.list[Entry]:
        """Every entry, damaged ones included (with ``problem`` set), by name."""
        _, rows = self.store.read(self.store.names())
        return [e for e in map(entry_from_stored, rows) if e is not None]

    def remove(self, name: str, force: bool = False) -> bool:
        """Remove an entry, damaged or not; True if it existed, False if there was none.
        Ticks already claimed are still published. One from a ``beat_schedule`` raises
        StaticEntry unless ``force``: a beat creates it again when it next starts."""
        check_stored_name(name)
        _, found = self.store.snapshot([name])
        st = found[name].state
        if st is not None and st.source == "static" and not force:
            raise StaticEntry(name, "remove")
        return self.store.remove([name]) > 0

    def _stored(self, name: str) -> tuple[EntryDef, State]:
        entry, st, _ = registry.read_entry(self.store, name)
        return entry, st

    def pause(self, name: str) -> str:
        """Stop dispatching ``name`` until resumed; returns paused or unchanged."""
        entry, st = self._stored(name)
        return registry.upsert(self.store, [entry], st.source, enabled=False)[name]

    def resume(self, name: str, from_now: bool = True) -> str:
        """Dispatch ``name`` again; returns resumed or unchanged.

        ``from_now`` (the default) continues the schedule with its next tick
        after now, on its own phase, so a long pause causes no burst; with
        False the ticks missed while paused follow the misfire policy.
        """
        entry, st = self._stored(name)
        outcome = registry.upsert(self.store, [entry], st.source, enabled=True, from_now=from_now)[name]
        if outcome == "resumed" and from_now and st.hold is not None:
            self._note_paused(entry, st.hold)
        return outcome

    def _note_paused(self, entry: EntryDef, hold: int) -> None:
        """The run ledger's record of the ticks a resumed entry missed while paused (for `why`).
        Only a note: failing to write it changes nothing."""
        try:
            now = self.store.now()
            sched = entry.schedule
            nxt = sched.at_or_after(hold, now + 1)
            last = sched.latest_ticks(hold, (nxt or now + 1) - 1, 1)
            count = sched.count_ticks(hold, (nxt or now + 1) - 1, 1_000_000)
            if count and last:
                self.store.run_event(entry.name, hold, "", "skipped", "paused", count, last[-1])
        except Exception:  # noqa: BLE001, S110 - a note for operators, never a reason to fail a resume
            pass

    def why(self, name: str, limit: int = 20) -> builtins.list[Explained]:
        """What became of the latest ticks of ``name``, newest first, one line each:
        published (by whom, how late), re-published, triggered, and what the workers
        reported (succeeded, failed with what, expired, revoked), or skipped and why
        (paused, coalesced, missed, overlap, replaced). Needs the run ledger in the
        workers for outcomes (docs/runs.md); without it the publishing side is shown."""
        check_stored_name(name)
        entry = self.get(name)
        if entry is None:
            raise EntryNotFound(name)
        return explain(entry, self.history(name, 100), self.store.runs(name, 100), limit)

    # -- dispatching ------------------------------------------------------
    def trigger(self, name: str, request_id: str | None = None) -> str:
        """Dispatch ``name`` now, outside its schedule, once; returns the task id.

        The run is claimed like a tick (in flight, under a lease) at a tick
        that is never one of the schedule's own, so it cannot collide with a
        live tick. If this process dies before publishing, a beat publishes it.
        Calling again with the same ``request_id`` (for a day) returns the same
        task id and never runs it twice, so a caller that got an exception can
        simply retry; without one, each call is a new run.
        """
        app, prefix = self.app, self.settings.key_prefix

        options = confirming(app)

        def send(entry: EntryDef, entry_name: str, tick: int) -> None:
            try:
                if not options:
                    publish(app, entry, prefix, tick, trigger=True)
                    return
                with app.connection_for_write(transport_options=options) as conn:
                    publish(app, entry, prefix, tick, producer=app.amqp.Producer(conn), trigger=True)
            except (TypeError, EncodeError) as exc:  # the task's signature or the serializer refuses: retrying cannot help
                raise DefinitionError(f"entry {entry_name!r}: the task refuses its arguments ({exc}); the trigger was withdrawn, "
                                      "nothing was sent") from exc

        return trigger(self.store, name, send, lease_ms=self.settings.lease_ms, caller=self.caller, request_id=request_id)

    def history(self, name: str, limit: int = 20) -> builtins.list[Dispatch]:
        """The latest dispatches of ``name``, newest first (at most 100 are kept)."""
        check_stored_name(name)
        found = [d for d in (Dispatch.from_record(r) for r in self.store.history(name, limit)) if d is not None]
        if found:  # what the workers reported of each (the run ledger, when the workers keep one)
            runs = dict(self.store.runs(name, 100))
            found = [d.with_run(runs.get(d.tick_ms)) for d in found]
        return found

    # -- beats --------------------------------------------------------------
    def instances(self) -> builtins.list[Instance]:
        """Beat instances registered with the store (live ones, and expired ones not yet pruned)."""
        now, rows = self.store.instances()
        return [Instance.from_row(now, *row) for row in rows]

    def status(self) -> dict[str, Any]:
        """An overview for operators: instances, what is due soon, what is in flight, what is late, what is damaged."""
        now = self.store.now()
        due_soon = self.store.due_between(0, now + 60_000)
        late = [(n, t) for n, t in due_soon if t <= now]
        inflight = self.store.inflight()
        return {
            "now_ms": now,
            "instances": [i.as_dict() for i in self.instances()],
            "due_next_minute": [{"name": n, "tick_ms": t, "in_ms": t - now} for n, t in due_soon if t > now],
            "in_flight": [_in_flight(m, deadline, now) for m, deadline in inflight],
            "most_late": None if not late else {"name": late[0][0], "tick_ms": late[0][1], "late_ms": now - late[0][1]},
            "damaged": [{"name": e.name, "problem": e.problem} for e in self.list() if e.problem],
        }

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _in_flight(member: str, deadline: int, now: int) -> dict[str, Any]:
    """One in-flight tick for ``status``; a member that is not "<tick>:<entry>"
    (planted or damaged) is listed with tick_ms None and a problem, not raised on:
    a beat drops it once its lease deadline passes."""
    parsed = split_member(member)
    if parsed is None:
        return {"name": member, "tick_ms": None, "lease_left_ms": deadline - now,
                "problem": "not a <tick>:<entry> record; a beat drops it when its lease deadline passes"}
    return {"name": parsed[1], "tick_ms": parsed[0], "lease_left_ms": deadline - now}
