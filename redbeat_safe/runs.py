"""The run ledger, worker side: what became of each tick a beat published.

Enable it in the workers with one line in the app's configuration::

    imports = ["redbeat_safe.runs"]        # celeryconfig.py (Django: CELERY_IMPORTS)

or ``import redbeat_safe.runs`` in the module that creates the app. Importing it
connects Celery's task signals; a task message that carries redbeat_safe's headers
(``redbeat_safe_entry``, ``redbeat_safe_tick_ms``) is recorded, every other task is
untouched. Each state change is one script call (``run.lua``): received, started
(worker, pid), then succeeded, failed, retried, revoked or expired, with its duration.
While a run lasts, a thread refreshes the entry's running marker (what the overlap
policies read) every third of ``redbeat_safe_run_lease``, never past the task's hard
time limit. A Redis that cannot be reached never fails a task: the event is logged
(once a minute), counted in ``stats()`` and skipped.

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

#: How often the same failure is logged again (s).
_LOG_EVERY = 60.0


@dataclass
class _Run:
    entry: str
    tick: int
    task_id: str
    deadline: float | None  #: monotonic: the task's hard time limit (the marker never outlives it)


class Ledger:
    """One process's connection to the store of one app, and its runs in progress."""

    def __init__(self, app: Celery) -> None:
        self.settings = Settings.from_app(app)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._client: Client | None = None
        self._store: RedisStore | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._running: dict[str, _Run] = {}
        self._thread: threading.Thread | None = None
        self._alive = False

    @property
    def store(self) -> RedisStore:
        if self._store is None or self._pid != os.getpid():  # a forked pool child makes its own connection
            self._pid = os.getpid()
            self._client = connect(self.settings.topology)
            self._store = RedisStore(self._client, self.settings.key_prefix)
            self._store.run_retention_ms = self.settings.run_retention_ms
            self._running, self._thread = {}, None
        return self._store

    @property
    def lease_ms(self) -> int:
        return self.settings.run_lease_ms

    def event(self, entry: str, tick: int, task_id: str, event: str, exc: str = "", lease_ms: int = 0) -> None:
        """Record one event; never raises (a task must not fail because the ledger cannot write)."""
        try:
            self.store.run_event(entry, tick, task_id, event, self.worker, os.getpid(), lease_ms or self.lease_ms, exc)
            STATS[event] = STATS.get(event, 0) + 1
        except Exception as exc_:  # noqa: BLE001 - Redis down, refused, or a bug: the task goes on regardless
            STATS["failed_writes"] = STATS.get("failed_writes", 0) + 1
            _log_failure(f"redbeat_safe.runs: could not record {event} of {entry} tick {tick} ({type(exc_).__name__}: {exc_}); "
                         "the task is not affected")

    # -- the running marker's refresh ---------------------------------------
    def started(self, run: _Run) -> None:
        with self._lock:
            self._running[run.task_id] = run
        self._ensure_thread()

    def ended(self, task_id: str) -> None:
        with self._lock:
            self._running.pop(task_id, None)

    def lease_for(self, run: _Run) -> int:
        """The marker's lease, never past the task's hard time limit (a task killed at its
        limit is over; a marker outliving it would hold the entry for nothing)."""
        lease = self.lease_ms
        if run.deadline is not None:
            lease = min(lease, max(1, int((run.deadline - time.monotonic()) * 1000)))
        return lease

    def keep_alive(self) -> None:
        """Say that this worker keeps the ledger (beats apply overlap policies only while
        one does), now and every third of the run lease, from a thread."""
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.event("", 0, "", "alive")
        self._alive = True
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._refresh, name="redbeat_safe-runs", daemon=True)
            self._thread.start()

    def _refresh(self) -> None:
        while True:
            time.sleep(self.lease_ms / 3000)
            if self._alive:
                self.event("", 0, "", "alive")
            with self._lock:
                runs = list(self._running.values())
            for run in runs:
                self.event(run.entry, run.tick, run.task_id, "heartbeat", lease_ms=self.lease_for(run))


STATS: dict[str, int] = {}
_ledgers: dict[int, Ledger] = {}
_last_logged: dict[str, float] = {}


def stats() -> dict[str, int]:
    """Events recorded and writes that failed, in this process."""
    return dict(STATS)


def _log_failure(message: str) -> None:
    key = message.split("(", 1)[0]
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


def _received(sender: Any = None, request: Any = None, **_: Any) -> None:
    run = _from_request(request)
    task = getattr(request, "task", None)
    if run is None or task is None:
        return
    ledger = _ledger(task.app)
    if ledger is not None:
        ledger.event(run[0], run[1], request.id, "received")


def _prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    run = _from_request(getattr(task, "request", None))
    if run is None or task is None or task_id is None:
        return
    ledger = _ledger(task.app)
    if ledger is None:
        return
    limits = getattr(task.request, "timelimit", None) or (None, None)
    hard = limits[0] if limits and limits[0] else getattr(task, "time_limit", None)
    current = _Run(run[0], run[1], task_id, None if not hard else time.monotonic() + float(hard))
    ledger.event(run[0], run[1], task_id, "started", lease_ms=ledger.lease_for(current))
    ledger.started(current)


_OUTCOMES = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried", "REVOKED": "revoked"}


def _postrun(sender: Any = None, task_id: str | None = None, task: Any = None, retval: Any = None, state: str | None = None,
             **_: Any) -> None:
    run = _from_request(getattr(task, "request", None))
    if run is None or task is None or task_id is None:
        return
    ledger = _ledger(task.app)
    if ledger is None:
        return
    ledger.ended(task_id)
    outcome = _OUTCOMES.get(state or "")
    if outcome is not None:
        exc = type(retval).__name__ if outcome in ("failed", "retried") and isinstance(retval, BaseException) else ""
        ledger.event(run[0], run[1], task_id, outcome, exc=exc)


def _revoked(sender: Any = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    run = _from_request(request)
    app = getattr(sender, "app", None)
    if run is None or app is None:
        return
    ledger = _ledger(app)
    if ledger is not None:
        ledger.event(run[0], run[1], getattr(request, "id", "") or "", "expired" if expired else "revoked")


def _ready(sender: Any = None, **_: Any) -> None:
    """The worker is up: it keeps the ledger from now on (even before its first task)."""
    app = getattr(sender, "app", None)
    ledger = _ledger(app) if app is not None else None
    if ledger is not None:
        ledger.keep_alive()


signals.task_received.connect(_received, weak=False)
signals.task_prerun.connect(_prerun, weak=False)
signals.task_postrun.connect(_postrun, weak=False)
signals.task_revoked.connect(_revoked, weak=False)
signals.worker_ready.connect(_ready, weak=False)
