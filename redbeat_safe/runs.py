"""The run ledger, worker side: what became of each tick a beat published.

Enable it in the workers with one line in the app's configuration::

    imports = ["redbeat_safe.runs"]        # celeryconfig.py (Django: CELERY_IMPORTS)

or ``import redbeat_safe.runs`` in the module that creates the app. Importing it
connects Celery's task signals; a task message that carries redbeat_safe's headers
(``redbeat_safe_entry``, ``redbeat_safe_tick_ms``) is recorded, every other task is
untouched: received, started (worker, pid), then succeeded, failed, retried, revoked
or expired, with its duration (docs/runs.md).

A task never waits for Redis: the signal handlers only note the event, and a thread
of each worker process sends what is noted every ``FLUSH_EVERY`` seconds, in one
round trip (``run.lua`` once per 200 events, pipelined). Events of one run noted between
two flushes are merged (a run that started and ended in between is one call, carrying
its start). So a Redis that is slow or down never slows or fails a task: what cannot
be sent is logged (once a minute), counted in ``stats()`` and dropped, at most
``MAX_PENDING`` events are kept. The same thread refreshes the running marker of each
task running in the process (what the overlap policies read) every third of
``redbeat_safe_run_lease``, never past the task's hard time limit, and says that this
worker keeps the ledger (beats apply overlap policies only while one does).

This module depends on the core; the core never imports it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery, signals

from .config import Settings
from .connection import Client, connect
from .dispatch import HEADER_ENTRY, HEADER_TICK
from .store import RedisStore

logger = logging.getLogger("redbeat_safe.runs")

#: How often the writer thread sends what was noted (s): the delay between a state and
#: its record, and how long a finished run holds its entry past its end.
FLUSH_EVERY = 0.05
#: Events kept while Redis does not answer; older ones are dropped first.
MAX_PENDING = 10_000
#: How often the same failure is logged again (s).
_LOG_EVERY = 60.0
_FINAL = ("succeeded", "failed", "revoked", "expired")


@dataclass
class _Run:
    entry: str
    tick: int
    task_id: str
    deadline: float | None  #: monotonic: the task's hard time limit (the marker never outlives it)


@dataclass
class _Event:
    entry: str
    tick: int
    task_id: str
    event: str
    at_ms: int  #: this worker's clock
    lease_ms: int = 0
    exc: str = ""
    started_ms: int | None = None  #: a start merged into a final event


class Ledger:
    """One process's writer for one app: its noted events, its runs in progress."""

    def __init__(self, app: Celery) -> None:
        self.settings = Settings.from_app(app)
        self._client: Client | None = None
        self._store: RedisStore | None = None
        self._pid = 0
        self._cond = threading.Condition()
        self._pending: list[_Event] = []
        self._running: dict[str, _Run] = {}
        self._thread: threading.Thread | None = None
        self._alive = False
        self._next_refresh = 0.0

    @property
    def worker(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    @property
    def store(self) -> RedisStore:
        if self._store is None or self._pid != os.getpid():  # a forked pool child makes its own connection
            self._client = connect(self.settings.topology)
            self._store = RedisStore(self._client, self.settings.key_prefix)
            self._store.run_retention_ms = self.settings.run_retention_ms
            self._pid = os.getpid()
        return self._store

    @property
    def lease_ms(self) -> int:
        return self.settings.run_lease_ms

    def note(self, event: _Event, started: _Run | None = None, ended: str | None = None) -> None:
        """Note an event for the writer thread (and a run that started or ended, under the
        same lock: this runs once per task state); never blocks on Redis, never raises."""
        with self._cond:
            # first: a forked pool child starts afresh (its first note is often a start)
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                self._start()
            if started is not None:
                self._running[started.task_id] = started
            if ended is not None:
                self._running.pop(ended, None)
            if len(self._pending) >= MAX_PENDING:
                del self._pending[0]
                STATS["dropped"] = STATS.get("dropped", 0) + 1
            # no notify: waking the writer per event made a round trip per task, and in a
            # solo worker that thread took the GIL from the tasks (a no-op task ran 38 % slower)
            self._pending.append(event)

    def _start(self) -> None:
        """The writer thread of this process (again after a fork: threads do not survive one)."""
        if self._pid != os.getpid():
            self._pending, self._running, self._store = [], {}, None
            _ = self.store
        self._thread = threading.Thread(target=self._loop, name="redbeat_safe-runs", daemon=True)
        self._thread.start()

    def keep_alive(self) -> None:
        """This worker keeps the ledger: said now and every third of the run lease."""
        with self._cond:
            self._alive = True
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._start()
            self._next_refresh = 0.0
            self._cond.notify()

    def lease_for(self, run: _Run) -> int:
        """The marker's lease, never past the task's hard time limit (a task killed at its
        limit is over; a marker outliving it would hold the entry for nothing)."""
        lease = self.lease_ms
        if run.deadline is not None:
            lease = min(lease, max(1, int((run.deadline - time.monotonic()) * 1000)))
        return lease

    def flush(self) -> None:
        """Send what is noted now (the writer thread does this on its own)."""
        with self._cond:
            batch, self._pending = self._pending, []
        self._send(batch)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait(FLUSH_EVERY)
                batch, self._pending = self._pending, []
                refresh = time.monotonic() >= self._next_refresh
                running = list(self._running.values()) if refresh else []
                if refresh:
                    self._next_refresh = time.monotonic() + self.lease_ms / 3000
            now = int(time.time() * 1000)
            extra = [_Event(r.entry, r.tick, r.task_id, "heartbeat", now, lease_ms=self.lease_for(r)) for r in running]
            if refresh and self._alive:
                extra.append(_Event("", 0, "", "alive", now, lease_ms=self.lease_ms))
            self._send(_merged(batch) + extra)

    def _send(self, batch: list[_Event]) -> None:
        if not batch:
            return
        worker, pid = self.worker, os.getpid()
        try:
            replies = self.store.run_events([(e.entry, e.tick, e.task_id, e.event, worker, pid, e.lease_ms or self.lease_ms, e.exc,
                                              e.at_ms, e.started_ms) for e in batch])
        except Exception as exc:  # noqa: BLE001 - Redis down, refused, or a bug: the tasks go on regardless
            STATS["failed_writes"] = STATS.get("failed_writes", 0) + len(batch)
            _log_failure(f"redbeat_safe.runs: could not record {len(batch)} event(s) ({type(exc).__name__}: {exc}); "
                         "the tasks are not affected; said again in a minute if it goes on", key="send")
            return
        for e, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                STATS["failed_writes"] = STATS.get("failed_writes", 0) + 1
                _log_failure(f"redbeat_safe.runs: could not record {e.event} ({type(reply).__name__}: {reply})", key="refused")
            else:
                STATS[e.event] = STATS.get(e.event, 0) + 1


def _merged(batch: list[_Event]) -> list[_Event]:
    """One run's events noted between two flushes, as few calls as say the same: a
    `received` or `started` followed by a final state becomes that final state, carrying
    the start (the marker's `running` state is not needed for a run already over).
    Linear in the batch: after an outage the writer may hold thousands."""
    last: dict[tuple[str, int, str], int] = {}
    out: list[_Event | None] = []
    for e in batch:
        key = (e.entry, e.tick, e.task_id)
        at = last.get(key, -1)
        prev = out[at] if at >= 0 else None
        if prev is not None and prev.event in ("received", "started") and e.event in _FINAL + ("retried",):
            out[at] = None
            if prev.event == "started":
                e.started_ms = prev.at_ms
            elif prev.started_ms is not None:
                e.started_ms = prev.started_ms
        elif prev is not None and prev.event == "received" and e.event == "started":
            out[at] = None
        last[key] = len(out)
        out.append(e)
    return [e for e in out if e is not None]


STATS: dict[str, int] = {}
_ledgers: dict[int, Ledger] = {}
_last_logged: dict[str, float] = {}


def stats() -> dict[str, int]:
    """Events recorded, dropped and not written, in this process."""
    return dict(STATS)


def _log_failure(message: str, key: str | None = None) -> None:
    key = key or message.split("(", 1)[0]
    now = time.monotonic()
    if now - _last_logged.get(key, -_LOG_EVERY) >= _LOG_EVERY:
        _last_logged[key] = now
        logger.warning(message)


def _ledger(app: Celery) -> Ledger | None:
    found = _ledgers.get(id(app))
    if found is None:
        try:
            found = _ledgers[id(app)] = Ledger(app)
        except Exception as exc:  # noqa: BLE001 - a worker whose app has no usable redbeat_safe settings
            _log_failure(f"redbeat_safe.runs: the run ledger is off for app {app.main!r} ({exc})")
            return None
    return found


def _ours(headers: Any) -> tuple[str, int] | None:
    """(entry, tick) of a message redbeat_safe published, else None."""
    if isinstance(headers, dict):
        entry, tick = headers.get(HEADER_ENTRY), headers.get(HEADER_TICK)
    else:
        entry, tick = getattr(headers, HEADER_ENTRY, None), getattr(headers, HEADER_TICK, None)
    if not isinstance(entry, str) or isinstance(tick, bool) or not isinstance(tick, int):
        return None
    return entry, tick


def _from_request(request: Any) -> tuple[str, int] | None:
    found = _ours(request) if request is not None else None
    if found is None and request is not None:
        headers = getattr(request, "headers", None) or getattr(request, "request_dict", None)
        found = _ours(headers) if isinstance(headers, dict) else None
    return found


def _now_ms() -> int:
    return int(time.time() * 1000)


def _received(sender: Any = None, request: Any = None, **_: Any) -> None:
    run = _from_request(request)
    task = getattr(request, "task", None)
    if run is None or task is None:
        return
    ledger = _ledger(task.app)
    if ledger is not None:
        ledger.note(_Event(run[0], run[1], request.id, "received", _now_ms()))


def _prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    request = getattr(task, "request", None)  # a context lookup: once
    run = _from_request(request)
    if run is None or task is None or task_id is None:
        return
    ledger = _ledger(task.app)
    if ledger is None:
        return
    limits = getattr(request, "timelimit", None) or (None, None)
    hard = limits[0] if limits and limits[0] else getattr(task, "time_limit", None)
    current = _Run(run[0], run[1], task_id, None if not hard else time.monotonic() + float(hard))
    ledger.note(_Event(run[0], run[1], task_id, "started", _now_ms(), lease_ms=ledger.lease_for(current)), started=current)


_OUTCOMES = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried", "REVOKED": "revoked"}


def _postrun(sender: Any = None, task_id: str | None = None, task: Any = None, retval: Any = None, state: str | None = None,
             **_: Any) -> None:
    run = _from_request(getattr(task, "request", None))
    if run is None or task is None or task_id is None:
        return
    ledger = _ledger(task.app)
    if ledger is None:
        return
    outcome = _OUTCOMES.get(state or "")
    if outcome is not None:
        exc = type(retval).__name__ if outcome in ("failed", "retried") and isinstance(retval, BaseException) else ""
        ledger.note(_Event(run[0], run[1], task_id, outcome, _now_ms(), exc=exc), ended=task_id)
    else:
        with ledger._cond:
            ledger._running.pop(task_id, None)


def _revoked(sender: Any = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    run = _from_request(request)
    app = getattr(sender, "app", None)
    if run is None or app is None:
        return
    ledger = _ledger(app)
    if ledger is not None:
        ledger.note(_Event(run[0], run[1], getattr(request, "id", "") or "", "expired" if expired else "revoked", _now_ms()))


def _ready(sender: Any = None, **_: Any) -> None:
    """The worker is up: it keeps the ledger from now on (even before its first task)."""
    app = getattr(sender, "app", None)
    ledger = _ledger(app) if app is not None else None
    if ledger is not None:
        ledger.keep_alive()


def _shutdown(**_: Any) -> None:
    """A worker process stopping: send what is noted, while the connection is there."""
    for ledger in list(_ledgers.values()):
        try:
            ledger.flush()
        except Exception:  # noqa: BLE001, S110 - stopping: nothing more to do
            pass


signals.task_received.connect(_received, weak=False)
signals.task_prerun.connect(_prerun, weak=False)
signals.task_postrun.connect(_postrun, weak=False)
signals.task_revoked.connect(_revoked, weak=False)
signals.worker_ready.connect(_ready, weak=False)
signals.worker_process_shutdown.connect(_shutdown, weak=False)
signals.worker_shutdown.connect(_shutdown, weak=False)
