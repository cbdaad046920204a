"""What the API reports: entries, dispatches and beat instances, as plain data."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeGuard

from .definitions import DefinitionError, EntryDef
from .schedules import Schedule, ms_to_datetime
from .store import Stored

KINDS = {"s": "scheduled", "r": "republished", "t": "triggered", "x": "refused"}


def _dt(ms: int | None) -> datetime | None:
    try:
        return None if ms is None else ms_to_datetime(ms)
    except OverflowError:  # beyond year 9999: not a time a record may hold
        return None


def _whole(value: Any) -> TypeGuard[int]:
    """A JSON integer (not a bool, not a float) a time can be made of."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def printable(value: Any) -> str:
    """Text safe to encode as UTF-8: bytes from Redis that are not UTF-8 (kept as lone
    surrogates) shown escaped (``\\xff``), as the CLI shows them."""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _ms(d: datetime) -> int:
    return int(d.timestamp() * 1000)


def _iso(d: datetime | None) -> str | None:
    return None if d is None else d.isoformat()


@dataclass
class Entry:
    """One stored entry. A damaged one is listed too, with ``problem`` saying what
    is wrong; its unreadable parts are None (task, schedule) or empty."""

    name: str
    task: str | None
    schedule: Schedule | None
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    enabled: bool
    next_tick: datetime | None  #: None when paused, finished or set aside
    last_tick: datetime | None
    total_runs: int
    source: str  #: "static" (a beat_schedule) or "api"; "?" when its state is unreadable
    created_at: datetime | None
    updated_at: datetime | None  #: when the definition or the enabled flag last changed
    problem: str | None = None  #: what is wrong with its records (beats skip it until it is repaired); None when healthy

    @property
    def finished(self) -> bool:
        return self.enabled and self.next_tick is None and self.problem is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "schedule": None if self.schedule is None else self.schedule.human(),
            "schedule_spec": None if self.schedule is None else self.schedule.to_json(),
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "enabled": self.enabled,
            "finished": self.finished,
            "next_tick": _iso(self.next_tick),
            "last_tick": _iso(self.last_tick),
            "total_runs": self.total_runs,
            "source": self.source,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "problem": self.problem,
        }


def entry_from_stored(stored: Stored) -> Entry | None:
    """An Entry from what is stored for its name (damaged or not); None when nothing is."""
    if not stored.exists:
        return None
    problem = stored.problem
    d = None
    if stored.definition is not None:
        try:
            d = EntryDef.from_json(stored.name, stored.definition)
        except DefinitionError as exc:
            problem = problem or f"its definition cannot be read: {exc}"
    st = stored.state
    return Entry(
        name=stored.name,
        task=None if d is None else d.task,
        schedule=None if d is None else d.schedule,
        args=[] if d is None else d.args,
        kwargs={} if d is None else d.kwargs,
        options={} if d is None else d.options,
        enabled=False if st is None else st.enabled,
        next_tick=_dt(stored.score),
        last_tick=None if st is None else _dt(st.last),
        total_runs=0 if st is None else st.runs,
        source="?" if st is None else st.source,
        created_at=None if st is None else _dt(st.created_ms),
        updated_at=None if st is None else _dt(st.updated_ms),
        problem=problem,
    )


@dataclass
class Dispatch:
    """One published tick, as remembered in the entry's bounded history."""

    tick: datetime
    tick_ms: int
    task_id: str
    instance: str
    published_at: datetime
    kind: str  #: scheduled, republished (by the reaper), triggered, refused (the task would not take it)
    #: what the workers reported (the run ledger): received, started, succeeded, failed, retried, revoked,
    #: expired; None when no worker reported it (no ledger in the workers, or still queued)
    outcome: str | None = None
    duration_ms: int | None = None  #: from the start to the end of the run
    worker: str | None = None  #: "host:pid" of the worker process that ran it
    exception: str | None = None  #: the exception type of a failed (or retried) run

    def outcome_text(self) -> str:
        """The run's outcome in a few words ("succeeded in 2.51s", "failed (ValueError) in 0.10s",
        "-" when no worker reported it): the CLI's and the dashboard's column."""
        if self.outcome is None:
            return "-"
        took = f" in {self.duration_ms / 1000:.2f}s" if self.duration_ms is not None else ""
        return f"{self.outcome}{f' ({self.exception})' if self.exception else ''}{took}"

    def with_run(self, rec: dict[str, Any] | None) -> Dispatch:
        """This dispatch with its run ledger record's outcome."""
        if not isinstance(rec, dict) or not isinstance(rec.get("state"), str):
            return self
        ms = rec.get("ms")
        return dataclasses.replace(self, outcome=rec["state"], duration_ms=ms if _whole(ms) else None,
                                   worker=str(rec["worker"]) if rec.get("worker") else None,
                                   exception=str(rec["exc"]) if rec.get("exc") else None)

    @classmethod
    def from_record(cls, raw: bytes) -> Dispatch | None:
        """None for a record this version did not write (planted, damaged, truncated):
        a history is read by operators, and one bad record must not hide the rest."""
        try:
            data = json.loads(raw)
            tick, at, kind = data["tick"], data["at"], data["kind"]
            if not (_whole(tick) and _whole(at) and isinstance(kind, str) and isinstance(data["id"], str)):
                return None
            tick_at, published = _dt(tick), _dt(at)
            if tick_at is None or published is None:
                return None
            return cls(tick=tick_at, tick_ms=tick, task_id=data["id"], instance=str(data["by"]), published_at=published,
                       kind=KINDS.get(kind, kind))
        except (ValueError, TypeError, KeyError, RecursionError):  # UnicodeDecodeError is a ValueError
            return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tick": _iso(self.tick),
            "tick_ms": self.tick_ms,
            "task_id": self.task_id,
            "instance": self.instance,
            "published_at": _iso(self.published_at),
            "kind": self.kind,
            "outcome": self.outcome,
            "duration_ms": self.duration_ms,
            "worker": self.worker,
            "exception": self.exception,
        }


@dataclass
class Explained:
    """One tick of `why`: its time and what became of it, in a sentence."""

    tick: datetime
    tick_ms: int
    what: str  #: published, republished, triggered, refused, skipped, buffered, finished
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"tick": _iso(self.tick), "tick_ms": self.tick_ms, "what": self.what, "detail": self.detail}


def _secs(ms: Any) -> str:
    return f"{ms / 1000:.2f} s" if _whole(ms) else "?"


def _outcome(rec: dict[str, Any] | None) -> str:
    """What the workers said of a published tick, as a clause."""
    if not isinstance(rec, dict) or not isinstance(rec.get("state"), str):
        return "no worker reported it (the run ledger is off in the workers, or it is still queued)"
    state, on = rec["state"], f" on {rec['worker']}" if rec.get("worker") else ""
    exc = f" ({rec['exc']})" if rec.get("exc") else ""
    if state == "succeeded":
        return f"succeeded in {_secs(rec.get('ms'))}{on}"
    if state == "failed":
        return f"failed{exc} after {_secs(rec.get('ms'))}{on}"
    if state == "retried":
        return f"failed{exc} and was retried ({rec.get('retries', 1)} so far){on}"
    if state == "expired":
        return "expired: no worker ran it before its expiry"
    if state == "revoked":
        return "revoked before it finished"
    if state == "started":
        return f"running{on} since {_iso(_dt(rec['started'])) if _whole(rec.get('started')) else '?'} (no end reported yet)"
    if state == "received":
        return f"received{on}, not started yet"
    return str(state)


_SKIPPED = {"overlap": "the entry's previous run was still queued or running (overlap=skip)",
            "replaced": "a newer tick replaced it (overlap=replace)",
            "coalesced": "missed while no beat ran; coalesced into one run",
            "missed": "missed while no beat ran; the misfire policy left it out",
            "paused": "the entry was paused"}


def explain(entry: Entry, history: list[Dispatch], runs: list[tuple[int, dict[str, Any]]], limit: int) -> list[Explained]:
    """The rows of `why`, newest first: each dispatch with its outcome, each skipped
    tick with its reason, and a last word when the entry is finished."""
    by_tick = dict(runs)
    rows: list[Explained] = []
    seen = set()
    for d in history:
        seen.add(d.tick_ms)
        late = int((d.published_at - d.tick).total_seconds() * 1000)
        what = {"scheduled": "published", "republished": "republished", "triggered": "triggered", "refused": "refused"}.get(d.kind, d.kind)
        if what == "refused":
            text = "not sent: the task refused its arguments"
        else:
            who = {"published": f"published by {d.instance}", "republished": f"re-published by the reaper ({d.instance}) after "
                   "its claim's lease ran out", "triggered": f"triggered by {d.instance}"}.get(what, what)
            text = f"{who}, +{late} ms; {_outcome(by_tick.get(d.tick_ms))}"
        rows.append(Explained(d.tick, d.tick_ms, what, text))
    for tick, rec in runs:
        if tick in seen:
            continue
        state, reason = rec.get("state"), rec.get("reason")
        when = _dt(tick)
        if when is None:
            continue
        if state == "skipped":
            count, to = rec.get("count"), rec.get("to")
            span = f" ({count} ticks, to {_iso(_dt(to))})" if _whole(count) and count > 1 and _whole(to) else ""
            rows.append(Explained(when, tick, "skipped", f"skipped: {_SKIPPED.get(str(reason), str(reason))}{span}"))
        elif state == "queued" and reason == "buffered":
            rows.append(Explained(when, tick, "buffered", "buffered: published when the run before it ends (overlap=buffer_one)"))
        elif isinstance(state, str):  # a run with no history record (its acknowledgement was lost): the ledger alone
            rows.append(Explained(when, tick, "published", f"published; {_outcome(rec)}"))
    rows.sort(key=lambda r: r.tick_ms, reverse=True)
    rows = rows[:limit]
    if entry.finished and entry.schedule is not None:
        s = entry.schedule
        last = rows[0].tick if rows else (entry.last_tick or datetime.now(timezone.utc))
        if s.limit is not None and entry.total_runs >= s.limit:
            why = f"finished: its limit of {s.limit} runs is reached"
        elif s.end_ms is not None:
            why = f"finished: its end {_iso(_dt(s.end_ms))} has passed"
        else:
            why = "finished: no tick is left"
        rows.insert(0, Explained(last, _ms(last), "finished", why))
    return rows


@dataclass
class Instance:
    """A beat instance that registered with the store."""

    id: str
    host: str
    pid: int
    version: str
    started: datetime | None
    last_heartbeat: datetime | None
    alive: bool  #: it heartbeated within its liveness window (10 s + 2 loop intervals)
    ticks_dispatched: int
    static_entries: int
    heartbeat_age_ms: int | None = None  #: by the Redis server's clock; None when its record does not say

    @classmethod
    def from_row(cls, now: int, instance: str, deadline: int, raw_info: bytes | None, published: int) -> Instance:
        """``alive`` means heartbeating: its last heartbeat (the deadline less its
        registration ttl) within its liveness window ``live``. A record without one
        (an older version) is alive until its registration expires."""
        try:
            info = json.loads(raw_info) if raw_info else {}
        except (ValueError, RecursionError):
            info = {}
        if not isinstance(info, dict):  # a planted or damaged record: shown with what is known
            info = {}
        ttl, pid, static, live = info.get("ttl"), info.get("pid"), info.get("static"), info.get("live")
        heartbeat = deadline - ttl if _whole(ttl) else -1
        age = now - heartbeat if heartbeat >= 0 else None
        alive = deadline > now and (age is None or not _whole(live) or age <= live)
        return cls(
            id=instance,
            host=str(info.get("host", "?")),
            pid=pid if isinstance(pid, int) and _whole(pid) else 0,
            version=str(info.get("version", "?")),
            started=_dt(info["started"]) if _whole(info.get("started")) else None,
            last_heartbeat=_dt(heartbeat) if heartbeat >= 0 else None,
            alive=alive,
            ticks_dispatched=published,
            static_entries=len(static) if isinstance(static, list) else 0,
            heartbeat_age_ms=age,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "started": _iso(self.started),
            "last_heartbeat": _iso(self.last_heartbeat),
            "heartbeat_age_ms": self.heartbeat_age_ms,
            "alive": self.alive,
            "ticks_dispatched": self.ticks_dispatched,
            "static_entries": self.static_entries,
        }
