"""One instance's side of the claim protocol, independent of Celery.

A pass (``run_once``) is: peek (acknowledge what was published, heartbeat,
re-lease expired claims to us, list due entries), plan each due entry's ticks
with the misfire policy, claim them with a compare-and-set that advances the
entry in the same step, publish, and say how long to sleep. Publishing is a
callback, so the Celery adapter and the property tests drive the same code.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import __version__, registry
from .catchup import plan
from .config import Settings
from .definitions import DefinitionError, EntryDef
from .dispatch import task_id_for
from .store import Ack, ClaimItem, Peek, RedisStore, member

logger = logging.getLogger("redbeat_safe")

#: Entries looked at per round trip; a full batch means "go again at once".
BATCH = 200
REAP_BATCH = 100
_CACHE_LIMIT = 100_000


class PublishError(Exception):
    """Raised by a publish callback. Transient errors leave the tick in flight
    (re-published after the lease); permanent ones drop it: retrying cannot help."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


#: (entry, entry name, nominal tick ms) -> None; raises PublishError
Publish = Callable[[EntryDef, str, int], None]


@dataclass
class Pass:
    """What prepare() saw and planned, for finish() to claim."""

    peek: Peek
    planned: list[tuple[ClaimItem, EntryDef | None]]
    lost: bool = False  #: our registration is gone; register again first
    read_at: float = 0.0  #: monotonic time at which peek.now was the server's time


class Engine:
    def __init__(
        self,
        store: RedisStore,
        settings: Settings,
        publish: Publish,
        max_interval: float,
        static_entries: Sequence[EntryDef] = (),
        instance_id: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.publish = publish
        self.max_interval = float(max_interval)
        self.static_entries = list(static_entries)
        self.instance_id = instance_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.registered = False
        self.published = 0
        self._epoch = ""
        self._acks: list[Ack] = []
        self._unpublished: set[str] = set()
        self._defs: dict[tuple[str, str], EntryDef] = {}
        self._reported: set[str] = set()
        self._lease_start = 0.0
        self._reap_at: float | None = 0.0  #: when a lease may next expire (monotonic): peek WAITs then
        self._unconfirmed_since: float | None = None

    @property
    def heartbeat_ms(self) -> int:
        return int(max(30.0, 3 * self.max_interval) * 1000) + self.settings.lease_ms

    @property
    def grace_ms(self) -> int:
        """A due tick later than this was missed (no instance ran), not just slept through."""
        return self.settings.lease_ms + int(self.max_interval * 1000)

    # -- membership --------------------------------------------------------
    def register(self) -> dict[str, str]:
        """Announce this instance, register the static entries, prune stale ones."""
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": int(time.time() * 1000),
            "version": __version__,
            "ttl": self.heartbeat_ms,
            "static": [e.name for e in self.static_entries],
        }
        _, self._epoch = self.store.register(self.instance_id, self.heartbeat_ms, json.dumps(info), uuid.uuid4().hex)
        results = registry.upsert(self.store, self.static_entries, "static")
        self._prune()
        self.registered = True
        return results

    def _prune(self) -> None:
        removed = self.store.prune()
        if removed:
            logger.info("redbeat_safe: removed static entries no live beat declares: %s", ", ".join(removed))

    def leave(self, store: RedisStore) -> None:
        """Flush acknowledgements, hand back unpublished claims at once, deregister."""
        store.ack(self._acks, self.instance_id)
        store.release(sorted(self._unpublished))
        self._acks, self._unpublished = [], set()
        if self.registered:
            store.prune(leaving=self.instance_id)

    # -- the pass ----------------------------------------------------------
    def run_once(self) -> float:
        """One pass; returns the seconds to sleep before the next (0: go again now)."""
        return self.finish(self.prepare())

    def prepare(self) -> Pass:
        """First half of a pass: peek (acks, heartbeat, reaping) and plan the claims."""
        started = time.monotonic()
        reap_due = self._reap_at is not None and started >= self._reap_at
        peek = self.store.peek(self.instance_id, self.heartbeat_ms, self.settings.lease_ms, BATCH, REAP_BATCH, self._acks, confirm=reap_due)
        read_at = time.monotonic()
        self._acks = []
        self._reap_at = None if peek.next_lease is None else time.monotonic() + (peek.next_lease - peek.now) / 1000 - 0.1
        if peek.epoch != self._epoch or not peek.registered:
            logger.warning("redbeat_safe: this instance's registration is gone (Redis restarted empty, or it was paused too long); registering again")
            self.registered = False
            return Pass(peek, [], lost=True, read_at=read_at)
        if peek.instances_expired:
            self._prune()
        self._lease_start = started
        self._reap(peek)
        return Pass(peek, self._plan(peek) if peek.due else [], read_at=read_at)

    def finish(self, p: Pass) -> float:
        """Second half: claim (compare-and-set), publish what was won, decide the sleep.

        Another instance may have claimed the same ticks between prepare() and
        finish(); the compare-and-set is what makes that harmless.
        """
        if p.lost:
            return 0.0
        peek, store = p.peek, self.store
        more = len(peek.due) >= BATCH or len(peek.reaped) >= REAP_BATCH or self._reap_at == 0.0
        wake = [t for t in (peek.next_tick, peek.next_lease) if t is not None]
        now, read_at = peek.now, p.read_at
        if p.planned:
            self._lease_start = time.monotonic()
            now, won, confirmed = store.claim([it for it, _ in p.planned], self.settings.lease_ms)
            read_at = time.monotonic()
            claimed = [(it, e) for (it, e), ok in zip(p.planned, won, strict=True) if ok and e is not None]
            more = more or not all(won)
            for it, _ in claimed:
                self._unpublished.update(member(it.name, t) for t in it.ticks)
                if it.next is not None:
                    more = more or it.next <= now
                    wake.append(it.next)
            if self._confirmed(confirmed):
                self._publish_claimed(claimed)
            else:  # held: the lease brings them back to a reaper, so do not track them
                self._unpublished.difference_update(member(it.name, t) for it, _ in claimed for t in it.ticks)
        if more:
            return 0.0
        if self._acks:
            store.ack(self._acks, self.instance_id)
            self._acks = []
        if not wake:
            return self.max_interval
        # ``now`` was read before publishing: what that took comes off the sleep
        elapsed = time.monotonic() - read_at
        return max(0.0, min((min(wake) - now) / 1000.0 - elapsed, self.max_interval))

    def _reap(self, peek: Peek) -> None:
        if peek.reaped and peek.confirmed is None:
            # reaped by a peek that did not WAIT (a lease ran out early): hand them
            # straight back, and the next peek reaps them again and WAITs
            self.store.release([r.member for r in peek.reaped])
            self._reap_at = 0.0
            return
        if peek.reaped and not self._confirmed(bool(peek.confirmed)):
            return  # held: they come back when this new lease runs out
        for r in peek.reaped:
            entry = self._parse(r.name, r.definition)
            if entry is None:
                self._acks.append(Ack(r.member, "", "x"))  # nothing publishable; drop the record
                continue
            self._unpublished.add(r.member)
            logger.warning("redbeat_safe: re-publishing %s tick %d, whose claim expired unacknowledged", r.name, r.tick)
            if not self._send(entry, r.name, r.tick, kind="r"):
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
            policy = sched.catchup or s.catchup
            try:
                p = plan(
                    sched,
                    d.tick,
                    peek.now,
                    st.runs,
                    policy=policy,
                    grace_ms=self.grace_ms,
                    deadline_ms=s.starting_deadline_ms if sched.kind == "pattern" else None,
                    max_catchup=s.catchup_max,
                )
            except Exception:  # a stored schedule our arithmetic cannot follow
                logger.exception("redbeat_safe: entry %r: cannot compute its next tick; setting it aside", d.name)
                items.append((ClaimItem(d.name, d.score, st.version, [], None, park=True), None))
                continue
            if p.missed:
                logger.info("redbeat_safe: entry %r missed ticks since %d (policy %s): publishing %d", d.name, d.tick, policy, len(p.fire))
            items.append((ClaimItem(d.name, d.score, st.version, p.fire, p.next), entry))
        return items

    def _publish_claimed(self, claimed: list[tuple[ClaimItem, EntryDef]]) -> None:
        for it, entry in claimed:
            for t in it.ticks:
                if not self._send(entry, it.name, t):
                    return

    def _lease_left(self) -> bool:
        """Whether the lease taken at the last claim or reap is still safely ours.

        An instance that was paused (SIGSTOP, a long GC, a frozen VM) past its
        lease must not publish: another instance may have reaped the tick
        already. The tick stays in flight and the reaper (maybe us) sends it.
        """
        return time.monotonic() - self._lease_start < self.settings.lease_ms / 1000.0 * 0.8

    def _send(self, entry: EntryDef, name: str, tick: int, kind: str = "s") -> bool:
        """Publish one tick; False (and leave it in flight for the reaper) on a transient failure."""
        m = member(name, tick)
        if not self._lease_left():
            logger.warning("redbeat_safe: the lease on %s tick %d ran out before it was published; leaving it to the reaper", name, tick)
            return False
        logger.info("Scheduler: Sending due task %s (%s) for tick %d", name, entry.task, tick)
        try:
            self.publish(entry, name, tick)
        except PublishError as exc:
            if exc.transient:
                logger.error("redbeat_safe: publishing %s tick %d failed (%s); it stays claimed and is retried after the lease", name, tick, exc)
                return False
            # Retrying cannot help (arguments the task refuses, an unserialisable
            # value): Celery's beat would drop the tick too, but we say so loudly.
            logger.error("redbeat_safe: dropping %s tick %d: %s (retrying would fail the same way)", name, tick, exc)
            kind = "x"
        self._unpublished.discard(m)
        self._acks.append(Ack(m, task_id_for(self.settings.key_prefix, name, tick), kind))
        self.published += 1
        return True

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
