"""``Schedules(app)``: read and change entries at runtime, from any process, while beats run."""

from __future__ import annotations

import builtins
import os
import socket
from typing import Any

from celery import Celery

from . import registry
from .config import Settings
from .connection import Client, connect
from .definitions import EntryDef, build, check_name
from .dispatch import publish
from .schedules import every
from .store import Ack, RedisStore, member
from .views import Dispatch, Entry, Instance, entry_from_records

__all__ = ["Schedules", "EntryNotFound", "Entry", "Dispatch", "Instance"]


class EntryNotFound(KeyError):
    """No entry of that name (or its records are unreadable)."""

    def __str__(self) -> str:
        return f"no entry named {self.args[0]!r}"


class Schedules:
    """Read and change one app's entries. Safe to call concurrently with running beats."""

    def __init__(self, app: Celery, client: Client | None = None) -> None:
        self.app = app
        self.settings = Settings.from_app(app)
        self._client = client
        self._store: RedisStore | None = None
        self.caller = f"api@{socket.gethostname()}:{os.getpid()}"

    @property
    def store(self) -> RedisStore:
        if self._store is None:
            if self._client is None:
                self._client = connect(self.settings.topology)
            self._store = RedisStore(self._client, self.settings.key_prefix)
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
    ) -> str:
        """Create or change an entry; returns created, updated, unchanged, paused or resumed.

        Refuses bad input with DefinitionError before anything is written.
        """
        entry = build(name, task, schedule, args, kwargs, options, default_tz=self.settings.timezone)
        return registry.upsert(self.store, [entry], "api", enabled=bool(enabled))[name]

    def get(self, name: str) -> Entry | None:
        check_name(name)
        return entry_from_records(name, *self.store.read_one(name))

    def list(self) -> list[Entry]:
        defs, states, due = self.store.read_all()
        out = [entry_from_records(n, defs.get(n), states.get(n), due.get(n)) for n in sorted(set(defs) | set(states))]
        return [e for e in out if e is not None]

    def remove(self, name: str) -> bool:
        """Remove an entry; True if it existed. Ticks already claimed are still published."""
        check_name(name)
        return self.store.remove([name]) > 0

    def _stored(self, name: str) -> tuple[EntryDef, registry.State, int | None]:
        check_name(name)
        raw_def, raw_state, score = self.store.read_one(name)
        st = registry.parse_state(raw_state)
        if raw_def is None or st is None:
            raise EntryNotFound(name)
        return EntryDef.from_json(name, raw_def), st, score

    def pause(self, name: str) -> str:
        """Stop dispatching ``name`` until resumed; returns paused or unchanged."""
        entry, st, _ = self._stored(name)
        return registry.upsert(self.store, [entry], st.source, enabled=False)[name]

    def resume(self, name: str, from_now: bool = True) -> str:
        """Dispatch ``name`` again; returns resumed or unchanged.

        ``from_now`` (the default) continues the schedule with its next tick
        after now, on its own phase, so a long pause causes no burst; with
        False the ticks missed while paused follow the misfire policy.
        """
        entry, st, _ = self._stored(name)
        return registry.upsert(self.store, [entry], st.source, enabled=True, from_now=from_now)[name]

    # -- dispatching ------------------------------------------------------
    def trigger(self, name: str) -> str:
        """Dispatch ``name`` now, outside its schedule; returns the task id.

        The run is claimed like a tick (in flight, under a lease) at a tick
        that is never one of the schedule's own, so it cannot collide with a
        live tick. If this process dies before publishing, a beat publishes it.
        """
        for _ in range(registry.ATTEMPTS):
            entry, st, score = self._stored(name)
            sched = entry.schedule
            if isinstance(sched, every):
                step, anchor = sched.interval_ms, score or st.hold or st.last or sched.start_ms or 0
            else:
                step, anchor = 1000, 0  # pattern ticks fall on whole seconds
            tick = self.store.trigger(name, st.version, step, anchor, self.settings.lease_ms)
            if tick is None:
                continue  # changed meanwhile; read it again
            m = member(name, tick)
            try:
                task_id = publish(self.app, entry, self.settings.key_prefix, tick, trigger=True)
            except Exception:
                self.store.ack([Ack(m, "", "x")], self.caller)  # cancelled: nothing was sent
                raise
            self.store.ack([Ack(m, task_id, "t")], self.caller)
            return task_id
        raise RuntimeError(f"entry {name!r} kept changing; trigger not sent")

    def history(self, name: str, limit: int = 20) -> builtins.list[Dispatch]:
        """The latest dispatches of ``name``, newest first (at most 100 are kept)."""
        check_name(name)
        return [Dispatch.from_record(r) for r in self.store.history(name, limit)]

    # -- beats --------------------------------------------------------------
    def instances(self) -> builtins.list[Instance]:
        """Beat instances registered with the store (live ones, and expired ones not yet pruned)."""
        now, rows = self.store.instances()
        return [Instance.from_row(now, *row) for row in rows]

    def status(self) -> dict[str, Any]:
        """An overview for operators: instances, what is due soon, what is in flight, what is late."""
        now, _ = self.store.snapshot([])
        due_soon = self.store.due_between(0, now + 60_000)
        late = [(n, t) for n, t in due_soon if t <= now]
        inflight = self.store.inflight()
        return {
            "now_ms": now,
            "instances": [i.as_dict() for i in self.instances()],
            "due_next_minute": [{"name": n, "tick_ms": t, "in_ms": t - now} for n, t in due_soon if t > now],
            "in_flight": [
                {"name": m.split(":", 1)[1], "tick_ms": int(m.split(":", 1)[0]), "lease_left_ms": deadline - now}
                for m, deadline in inflight
            ],
            "most_late": None if not late else {"name": late[0][0], "tick_ms": late[0][1], "late_ms": now - late[0][1]},
        }

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
