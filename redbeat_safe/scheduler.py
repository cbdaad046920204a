"""The Celery adapter: ``redbeat_safe.Scheduler`` for ``celery beat -S``.

Celery's contract lives here (the lazy banner instance, setup inside
``__init__``, ``close()`` called twice, publishing with beat's producer, one
log line per Redis outage); the claim protocol itself is in ``engine.py``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery, beat
from celery.exceptions import ImproperlyConfigured
from celery.schedules import crontab
from celery.utils.imports import symbol_by_name
from celery.utils.log import get_logger
from kombu.exceptions import OperationalError
from kombu.utils.objects import cached_property
from redis import exceptions as rx

from .config import Settings
from .connection import STORE_ERRORS, Client, connect, refusal, warn_once
from .definitions import DefinitionError, EntryDef, from_beat_entry
from .dispatch import confirming, publish
from .engine import Engine, LayoutRefused, PublishError
from .store import RedisStore

logger = get_logger(__name__)

#: Error replies that mean "not now" (a failover, a restart, a busy or full
#: server): an outage like a refused connection. Any other error reply is a
#: refusal that waiting alone will not fix (a damaged key, a missing ACL
#: permission), reported as such.
_TRANSIENT_REPLIES: tuple[type[Exception], ...] = (rx.ReadOnlyError, rx.TryAgainError, rx.ClusterDownError, rx.AskError,
                                                   rx.OutOfMemoryError)
_TRANSIENT_PREFIXES = ("BUSY", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "OOM")
#: The same refusal is logged again after this long.
_REFUSAL_EVERY = 300.0


def is_refusal(exc: BaseException) -> bool:
    """Whether a store error is Redis refusing a command, not Redis being unavailable.

    Bad credentials are a refusal too, though redis-py raises them as a
    connection error: retrying will not fix them, and "unavailable" misleads."""
    if refusal(exc) is not None:
        return True
    if not isinstance(exc, rx.ResponseError) or isinstance(exc, _TRANSIENT_REPLIES):
        return False
    return not str(exc).startswith(_TRANSIENT_PREFIXES)


def embedded() -> bool:
    """Whether this scheduler runs inside a worker (``celery worker -B``): Celery names
    the embedded beat's process (prefork) or thread (other pools) "Beat"."""
    return multiprocessing.current_process().name == "Beat" or threading.current_thread().name == "Beat"


#: The per-beat exporter, loaded only when redbeat_safe_metrics_port is set.
METRICS_OBSERVER = "redbeat_safe.metrics:beat_observer"
#: How long a refusal record lasts after the refusing beat last wrote it.
_REFUSAL_TTL_MS = 120_000


def _due_again(seen: dict[str, float], message: str) -> bool:
    """Whether ``message`` is to be logged now: once per _REFUSAL_EVERY (a bounded memory)."""
    now = time.monotonic()
    if now - seen.get(message, -_REFUSAL_EVERY) < _REFUSAL_EVERY:
        return False
    if len(seen) > 100:
        seen.clear()
    seen[message] = now
    return True


class BeatRefused(SystemExit):
    """A standalone beat refusing its configuration: one line on stderr and exit 2.

    Celery would show an ``ImproperlyConfigured`` raised while it builds the
    scheduler as a critical log line with a traceback, and again as a traceback
    cut into log lines, the reason last. A SystemExit passes through Celery's
    handlers untouched; ``reason`` keeps the message for whoever catches it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = 2

    def __str__(self) -> str:
        return self.reason


class Scheduler(beat.Scheduler):  # type: ignore[misc]
    """Active-active beat scheduler: every instance claims ticks atomically in Redis."""

    #: Upper bound on one sleep, unless ``beat_max_loop_interval`` says otherwise: how
    #: long a beat may go without looking. A change made through the API wakes it at once.
    max_interval = 1
    #: The protocol implementation (tests substitute one that crashes on cue).
    engine_class = Engine

    def __init__(self, app: Celery, *args: Any, lazy: bool = False, **kwargs: Any) -> None:
        try:
            self._init(app, *args, lazy=lazy, **kwargs)
        except ImproperlyConfigured as exc:  # embedded beats never get here: they refuse at every loop instead
            first, *rest = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
            reason = " ".join([first, "; ".join(rest)]) if rest else first
            print(f"celery beat: {reason}", file=sys.__stderr__ or sys.stderr, flush=True)
            raise BeatRefused(reason) from None

    def _init(self, app: Celery, *args: Any, lazy: bool = False, **kwargs: Any) -> None:
        # Celery calls setup_schedule() from inside super().__init__, so
        # everything it needs is set first. The banner's lazy instance does no I/O.
        self.lazy = lazy
        #: Why this embedded beat schedules nothing (its configuration was refused): a
        #: standalone beat exits instead, but one inside a worker would die silently and
        #: leave the worker running as if it still had a scheduler.
        self.refusal: str | None = None
        try:
            self.settings = Settings.from_app(app)
        except ImproperlyConfigured as exc:
            if lazy or not embedded():
                raise
            self.refusal, self.settings = str(exc), Settings(redis_url="")
        self.static_entries: list[EntryDef] = []
        self._client: Client | None = None
        self._engine: Engine | None = None
        self._closed = False
        self._ticking = False
        self._outage_since: float | None = None
        self._retry = 0.5
        self._refusals: dict[str, float] = {}
        self._failures: dict[str, float] = {}
        self._unknown_tasks: set[str] = set()
        self._foreign_layout = False  #: the store's keys have a layout this version must not write to
        self._wait = 0.0  #: seconds the next tick waits for a wake-up before it looks
        super().__init__(app, *args, lazy=lazy, **kwargs)

    # -- Celery's contract -------------------------------------------------
    def setup_schedule(self) -> None:
        """Validate the static schedule (refusing bad input), then register it."""
        self.data: dict[str, Any] = {}
        if self.refusal is not None:
            return
        for message in self.settings.warnings:  # once, at start: Celery has set up logging by now, unlike for the banner
            warn_once(message)
        try:
            self.static_entries = self._static_from_config()
        except ImproperlyConfigured as exc:
            if self.lazy or not embedded():
                raise
            self.refusal = str(exc)
            return
        try:
            self._register()
        except STORE_ERRORS as exc:  # tick() registers once Redis answers
            self._refused(exc) if is_refusal(exc) else self._outage(exc)
        except LayoutRefused as exc:
            if not embedded():
                raise  # a standalone beat refuses to start: its supervisor sees it
            self.refusal, self._foreign_layout = str(exc), True  # inside a worker: refuse loudly at every loop
        except ImproperlyConfigured:
            raise
        except Exception as exc:  # noqa: BLE001 - as in tick(): logged, and tick() registers again
            self._failed(exc)

    @property
    def info(self) -> str:
        if self.refusal is not None:
            return f"    . redbeat_safe -> REFUSED: {self.refusal}"
        return f"    . redis -> {self.settings.topology.describe()} (keys {{{self.settings.key_prefix}}}:*)"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._client = connect(self.settings.topology)
            store = self._make_store(self._client)
            engine = self.engine_class(store, self.settings, self._publish, float(self.max_interval), self.static_entries)
            engine.revoke = self._revoke
            if self.settings.metrics_port is not None:
                try:
                    engine.observer = self._beat_metrics(engine.instance_id)
                except ImproperlyConfigured as exc:
                    if not embedded():
                        raise  # a standalone beat refuses to start: its supervisor sees it
                    # inside a worker the schedule matters more than this beat's own metrics
                    logger.critical("redbeat_safe: %s; this beat inside a worker schedules without its own metrics", exc)
            self._engine = engine
        return self._engine

    def _beat_metrics(self, instance_id: str) -> Any:
        """This beat's own exporter, loaded by name: the core does not import the metrics
        module (nor prometheus_client) unless ``redbeat_safe_metrics_port`` asks for it."""
        try:
            factory = symbol_by_name(METRICS_OBSERVER)
            return factory(self.settings, instance_id)
        except ImportError as exc:
            raise ImproperlyConfigured(f"redbeat_safe_metrics_port is set, but {exc}") from None
        except OSError as exc:
            raise ImproperlyConfigured(f"redbeat_safe_metrics_port: cannot listen on {self.settings.metrics_address}:"
                                       f"{self.settings.metrics_port} ({exc}); give each beat on a host its own port") from None

    def _make_store(self, client: Client) -> RedisStore:
        s = self.settings
        store = RedisStore(client, s.key_prefix, wait_replicas=s.wait_replicas, wait_timeout_ms=s.wait_timeout_ms)
        store.run_retention_ms = s.run_retention_ms
        return store

    def _revoke(self, task_id: str, terminate: bool) -> None:
        """overlap='replace': Celery's revoke, broadcast to the workers (terminate kills a running task)."""
        self.app.control.revoke(task_id, terminate=terminate)

    @property
    def instance_id(self) -> str:
        return self.engine.instance_id

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if self._closed or self.lazy:
            return float(self.max_interval)
        if self.refusal is not None:
            return self._refusing()
        self._ticking = True
        wait, self._wait = self._wait, 0.0  # an error below: the next tick looks at once, without waiting
        try:
            if not self.engine.registered:
                self._register()
                wait = 0.0
            # the sleep is a wait for wake-ups, with the peek behind it: outside the
            # signal hold, as Celery's own sleep is (a stop while waiting is a stop while idle)
            look = self.engine.look(wait)
            with self._stop_signals_wait():
                delay = self.engine.finish(self.engine.plan_pass(look))
        except STORE_ERRORS as exc:
            return self._refused(exc) if is_refusal(exc) else self._outage(exc)
        except LayoutRefused as exc:  # registering again (Redis restarted empty) met another version's keys
            if not embedded():
                raise
            self.refusal, self._foreign_layout = str(exc), True
            return self._refusing()
        except ImproperlyConfigured:
            raise  # the static schedule refused at registration: the beat must not start
        except Exception as exc:  # noqa: BLE001 - the backstop: a bug or an unforeseen record must not end the beat
            return self._failed(exc)
        finally:
            self._ticking = False
            if self._closed:  # close() ran in a signal handler during this tick
                self._release_connections()
        if self._outage_since is not None:
            logger.warning("redbeat_safe: Redis reachable again after %.1fs", time.monotonic() - self._outage_since)
            self._outage_since, self._retry = None, 0.5
            self.engine.observer.outage(False)
        if self.engine.wakeups and delay > 0:
            self._wait = delay  # spent in the next tick's look, blocked on Redis until a wake-up or the delay
            return 0.0
        return delay

    def close(self) -> None:
        """Idempotent: Celery calls it twice on SIGTERM, the first time from a
        signal handler that may have interrupted tick() in the middle of a Redis
        reply or a publish; the connections that call is using are then
        released when tick() unwinds, not pulled from under it."""
        if self._closed:
            return
        self._closed = True
        try:
            self._leave()
        finally:
            if not self._ticking:
                self._release_connections()

    @contextmanager
    def _stop_signals_wait(self) -> Iterator[None]:
        """Hold SIGTERM/SIGINT until the pass has recorded what it published.

        Celery's handler closes the scheduler and raises SystemExit wherever it
        lands. Mid-publish, the tick being sent may already be with the broker
        while still counted unpublished; close() would hand it back and another
        beat would publish it again (same id, but a repeat a graceful stop
        must not cause). Held, the signal is acted on as soon as the pass
        ends, at most one batch later. A second signal is acted on at once.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        held: list[tuple[Any, int, Any]] = []
        previous: dict[int, Any] = {}

        def hold(signum: int, frame: Any) -> None:
            handler = previous[signum]
            if held:  # asked twice: stop now
                handler(signum, frame)
            held.append((handler, signum, frame))

        for sig in (signal.SIGTERM, signal.SIGINT):
            current = signal.getsignal(sig)
            if callable(current):
                previous[sig] = current
                signal.signal(sig, hold)
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            if held:
                first, signum, frame = held[0]
                first(signum, frame)

    def _release_connections(self) -> None:
        try:
            if self._engine is not None:
                getattr(self._engine.observer, "close", lambda: None)()
            super().close()
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- helpers -----------------------------------------------------------
    def _static_from_config(self) -> list[EntryDef]:
        entries: dict[str, Any] = dict(self.app.conf.beat_schedule or {})
        conf = self.app.conf
        if conf.result_expires and not self.app.backend.supports_autoexpire:
            # what Celery's own beat installs, kept under the same name and time
            entries.setdefault(
                "celery.backend_cleanup",
                {"task": "celery.backend_cleanup", "schedule": crontab("0", "4", "*"), "options": {"expires": 12 * 3600}},
            )
        out, problems = [], []
        for name, spec in entries.items():
            try:
                out.append(from_beat_entry(name, spec, self.settings.timezone))
            except DefinitionError as exc:
                problems.append(str(exc))
        if problems:
            raise ImproperlyConfigured("redbeat_safe: beat_schedule refused, nothing was written:\n  " + "\n  ".join(problems))
        return out

    def _register(self) -> None:
        results = self.engine.register()
        counts: dict[str, int] = {}
        for outcome in results.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none"
        logger.info("redbeat_safe: instance %s registered %d static entries (%s)", self.instance_id, len(results), summary)

    def _leave(self) -> None:
        """Deregister through a fresh connection: close() may run inside a
        signal handler that interrupted a command on the pooled one."""
        if self._engine is None:
            return
        client: Client | None = None
        try:
            client = connect(self.settings.topology)
            self._engine.leave(self._make_store(client))
        except STORE_ERRORS as exc:
            logger.warning("redbeat_safe: could not deregister cleanly (%s); the lease and heartbeat expire on their own", exc)
        finally:
            if client is not None:
                client.close()

    def _publish(self, entry: EntryDef, name: str, tick: int) -> None:
        if entry.task not in self.app.tasks and entry.task not in self._unknown_tasks:
            # legitimate (a beat need not import the tasks; workers do), but a typo looks the same
            self._unknown_tasks.add(entry.task)
            logger.warning("redbeat_safe: task %r (entry %r) is not registered in this beat's app; sending it by name", entry.task, name)
        try:
            publish(self.app, entry, self.settings.key_prefix, tick, producer=self.producer, instance=self.engine.instance_id,
                    default_expiry=self.settings.expires_after)
        except Exception as exc:
            raise PublishError(f"{type(exc).__name__}: {exc}", transient=self._transient(exc)) from exc

    def _transient(self, exc: Exception) -> bool:
        """Whether a publish error is about the broker connection (worth retrying)."""
        connection = self.__dict__.get("connection") or self.app.connection_for_write()
        recoverable = tuple(connection.connection_errors) + tuple(connection.channel_errors)
        cause = exc.__cause__ or exc.__context__
        return any(isinstance(e, (OperationalError, OSError, TimeoutError) + recoverable) for e in (exc, cause) if e is not None)

    @cached_property
    def producer(self) -> Any:
        """Beat's producer, made without Celery's wait for the broker.

        Celery's beat waits in ``ensure_connection`` for up to
        ``broker_connection_max_retries`` tries (minutes): a beat stuck there neither
        heartbeats nor claims, so it shows as dead. Here one short retry, then the
        publish fails as transient: the tick stays in flight for the reaper, and
        the beat keeps its heartbeat and its part of the due list meanwhile."""
        conn = self.connection.ensure_connection(max_retries=1, interval_start=0.2, interval_step=0.2, interval_max=0.2)
        return self.Producer(conn, auto_declare=False)

    @cached_property
    def connection(self) -> Any:
        """Beat's broker connection, with publisher confirms on an AMQP broker (see dispatch.confirming)."""
        return self.app.connection_for_write(transport_options=confirming(self.app))

    def _refused(self, exc: Exception) -> float:
        message = f"{type(exc).__name__}: {exc}"
        if _due_again(self._refusals, message):
            said = refusal(exc)
            if said is not None:
                logger.error("redbeat_safe: %s. Retrying every %.1fs", said, float(self.max_interval))
            else:
                logger.error("redbeat_safe: Redis refused a command (%s); not an outage: a damaged key, a missing ACL "
                             "permission or a bug. Retrying every %.1fs", message, float(self.max_interval))
        return float(self.max_interval)

    def _refusing(self) -> float:
        """An embedded beat whose configuration was refused: CRITICAL at every loop, and a
        record that makes `schedules health` (and /healthz) fail, naming the reason, for
        as long as the worker runs. It registers nothing and claims nothing."""
        logger.critical("redbeat_safe: this beat (inside a worker, -B) schedules nothing: %s. The worker keeps running; "
                        "fix the configuration and restart it. `celery schedules health` fails meanwhile", self.refusal)
        if not self.settings.redis_url and self.settings.topology.kind == "standalone" or self._foreign_layout:
            return float(self.max_interval)  # the settings were refused (no store to tell), or the keys are another version's
        try:
            if self._client is None:
                self._client = connect(self.settings.topology)
            store = self._make_store(self._client)
            record = {"at": store.now(), "reason": self.refusal, "host": socket.gethostname(), "pid": os.getpid()}
            store.note_refusal(f"{socket.gethostname()}:{os.getpid()}", json.dumps(record), _REFUSAL_TTL_MS)
        except STORE_ERRORS as exc:
            logger.error("redbeat_safe: could not record the refusal in Redis (%s: %s)", type(exc).__name__, exc)
        return float(self.max_interval)

    def _failed(self, exc: Exception) -> float:
        """An exception no layer below handled. Every other beat keeps firing (their
        claims do not depend on this one), and whatever this pass claimed is re-published
        by a reaper when its lease ends, so retrying the pass loses nothing. The same
        failure is logged with its traceback once per 5 minutes, not once per loop."""
        message = f"{type(exc).__name__}: {exc}"
        if _due_again(self._failures, message):
            logger.error("redbeat_safe: a scheduling pass failed (%s); retrying in %.1fs, its claims are re-published when "
                         "their leases end. Please report this with the traceback", message, float(self.max_interval),
                         exc_info=True)
        return float(self.max_interval)

    def _outage(self, exc: Exception) -> float:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            if self._engine is not None:
                self._engine.observer.outage(True)
            logger.error("redbeat_safe: Redis unavailable (%s: %s); retrying, nothing is lost meanwhile", type(exc).__name__, exc)
        delay = min(self._retry, float(self.max_interval))
        self._retry = min(self._retry * 2, 5.0)
        return delay
