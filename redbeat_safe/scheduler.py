"""The Celery adapter: ``redbeat_safe.Scheduler`` for ``celery beat -S``.

Each ``tick()`` is one pass of the claim protocol: peek (acknowledge, heartbeat,
reap, list due), claim (compare-and-set), publish, and sleep until the next
tick. Any number of instances can run it at once.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

from celery import Celery, beat
from celery.exceptions import ImproperlyConfigured
from celery.schedules import crontab
from celery.utils.log import get_logger
from kombu.exceptions import OperationalError

from . import __version__, registry
from .catchup import plan
from .config import Settings
from .connection import STORE_ERRORS, Client, connect
from .definitions import DefinitionError, EntryDef, from_beat_entry
from .dispatch import publish
from .store import ClaimItem, Peek, RedisStore, member

logger = get_logger(__name__)

#: Entries looked at per round trip; a full batch means "go again at once".
BATCH = 200
REAP_BATCH = 100
_CACHE_LIMIT = 100_000


class Scheduler(beat.Scheduler):  # type: ignore[misc]
    """Active-active beat scheduler: every instance claims ticks atomically in Redis."""

    #: Upper bound on one sleep, unless ``beat_max_loop_interval`` says otherwise:
    #: entries added through the API are seen within this time.
    max_interval = 1

    def __init__(self, app: Celery, *args: Any, lazy: bool = False, **kwargs: Any) -> None:
        # Celery calls setup_schedule() from inside super().__init__, so
        # everything it needs is set first. The banner's lazy instance does no I/O.
        self.lazy = lazy
        self.settings = Settings.from_app(app)
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.static_entries: list[EntryDef] = []
        self._client: Client | None = None
        self._store: RedisStore | None = None
        self._registered = False
        self._epoch = ""
        self._closed = False
        self._in_tick = False
        self._reap_at: float | None = 0.0  #: when a lease may next expire (monotonic): peek WAITs then
        self._acks: list[str] = []
        self._unpublished: set[str] = set()
        self._defs: dict[tuple[str, str], EntryDef] = {}
        self._reported: set[str] = set()
        self._outage_since: float | None = None
        self._unconfirmed_since: float | None = None
        self._retry = 0.5
        self._lease_start = 0.0
        self.published = 0
        super().__init__(app, *args, lazy=lazy, **kwargs)

    # -- Celery's contract -------------------------------------------------
    def setup_schedule(self) -> None:
        """Validate the static schedule (refusing bad input), then register it."""
        self.static_entries = self._static_from_config()
        self.data: dict[str, Any] = {}
        self.tick_registration()

    @property
    def info(self) -> str:
        return f"    . redis -> {self.settings.topology.describe()} (keys {{{self.settings.key_prefix}}}:*)"

    @property
    def store(self) -> RedisStore:
        if self._store is None:
            self._client = connect(self.settings.topology)
            self._store = self._make_store(self._client)
        return self._store

    def _make_store(self, client: Client) -> RedisStore:
        s = self.settings
        return RedisStore(client, s.key_prefix, wait_replicas=s.wait_replicas, wait_timeout_ms=s.wait_timeout_ms)

    @property
    def heartbeat_ms(self) -> int:
        return int(max(30.0, 3 * float(self.max_interval)) * 1000) + self.settings.lease_ms

    @property
    def grace_ms(self) -> int:
        """A due tick later than this was missed (no instance ran), not just slept through."""
        return self.settings.lease_ms + int(float(self.max_interval) * 1000)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if self._closed or self.lazy:
            return float(self.max_interval)
        self._in_tick = True
        try:
            if not self._registered:
                self.tick_registration(raise_errors=True)
            delay = self._pass()
        except STORE_ERRORS as exc:
            return self._outage(exc)
        finally:
            self._in_tick = False
        if self._outage_since is not None:
            logger.warning("redbeat_safe: Redis reachable again after %.1fs", time.monotonic() - self._outage_since)
            self._outage_since, self._retry = None, 0.5
        return delay

    def close(self) -> None:
        """Idempotent: Celery calls it twice on SIGTERM, the first time from the
        signal handler, maybe in the middle of a tick's Redis command."""
        if not self._closed:
            self._closed = True
            try:
                self._leave()
            finally:
                super().close()
        if self._client is not None and not self._in_tick:
            # not under an interrupted command: closing its socket there would turn
            # the handler's SystemExit into "I/O operation on closed file"
            self._client.close()
            self._client = self._store = None

    # -- registration ------------------------------------------------------
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

    def tick_registration(self, raise_errors: bool = False) -> None:
        """Announce this instance, register the static entries, prune stale ones."""
        try:
            info = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": int(time.time() * 1000),
                "version": __version__,
                "static": [e.name for e in self.static_entries],
            }
            _, self._epoch = self.store.register(self.instance_id, self.heartbeat_ms, json.dumps(info), uuid.uuid4().hex)
            results = registry.upsert(self.store, self.static_entries, "static")
            removed = self.store.prune()
        except STORE_ERRORS as exc:
            if raise_errors:
                raise
            self._outage(exc)
            return
        counts: dict[str, int] = {}
        for outcome in results.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none"
        logger.info("redbeat_safe: instance %s registered %d static entries (%s)", self.instance_id, len(results), summary)
        if removed:
            logger.info("redbeat_safe: removed static entries no live beat declares: %s", ", ".join(removed))
        self._registered = True

    def _leave(self) -> None:
        """Flush acknowledgements, hand back unpublished claims, deregister.

        Uses a fresh connection: close() may run inside a signal handler that
        interrupted a command on the pooled one.
        """
        if self._store is None:
            return
        client: Client | None = None
        try:
            client = connect(self.settings.topology)
            store = self._make_store(client)
            store.ack(self._acks)
            store.ack(sorted(self._unpublished), release=True)
            self._acks, self._unpublished = [], set()
            if self._registered:
                store.prune(leaving=self.instance_id)
        except STORE_ERRORS as exc:
            logger.warning("redbeat_safe: could not deregister cleanly (%s); the lease and heartbeat expire on their own", exc)
        finally:
            if client is not None:
                client.close()

    # -- the pass ----------------------------------------------------------
    def _pass(self) -> float:
        store, lease = self.store, self.settings.lease_ms
        started = time.monotonic()
        reap_due = self._reap_at is not None and started >= self._reap_at
        peek = store.peek(self.instance_id, self.heartbeat_ms, lease, BATCH, REAP_BATCH, self._acks, confirm=reap_due)
        self._acks = []
        self._reap_at = None if peek.next_lease is None else time.monotonic() + (peek.next_lease - peek.now) / 1000 - 0.1
        if peek.epoch != self._epoch or not peek.registered:
            logger.warning("redbeat_safe: this instance's registration is gone (Redis restarted empty, or it was paused too long); registering again")
            self._registered = False
            return 0.0
        if peek.instances_expired:
            removed = store.prune()
            if removed:
                logger.info("redbeat_safe: removed static entries no live beat declares: %s", ", ".join(removed))
        self._lease_start = started
        self._reap(peek)
        more = len(peek.due) >= BATCH or len(peek.reaped) >= REAP_BATCH or self._reap_at == 0.0
        wake = [t for t in (peek.next_tick, peek.next_lease) if t is not None]
        if peek.due:
            planned = self._plan(peek)
            items = [it for it, _ in planned]
            self._lease_start = time.monotonic()
            now, won, confirmed = store.claim(items, lease)
            claimed = [(it, e) for (it, e), ok in zip(planned, won, strict=True) if ok and e is not None]
            more = more or not all(won)
            for it, _ in claimed:
                self._unpublished.update(member(it.name, t) for t in it.ticks)
                if it.next is not None:
                    if it.next <= now:
                        more = True
                    wake.append(it.next)
            if self._confirmed(confirmed):
                self._publish_claimed(claimed)
            else:  # held: the lease brings them back to a reaper, so do not track them
                self._unpublished.difference_update(member(it.name, t) for it, _ in claimed for t in it.ticks)
        else:
            now = peek.now
        if more:
            return 0.0
        if self._acks:
            store.ack(self._acks)
            self._acks = []
        if not wake:
            return float(self.max_interval)
        return max(0.0, min((min(wake) - now) / 1000.0, float(self.max_interval)))

    def _reap(self, peek: Peek) -> None:
        if peek.reaped and peek.confirmed is None:
            # reaped by a peek that did not WAIT (a lease ran out early): hand them
            # straight back, and the next peek reaps them again and WAITs
            self.store.ack([r.member for r in peek.reaped], release=True)
            self._reap_at = 0.0
            return
        if peek.reaped and not self._confirmed(bool(peek.confirmed)):
            return  # held: they come back when this new lease runs out
        for r in peek.reaped:
            entry = self._parse(r.name, r.definition)
            if entry is None:
                self._acks.append(r.member)  # nothing publishable; drop the record
                continue
            self._unpublished.add(r.member)
            logger.warning("redbeat_safe: re-publishing %s tick %d, whose claim expired unacknowledged", r.name, r.tick)
            if not self._send(entry, r.name, r.tick):
                return

    def _plan(self, peek: Peek) -> list[tuple[ClaimItem, EntryDef | None]]:
        """One claim per due entry; corrupt ones are parked (entry None)."""
        states = {d.name: registry.parse_state(d.state) for d in peek.due}
        missing = [d.name for d in peek.due if (st := states[d.name]) is not None and (d.name, st.definition_hash) not in self._defs]
        for name, raw in zip(missing, self.store.definitions(missing), strict=True):
            entry = self._parse(name, raw)
            st = states[name]
            if entry is not None and st is not None and entry.definition_hash == st.definition_hash:
                if len(self._defs) > _CACHE_LIMIT:
                    self._defs.clear()
                self._defs[(name, st.definition_hash)] = entry
        items: list[tuple[ClaimItem, EntryDef | None]] = []
        s = self.settings
        for d in peek.due:
            st = states[d.name]
            entry = None if st is None else self._defs.get((d.name, st.definition_hash))
            if st is None or entry is None:
                self._report(d.name, "its stored state or definition is unreadable or inconsistent")
                items.append((ClaimItem(d.name, d.score, None if st is None else st.version, [], None, park=True), None))
                continue
            sched = entry.schedule
            try:
                p = plan(
                    sched,
                    d.tick,
                    peek.now,
                    st.runs,
                    policy=sched.catchup or s.catchup,
                    grace_ms=self.grace_ms,
                    deadline_ms=s.starting_deadline_ms if sched.kind == "pattern" else None,
                    max_catchup=s.catchup_max,
                )
            except Exception:  # a stored schedule our arithmetic cannot follow
                logger.exception("redbeat_safe: entry %r: cannot compute its next tick; setting it aside", d.name)
                items.append((ClaimItem(d.name, d.score, st.version, [], None, park=True), None))
                continue
            if p.missed:
                logger.info("redbeat_safe: entry %r missed ticks since %d (policy %s): publishing %d", d.name, d.tick, sched.catchup or s.catchup, len(p.fire))
            items.append((ClaimItem(d.name, d.score, st.version, p.fire, p.next), entry))
        return items

    def _publish_claimed(self, claimed: list[tuple[ClaimItem, EntryDef]]) -> None:
        for it, entry in claimed:
            for t in it.ticks:
                if not self._send(entry, it.name, t):
                    return

    def _lease_left(self) -> bool:
        """Whether the lease taken at the last claim or reap is still safely ours.

        A beat that was paused (SIGSTOP, a long GC, a frozen VM) past its lease
        must not publish: another instance may have reaped the tick already.
        The tick stays in flight and the reaper (maybe this one) publishes it.
        """
        held = time.monotonic() - self._lease_start
        return held < self.settings.lease_ms / 1000.0 * 0.8

    def _send(self, entry: EntryDef, name: str, tick: int) -> bool:
        """Publish one tick; False (and leave it in flight for the reaper) on failure."""
        m = member(name, tick)
        if not self._lease_left():
            logger.warning("redbeat_safe: the lease on %s tick %d ran out before it was published; leaving it to the reaper", name, tick)
            return False
        logger.info("Scheduler: Sending due task %s (%s) for tick %d", name, entry.task, tick)
        try:
            publish(self.app, entry, self.settings.key_prefix, tick, producer=self.producer)
        except Exception as exc:
            if self._transient(exc):
                logger.error("redbeat_safe: publishing %s tick %d failed (%s); it stays claimed and is retried after the lease", name, tick, exc)
                return False
            # Retrying cannot help (arguments the task refuses, an unserialisable
            # value): Celery's beat would drop the tick too, but we say so loudly.
            logger.error("redbeat_safe: dropping %s tick %d: %s: %s (retrying would fail the same way)", name, tick, type(exc).__name__, exc)
        self._unpublished.discard(m)
        self._acks.append(m)
        self.published += 1
        return True

    # -- helpers -----------------------------------------------------------
    def _transient(self, exc: Exception) -> bool:
        """Whether a publish error is about the broker connection (worth retrying)."""
        connection = self.__dict__.get("connection") or self.app.connection_for_write()
        recoverable = tuple(connection.connection_errors) + tuple(connection.channel_errors)
        cause = exc.__cause__ or exc.__context__
        return any(isinstance(e, (OperationalError, OSError, TimeoutError) + recoverable) for e in (exc, cause) if e is not None)

    def _parse(self, name: str, raw: bytes | None) -> EntryDef | None:
        if raw is None:
            self._report(name, "its definition is missing")
            return None
        try:
            return EntryDef.from_json(name, raw)
        except DefinitionError as exc:
            self._report(name, str(exc))
            return None

    def _report(self, name: str, problem: str) -> None:
        if name not in self._reported:
            self._reported.add(name)
            logger.error("redbeat_safe: skipping entry %r: %s (every other entry keeps firing)", name, problem)

    def _confirmed(self, ok: bool) -> bool:
        """Whether claims may be published (``redbeat_safe_wait_replicas``); logs once per shortfall.

        An unconfirmed claim may vanish in a failover and be claimed again on
        the new primary, so it is held back: it stays leased, and the reaper
        publishes it (same task id) once a later WAIT confirms it.
        """
        if ok:
            if self._unconfirmed_since is not None:
                logger.warning("redbeat_safe: replicas confirm claims again after %.1fs", time.monotonic() - self._unconfirmed_since)
                self._unconfirmed_since = None
            return True
        if self._unconfirmed_since is None:
            self._unconfirmed_since = time.monotonic()
            s = self.settings
            logger.error("redbeat_safe: fewer than %d replica(s) confirmed a claim within %d ms (redbeat_safe_wait_replicas); "
                         "holding claimed ticks back until they do, nothing is lost meanwhile", s.wait_replicas, s.wait_timeout_ms)
        return False

    def _outage(self, exc: Exception) -> float:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            logger.error("redbeat_safe: Redis unavailable (%s: %s); retrying, nothing is lost meanwhile", type(exc).__name__, exc)
        delay = min(self._retry, float(self.max_interval))
        self._retry = min(self._retry * 2, 5.0)
        return delay
