"""``Schedules(app)``: change entries at runtime, from any process, while beats run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery

from . import registry
from .config import Settings
from .connection import Client, connect
from .definitions import DefinitionError, EntryDef, build, check_name
from .schedules import Schedule, ms_to_datetime
from .store import RedisStore


@dataclass
class Entry:
    """One stored entry as the API reports it."""

    name: str
    task: str
    schedule: Schedule
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    enabled: bool
    next_tick: datetime | None  #: None when paused or finished
    last_tick: datetime | None
    total_runs: int
    source: str  #: "static" (a beat_schedule) or "api"
    created_at: datetime | None
    updated_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        def iso(d: datetime | None) -> str | None:
            return None if d is None else d.isoformat()

        return {
            "name": self.name,
            "task": self.task,
            "schedule": self.schedule.human(),
            "schedule_spec": self.schedule.to_json(),
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "enabled": self.enabled,
            "next_tick": iso(self.next_tick),
            "last_tick": iso(self.last_tick),
            "total_runs": self.total_runs,
            "source": self.source,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


def _entry(name: str, raw_def: bytes | None, raw_state: bytes | None, score: int | None) -> Entry | None:
    st = registry.parse_state(raw_state)
    if raw_def is None or st is None:
        return None
    try:
        d = EntryDef.from_json(name, raw_def)
    except DefinitionError:
        return None

    def dt(ms: int | None) -> datetime | None:
        return None if ms is None else ms_to_datetime(ms)

    return Entry(
        name=name,
        task=d.task,
        schedule=d.schedule,
        args=d.args,
        kwargs=d.kwargs,
        options=d.options,
        enabled=st.enabled,
        next_tick=dt(score),
        last_tick=dt(st.last),
        total_runs=st.runs,
        source=st.source,
        created_at=dt(st.created_ms),
        updated_at=dt(st.updated_ms),
    )


class Schedules:
    """Read and change one app's entries. Safe to call concurrently with running beats."""

    def __init__(self, app: Celery, client: Client | None = None) -> None:
        self.app = app
        self.settings = Settings.from_app(app)
        self._client = client
        self._store: RedisStore | None = None

    @property
    def store(self) -> RedisStore:
        if self._store is None:
            if self._client is None:
                self._client = connect(self.settings.topology)
            self._store = RedisStore(self._client, self.settings.key_prefix)
        return self._store

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
        return _entry(name, *self.store.read_one(name))

    def list(self) -> list[Entry]:
        defs, states, due = self.store.read_all()
        out = [_entry(n, defs.get(n), states.get(n), due.get(n)) for n in sorted(set(defs) | set(states))]
        return [e for e in out if e is not None]

    def remove(self, name: str) -> bool:
        """Remove an entry; True if it existed. Ticks already claimed are still published."""
        check_name(name)
        return self.store.remove([name]) > 0

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
