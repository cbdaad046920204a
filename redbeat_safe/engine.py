"""One instance's side of the claim protocol, independent of Celery.

A pass (``run_once``) is: peek (acknowledge what was published, heartbeat,
re-lease expired claims to us, list due entries), plan each due entry's ticks
with the misfire policy, claim them with a compare-and-set that advances the
entry in the same step, publish, and say how long to sleep. Publishing is a
callback, so the Celery adapter and the property tests drive the same code.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from celery.exceptions import ImproperlyConfigured

from . import __version__, registry
from .catchup import Plan, plan
from .config import Settings
from .definitions import DefinitionError, EntryDef
from .dispatch import expiry_ms, jitter_offset, task_id_for
from .schedules import iso
from .store import (
    ASIDE,
    CHANGED,
    CLAIMED,
    LAYOUT,
    SPLIT_WINDOW_MS,
    Ack,
    Claimed,
    ClaimItem,
    Deferred,
    Due,
    Peek,
    RedisStore,
    WakeUnavailable,
    definition_hash,
    member,
)

logger = logging.getLogger("redbeat_safe")

#: Entries looked at per round trip; a full batch means "go again at once".
BATCH = 200
#: How often a beat removes finished entries past their retention, and how many at most per call.
SWEEP_EVERY = 30.0
SWEEP_BATCH = 500  #: at most this many finished entries removed per call (Redis is busy ~15 ms)
#: A sweep waits for a pass with nothing due, but never longer than this (s).
SWEEP_LATEST = 10.0
#: The overlap policies as the claim script names them ("" : allow).
_OVERLAP = {"allow": "", "skip": "skip", "buffer_one": "buffer", "replace": "replace"}
#: Why the misfire policy left ticks out, as the run ledger records it.
_DROPPED = {"coalesce": "coalesced", "skip": "missed", "all": "missed"}
#: In a burst, after this many publishes the beat checks whether the next peek has
#: answered, to plan the next batch and send its claim while this one goes out.
PIPELINE_EVERY = 20
REAP_BATCH = 100
_CACHE_LIMIT = 100_000
_NOT_CACHED: tuple[str, EntryDef | None] = ("", None)
#: A pass that made no progress (every claim lost a race) waits at least this
#: long before the next, so no record, however read, can make the loop spin.
NO_PROGRESS_SLEEP = 0.05
#: A pass that did nothing sleeps at least this long, even for a tick due sooner.
MIN_SLEEP = 0.001
#: How late Redis may end a blocking wait (it checks their timeouts at its `hz`, 10/s by
#: default): a sleep that must end at a tick waits on Redis until this long before it.
TIMER_SLACK = 0.12
#: The same problem with the same entry is logged again after this long.
REPORT_EVERY = 300.0
#: A beat heartbeats at every pass, and passes are at most one loop interval apart
#: (plus a publish or a WAIT); one silent for this long plus two loop intervals
#: (12 s with the default 1 s loop) is shown as dead and not counted by `health`.
LIVENESS_BASE_MS = 10_000
_REPORT_LIMIT = 10_000


class PublishError(Exception):
    """Raised by a publish callback. Transient errors leave the tick in flight
    (re-published after the lease); permanent ones drop it: retrying cannot help."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


#: (entry, entry name, nominal tick ms) -> None; raises PublishError
Publish = Callable[[EntryDef, str, int], None]


class LayoutRefused(ImproperlyConfigured):  # type: ignore[misc]
    """The store's keys use a layout this version does not know: a beat must not touch them."""


class Observer:
    """What a beat reports about its own work, for a per-beat exporter (the optional
    ``redbeat_safe.metrics`` module implements it). Does nothing by default; the core
    only calls these methods, it never imports an exporter."""

    def passed(self) -> None:
        """A scheduling pass ended."""

    def claims(self, won: int, lost: int) -> None:
        """A claim call: entries won, and lost to another writer (compare-and-set conflicts)."""

    def published(self, seconds: float, ok: bool) -> None:
        """One publish to the broker and how long it took (ok False: it failed)."""

    def redis(self, call: str, seconds: float) -> None:
        """One script call's round trip (peek, claim, ack)."""

    def outage(self, down: bool) -> None:
        """Redis became unavailable (True) or reachable again (False)."""


@dataclass
class Look:
    """A peek and when it was read (monotonic): what ``plan_pass`` works from."""

    peek: Peek
    read_at: float
    started: float
    prepared: Pass | None = None  #: a pass already planned and claimed in a burst (see Engine._prefetch)


@dataclass
class Pass:
    """What prepare() saw and planned, for finish() to claim."""

    peek: Peek
    planned: list[tuple[ClaimItem, EntryDef | None]]
    lost: bool = False  #: our registration is gone; register again first
    read_at: float = 0.0  #: monotonic time at which peek.now was the server's time
    claim: Deferred[tuple[int, list[Claimed], bool]] | None = None  #: the claim of ``planned``, already sent


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
        #: when this process started scheduling (wall clock ms); kept when it registers
        #: again after Redis restarted empty, so `status` says when the process started
        self.started_ms = int(time.time() * 1000)
        self._epoch = ""
        self._acks: list[Ack] = []
        #: claims this instance holds and has not published: member -> its lease deadline (server ms)
        self._unpublished: dict[str, int] = {}
        self._server_now = 0  #: the server's clock at the latest peek or claim
        #: entry -> (definition hash, parsed definition): one version per entry, the one
        #: its state names, so memory follows the number of entries, not of changes
        self._defs: dict[str, tuple[str, EntryDef]] = {}
        #: entry -> {problem: when it was last logged (monotonic)}; cleared when the entry is claimed again
        self._reported: dict[str, dict[str, float]] = {}
        #: entries whose claim lost with nothing changed: name -> (score, version) it lost with
        self._stuck: dict[str, tuple[bytes, int]] = {}
        #: definitions whose JSON this version cannot read: (name, hash) -> why
        self._unreadable: dict[tuple[str, str], str] = {}
        #: ticks held back for their jitter: (when, monotonic; a sequence number; tick; entry name; entry; lease start; lease ms)
        self._delayed: list[tuple[float, int, int, str, EntryDef, float, int]] = []
        self._held_seq = 0
        self._no_ledger: set[str] = set()
        self._sweep_at = time.monotonic() + SWEEP_EVERY  #: when this beat next removes finished entries  #: entries whose overlap policy was said to be not applied
        self._next: Deferred[Peek] | None = None  #: a burst's next peek, sent while publishing
        self._ahead: Pass | None = None  #: a burst's next pass, planned and its claim sent, while publishing
        self._reap_at: float | None = 0.0  #: when a lease may next expire (monotonic): peek WAITs then
        self._unconfirmed_since: float | None = None
        #: whether the sleep between passes is a wait for wake-ups (see ``look``)
        self.wakeups = True
        self._wakeups_retry = 0.0
        self._wake_id = "0-0"  #: the latest wake-up the last peek read
        #: whether the last pass's sleep ends at a tick or lease (kept to the ms) or at the loop interval
        self.wake_precise = False
        self.wakeups_seen = 0  #: waits a wake-up ended early
        self.observer = Observer()
        #: (task id, terminate) -> None: revokes a run that overlap='replace' replaces (the Celery adapter sets it)
        self.revoke: Callable[[str, bool], None] | None = None

    @property
    def heartbeat_ms(self) -> int:
        return int(max(30.0, 3 * self.max_interval) * 1000) + self.settings.lease_ms

    @property
    def live_ms(self) -> int:
        """How long after its last heartbeat a beat is taken for dead by readers (status,
        health, metrics). Shorter than ``heartbeat_ms``, the registration's own timeout,
        which stays long so that a beat cut off for a while keeps its static entries."""
        return LIVENESS_BASE_MS + int(2 * self.max_interval * 1000)

    @property
    def split_ms(self) -> int:
        """How long a beat that stopped doing its part of a burst keeps it (peek.lua):
        at most half the lease, so that its ticks are taken over while late, not missed
        (the grace is lease + loop interval)."""
        return max(1, min(SPLIT_WINDOW_MS, self.settings.lease_ms // 2))

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
            "started": self.started_ms,
            "version": __version__,
            "ttl": self.heartbeat_ms,
            "live": self.live_ms,
            "static": [e.name for e in self.static_entries],
        }
        _, self._epoch, layout = self.store.register(self.instance_id, self.heartbeat_ms, json.dumps(info), uuid.uuid4().hex)
        if layout != LAYOUT:  # the script wrote nothing
            raise LayoutRefused(
                f"redbeat_safe: the keys under {{{self.settings.key_prefix}}}: use key layout {layout!r}, and this version "
                f"({__version__}) knows layout {LAYOUT!r} only: it does not read or write them. Run the version that wrote them "
                "(or a newer one), or give this beat another redbeat_safe_key_prefix; see docs/upgrading.md")
        results = registry.upsert(self.store, self.static_entries, "static")
        self._prune()
        self.registered = True
        return results

    def _prune(self) -> None:
        removed = self.store.prune()
        if removed:
            logger.info("redbeat_safe: removed static entries no live beat declares: %s", ", ".join(removed))

    def leave(self, store: RedisStore) -> None:
        """Flush acknowledgements, hand back the unpublished claims still held, deregister."""
        try:
            self.settle()  # a burst's claim sent ahead: its ticks are ours to hand back
        except Exception as exc:  # noqa: BLE001 - unread, they come back to a reaper when their leases end
            logger.warning("redbeat_safe: could not read the claims sent ahead (%s); they are re-published when their leases end", exc)
        store.ack(self._acks, self.instance_id)
        store.release(sorted(self._held()), self.instance_id)
        self._acks, self._unpublished = [], {}
        if self.registered:
            store.prune(leaving=self.instance_id)

    def _held(self) -> list[str]:
        """Unpublished claims whose lease has not run out (forgetting the others: the reaper has them)."""
        for m in [m for m, until in self._unpublished.items() if until <= self._server_now]:
            del self._unpublished[m]
        return list(self._unpublished)

    def _hold(self, members: Sequence[str], now: int, lease_ms: int | None = None) -> None:
        """Note claims made (or re-leased) at server time ``now``, until they are published."""
        self._server_now = max(self._server_now, now)
        for m in members:
            self._unpublished[m] = now + (lease_ms or self.settings.lease_ms)

    def _lease_for(self, planned: Sequence[tuple[ClaimItem, EntryDef | None]]) -> int:
        """A batch's lease: longer by the largest jitter in it, so a tick held back for its
        jitter is still this beat's when it goes out."""
        return self.settings.lease_ms + max((e.schedule.jitter_ms for _, e in planned if e is not None), default=0)

    def _jittered(self, claimed: list[tuple[ClaimItem, EntryDef]], now: int, read_at: float, lease_start: float,
                  lease_ms: int) -> list[tuple[ClaimItem, EntryDef]]:
        """Hold back the ticks whose jitter puts them after ``now`` (server ms, read at
        ``read_at``); the rest go out now. A held one is published when its time comes
        (``_publish_delayed``), with its nominal tick, task id and headers."""
        out = []
        for it, entry in claimed:
            jitter = entry.schedule.jitter_ms
            if not jitter:
                out.append((it, entry))
                continue
            now_ticks = []
            for t in it.ticks:
                at = t + jitter_offset(self.settings.key_prefix, it.name, t, jitter)
                if at <= now:
                    now_ticks.append(t)
                else:
                    due = read_at + (at - now) / 1000
                    self._held_seq += 1
                    heapq.heappush(self._delayed, (due, self._held_seq, t, it.name, entry, lease_start, lease_ms))
            if now_ticks:
                out.append((dataclasses.replace(it, ticks=now_ticks), entry))
        return out

    def _publish_delayed(self) -> float | None:
        """Publish the held-back ticks whose time has come; the monotonic time the next is due."""
        while self._delayed and self._delayed[0][0] <= time.monotonic():
            _, _, tick, name, entry, lease_start, lease_ms = heapq.heappop(self._delayed)
            if member(name, tick) not in self._unpublished:
                continue  # handed back (a clean stop), or its lease ran out: the reaper has it
            self._send(entry, name, tick, lease_start, lease_ms=lease_ms)
        return self._delayed[0][0] if self._delayed else None

    # -- the pass ----------------------------------------------------------
    def run_once(self) -> float:
        """One pass; returns the seconds to sleep before the next (0: go again now)."""
        return self.finish(self.prepare())

    def prepare(self, wait: float = 0.0) -> Pass:
        """First half of a pass: peek (acks, heartbeat, reaping) and plan the claims."""
        return self.plan_pass(self.look(wait))

    def look(self, wait: float = 0.0) -> Look:
        """The peek, after waiting up to ``wait`` seconds for a wake-up (a change made
        through the API, a tick handed back): the sleep between passes, spent blocked
        on Redis instead of in ``time.sleep``, so a change ends it at once.

        Waits longer than one blocking call may take (``block_cap_ms``) are made of
        plain waits, the last one pipelined with the peek. When the server refuses
        the wait (the wake key damaged, an ACL without XREAD), the beat says so once
        and sleeps its loop interval as it would without wake-ups, and tries again
        after REPORT_EVERY."""
        if self._ahead is not None:  # a burst: the next pass was planned, and its claim sent, while publishing
            ahead, self._ahead = self._ahead, None
            return Look(ahead.peek, ahead.read_at, ahead.read_at, prepared=ahead)
        if self._next is not None:  # a burst: the next peek was sent while publishing
            sent, self._next = self._next, None
            peek = sent.result()
            self._after_peek(peek, None)
            return Look(peek, time.monotonic(), sent.sent_at)
        store = self.store
        block_ms = 0
        woken: bool | None = None
        if wait > 0 and self.wakeups:
            deadline = time.monotonic() + wait
            # Redis ends a blocking wait at its own event-loop ticks (`hz`, 10 a second by
            # default), so a wait's timeout can come ~100 ms late. Where the sleep ends at a
            # tick (not at the loop interval), the wait stops short and a local sleep keeps
            # the time; a change still ends the wait at once, whatever hz is.
            until = deadline - (TIMER_SLACK if self.wake_precise else 0.0)
            cap = store.block_cap_ms
            try:
                while (until - time.monotonic()) * 1000 > (cap if not self.wake_precise else 10):
                    if store.wait_for_wake(self._wake_id, min(cap, int((until - time.monotonic()) * 1000))):
                        woken = True
                        break
            except WakeUnavailable as exc:
                self._no_wakeups(str(exc))
            if woken is None:
                if self.wake_precise or not self.wakeups:
                    time.sleep(max(0.0, deadline - time.monotonic()))
                else:
                    block_ms = int((deadline - time.monotonic()) * 1000)
        started = time.monotonic()
        # the peek runs when the wait ends: a lease that runs out by then is reaped with a WAIT
        reap_due = self._reap_at is not None and started + block_ms / 1000 >= self._reap_at
        acks, self._acks = self._acks, []  # the peek acknowledges them; kept if it fails
        try:
            peek = self.store.peek(self.instance_id, self.heartbeat_ms, self.settings.lease_ms, BATCH, REAP_BATCH, acks,
                                   confirm=reap_due, split_ms=self.split_ms, block_ms=block_ms, wake_id=self._wake_id)
        except BaseException:
            self._acks = acks + self._acks
            raise
        read_at = time.monotonic()
        self._after_peek(peek, woken)
        self.observer.redis("peek", read_at - started)
        return Look(peek, read_at, started)

    def _after_peek(self, peek: Peek, woken: bool | None) -> None:
        if peek.wake_error is not None:
            self._no_wakeups(peek.wake_error)
        elif peek.woken is not None:
            woken = peek.woken
        if woken:
            self.wakeups_seen += 1
        self._wake_id = peek.wake_id or self._wake_id

    def _no_wakeups(self, why: str) -> None:
        self.wakeups = False
        self._wakeups_retry = time.monotonic() + REPORT_EVERY
        logger.warning("redbeat_safe: cannot wait for wake-ups (%s); sleeping the loop interval instead, so changes made through "
                       "the API are seen within it. Trying again in %.0fs", why, REPORT_EVERY)

    def plan_pass(self, look: Look) -> Pass:
        """What follows the peek: hand out the reaped ticks, register again if needed, plan."""
        if look.prepared is not None:
            return look.prepared
        peek, read_at, started = look.peek, look.read_at, look.started
        if not self.wakeups and time.monotonic() >= self._wakeups_retry:
            self.wakeups = True
        self._server_now = max(self._server_now, peek.now)
        self._held()
        self._reap_at = None if peek.next_lease is None else time.monotonic() + (peek.next_lease - peek.now) / 1000 - 0.1
        # what the peek re-leased to us is ours to publish now, registered or not (its lease began when it was sent)
        self._reap(peek, started)
        if peek.epoch != self._epoch or not peek.registered:
            logger.warning("redbeat_safe: this instance's registration is gone (Redis restarted empty, or it was paused too long); registering again")
            self.registered = False
            return Pass(peek, [], lost=True, read_at=read_at)
        if peek.instances_expired:
            self._prune()
        if self.settings.finished_retention_ms is not None and time.monotonic() >= self._sweep_at and (
                not peek.due or time.monotonic() >= self._sweep_at + SWEEP_LATEST):
            self._sweep()  # housekeeping in a pass with nothing due: it never delays a tick
        return Pass(peek, self._plan(peek) if peek.due else [], read_at=read_at)

    def _sweep(self) -> None:
        """Remove entries finished longer than ``redbeat_safe_finished_retention`` ago, a
        batch per SWEEP_EVERY (any beat may do it; the script checks each again)."""
        self._sweep_at = time.monotonic() + SWEEP_EVERY
        try:
            removed = self.store.sweep_finished(self.settings.finished_retention_ms or 0, SWEEP_BATCH)
        except Exception as exc:  # noqa: BLE001 - housekeeping: never a reason for a pass to fail
            logger.warning("redbeat_safe: removing finished entries failed (%s: %s); trying again in %.0fs", type(exc).__name__, exc,
                           SWEEP_EVERY)
            return
        if removed:
            logger.info("redbeat_safe: removed %d entries finished more than the retention ago", len(removed))
            if len(removed) >= SWEEP_BATCH:
                self._sweep_at = time.monotonic()  # more are waiting: the next pass with nothing due goes on

    def finish(self, p: Pass) -> float:
        try:
            return self._finish(p)
        finally:
            self.observer.passed()

    def _ack(self) -> None:
        started = time.monotonic()
        self.store.ack(self._acks, self.instance_id)
        self.observer.redis("ack", time.monotonic() - started)
        self._acks = []

    def _finish(self, p: Pass) -> float:
        """Second half: claim (compare-and-set), publish what was won, decide the sleep.

        Another instance may have claimed the same ticks between prepare() and
        finish(); the compare-and-set is what makes that harmless. Only a pass
        that made progress (claimed, set aside or re-published something) may
        ask to go again at once: one that lost every race waits a little, so
        no record can make the loop spin.
        """
        if p.lost:
            if self._acks:
                self._ack()
            return 0.0
        peek, store = p.peek, self.store
        self._publish_delayed()
        progress = bool(peek.reaped)
        # more is due than this peek returned (a full batch, or other instances' parts of a
        # burst, which shift as everyone claims): after progress, look again at once
        more = len(peek.due) >= BATCH or peek.due_total > len(peek.due) or len(peek.reaped) >= REAP_BATCH or self._reap_at == 0.0
        raced = False
        wake = [t for t in (peek.next_tick, peek.next_lease) if t is not None]
        if peek.due_total > len(peek.due):  # other instances have the rest of a burst: look again before
            wake.append(peek.now + self.split_ms)  # their part would be ours, should they die (a pass that won nothing)
        now, read_at = peek.now, p.read_at
        if p.planned:
            if p.claim is not None:  # sent while the previous batch was being published
                lease_start = p.claim.sent_at
                now, codes, confirmed = p.claim.result()
            else:
                lease_start = time.monotonic()
                now, codes, confirmed = store.claim([it for it, _ in p.planned], self._lease_for(p.planned), self.instance_id)
            read_at = time.monotonic()
            self.observer.redis("claim", read_at - lease_start)
            claimed = []
            for (it, entry), c in zip(p.planned, codes, strict=True):
                if c.code == CLAIMED and entry is not None:
                    if c.ticks is not None:  # an overlap policy chose which of the planned ticks go out
                        if c.revoke is not None:
                            self._revoke(entry, *c.revoke)
                        it = dataclasses.replace(it, ticks=c.ticks)
                    claimed.append((it, entry))
                    self._stuck.pop(it.name, None)
                    self._reported.pop(it.name, None)  # healthy again: its next problem is news
                elif c.code == ASIDE:
                    progress = True
                    self._report(it.name, f"set aside: {c.aside}", level=logging.ERROR)
                elif c.code == CHANGED:
                    raced = True
                    self._note_lost(it)
            progress = progress or bool(claimed)
            self.observer.claims(len(claimed), sum(1 for c in codes if c.code == CHANGED))
            lease_ms = self._lease_for(p.planned)
            for it, _ in claimed:
                self._hold([member(it.name, t) for t in it.ticks], now, lease_ms)
                if it.next is not None:
                    more = more or it.next <= now
                    wake.append(it.next)
            if self._confirmed(confirmed):
                # alone on a burst: claim the next batch while this one goes out. Shared, the
                # parts shift as everyone claims, and reading ahead would take others' parts
                if more and claimed and peek.sharing == 1 and self.store.pipelining:
                    self._prefetch()
                self._publish_claimed(self._jittered(claimed, now, read_at, lease_start, lease_ms), lease_start)
            else:  # held: the lease brings them back to a reaper, so do not track them
                for it, _ in claimed:
                    for t in it.ticks:
                        self._unpublished.pop(member(it.name, t), None)
        if progress and (more or raced):
            return 0.0
        held = self._publish_delayed()  # what falls due now goes out before the acknowledgements
        if self._acks:
            self._ack()
        self.wake_precise = False
        if raced:
            return NO_PROGRESS_SLEEP
        if not wake and not self._delayed:
            return self.max_interval
        wake = wake or [now + int(self.max_interval * 1000)]
        # ``now`` was read before publishing: what that took comes off the sleep
        elapsed = time.monotonic() - read_at
        # a pass that did nothing never asks to go again at once (a tick due in less
        # than the pass took is due by the time it wakes)
        floor = 0.0 if progress else MIN_SLEEP
        until = (min(wake) - now) / 1000.0 - elapsed
        if held is not None:  # a tick held back for its jitter goes out then
            until = min(until, held - time.monotonic())
        self.wake_precise = until < self.max_interval  # a tick or a lease ends this sleep, not the loop interval
        return max(floor, min(until, self.max_interval))

    def _note_lost(self, it: ClaimItem) -> None:
        """A claim lost although the entry had not changed twice in a row means the two
        sides of the protocol disagree about it: it is set aside rather than retried."""
        key = (it.score, it.version)
        if self._stuck.get(it.name) == key:
            self._stuck[it.name] = (b"", -2)  # the next plan parks it
        elif len(self._stuck) < _REPORT_LIMIT:
            self._stuck[it.name] = key

    def _reap(self, peek: Peek, lease_start: float) -> None:
        if peek.reaped and peek.confirmed is None:
            # reaped by a peek that did not WAIT (a lease ran out early): hand them
            # straight back, and the next peek reaps them again and WAITs
            self.store.release([r.member for r in peek.reaped], self.instance_id)
            self._reap_at = 0.0
            return
        if peek.reaped and not self._confirmed(bool(peek.confirmed)):
            return  # held: they come back when this new lease runs out
        for r in peek.reaped:
            parsed = r.parsed
            if parsed is None:
                self._report(r.member, "an in-flight record is not '<tick>:<entry>'; dropping it", level=logging.ERROR)
                self._acks.append(Ack(r.member, "", "x"))
                continue
            tick, name = parsed
            raw = r.definition
            if raw is None:  # its claimed copy is gone: the entry's current definition, if any, is the best we have
                raw = (self.store.definitions([name]) or [None])[0]
                if raw is not None:
                    self._report(name, f"the definition tick {tick} was claimed under is missing; sending it with the current one")
            entry = self._parse(name, raw)
            if entry is None:
                self._report(name, f"dropping {self._tick(name, tick)}: nothing to publish it with", level=logging.ERROR)
                self._acks.append(Ack(r.member, "", "x"))  # nothing publishable; drop the record
                continue
            self._hold([r.member], peek.now)
            logger.warning("redbeat_safe: re-publishing %s, whose claim expired unacknowledged", self._tick(name, tick))
            if not self._send(entry, name, tick, lease_start, kind="r"):
                return

    def _plan(self, peek: Peek) -> list[tuple[ClaimItem, EntryDef | None]]:
        """One claim per due entry. One the engine cannot read is sent to the claim to be
        checked (the script sets it aside if its records are damaged; a change racing
        this pass is no damage), one it cannot follow is parked (entry None)."""
        defs = self._defs
        missing = {d.name: d.definition_hash for d in peek.due if d.version >= 0 and defs.get(d.name, _NOT_CACHED)[0] != d.definition_hash}
        if missing:
            names = sorted(missing)
            for name, raw in zip(names, self.store.definitions(names), strict=True):
                dh = missing[name]
                if raw is None or definition_hash(raw) != dh:
                    continue  # not the definition the state names: damaged or changed meanwhile
                try:
                    parsed = EntryDef.from_json(name, raw)
                except DefinitionError as exc:
                    self._unreadable[(name, dh)] = str(exc)
                    continue
                if len(defs) >= _CACHE_LIMIT and name not in defs:
                    defs.clear()  # entries removed since: start again from what is due
                defs[name] = (dh, parsed)
        items: list[tuple[ClaimItem, EntryDef | None]] = []
        s = self.settings
        for d in peek.due:
            cached = defs.get(d.name, _NOT_CACHED)
            entry = cached[1] if d.version >= 0 and cached[0] == d.definition_hash else None
            if self._stuck.get(d.name) == (b"", -2):
                del self._stuck[d.name]
                items.append((self._park(d, "its claim kept failing although nothing changed (the store and this beat read it differently)"), None))
                continue
            if entry is None:
                problem = self._unreadable.pop((d.name, d.definition_hash), None)
                if problem is not None:
                    items.append((self._park(d, f"its definition cannot be read: {problem}"), None))
                else:  # damaged, or changed since the peek: the claim script tells which
                    items.append((ClaimItem(d.name, d.score, d.version, [], None, mode="check"), None))
                continue
            sched = entry.schedule
            policy = sched.catchup or s.catchup
            try:
                p = plan(
                    sched,
                    d.tick,
                    peek.now,
                    d.runs,
                    policy=policy,
                    grace_ms=self.grace_ms,
                    deadline_ms=s.starting_deadline_ms if sched.kind == "pattern" else None,
                    max_catchup=s.catchup_max,
                )
            except Exception as exc:  # a stored schedule our arithmetic cannot follow
                logger.exception("redbeat_safe: entry %r: cannot compute its next tick", d.name)
                items.append((self._park(d, f"its next tick cannot be computed ({type(exc).__name__}: {exc})"), None))
                continue
            if p.dropped or not p.counted_all:
                self._log_dropped(d.name, policy, p)
            item = ClaimItem(d.name, d.score, d.version, p.fire, p.next, skipped=p.dropped)
            if p.dropped and p.dropped_from is not None:  # the run ledger says which ticks and why
                item.skip_why, item.skip_from = _DROPPED.get(policy, "missed"), p.dropped_from
                item.skip_to = p.dropped_to if p.dropped_to is not None else p.dropped_from
            overlap = _OVERLAP.get(sched.overlap or s.overlap, "")
            if overlap:
                if peek.ledgers > 0:
                    self._no_ledger.discard(d.name)
                    item.overlap = overlap
                    # a tick whose message expires (its own expires_after or the default) cannot run after that
                    expiry = expiry_ms(entry, s.expires_after)
                    item.hold_ms = s.queue_lease_ms if expiry is None else expiry + s.run_lease_ms
                elif d.name not in self._no_ledger and len(self._no_ledger) < _REPORT_LIMIT:
                    # nothing would ever report a run: the policy would hold the entry for nothing
                    self._no_ledger.add(d.name)
                    logger.warning("redbeat_safe: entry %r: overlap=%s needs the run ledger in the workers (imports = "
                                   "['redbeat_safe.runs']), and no worker keeps one: not applied until one does",
                                   d.name, sched.overlap or s.overlap)
            items.append((item, entry))
        return items

    @staticmethod
    def _park(d: Due, reason: str) -> ClaimItem:
        return ClaimItem(d.name, d.score, d.version, [], None, mode="park", reason=reason)

    def _log_dropped(self, name: str, policy: str, p: Plan) -> None:
        count = f"{p.missed}" if p.counted_all else f"more than {p.missed - 1}"
        dropped = f"{p.dropped}" if p.counted_all else "the rest"
        span = "" if p.dropped_from is None else f" from {iso(p.dropped_from)}" + ("" if p.dropped_to is None else f" to {iso(p.dropped_to)}")
        logger.warning("redbeat_safe: entry %r missed %s tick(s) while no beat ran; policy %s published %d of them and dropped %s%s",
                       name, count, policy, p.kept, dropped, span)

    def _publish_claimed(self, claimed: list[tuple[ClaimItem, EntryDef]], lease_start: float) -> None:
        sent = 0
        for it, entry in claimed:
            for t in it.ticks:
                if not self._send(entry, it.name, t, lease_start):
                    return
                sent += 1
                if self._next is not None and sent % PIPELINE_EVERY == 0:
                    self._advance()

    def _prefetch(self) -> None:
        """A burst: before publishing this batch, send the next peek (it carries the
        acknowledgements so far); ``_advance`` plans the next batch and sends its claim
        as soon as that peek's answer is in, while this batch is still being published.
        Redis runs both scripts on its own core meanwhile: the beat never waits for them."""
        if self._next is not None or self._ahead is not None:
            return
        acks, self._acks = self._acks, []
        reap_due = self._reap_at is not None and time.monotonic() >= self._reap_at
        self._next = self.store.peek_begin(self.instance_id, self.heartbeat_ms, self.settings.lease_ms, BATCH, REAP_BATCH, acks,
                                           confirm=reap_due, split_ms=self.split_ms)

    def _advance(self) -> None:
        nxt = self._next
        if nxt is None or not nxt.ready():
            return
        self._next = None
        peek = nxt.result()
        self._after_peek(peek, None)
        p = self.plan_pass(Look(peek, time.monotonic(), nxt.sent_at))
        if p.planned and not p.lost:
            p.claim = self.store.claim_begin([it for it, _ in p.planned], self._lease_for(p.planned), self.instance_id)
        self._ahead = p

    def settle(self) -> None:
        """Read what a burst sent ahead (a peek, a claim), so that what it leased to this
        instance is known and can be handed back (a clean shutdown)."""
        nxt, ahead, self._next, self._ahead = self._next, self._ahead, None, None
        if nxt is not None:
            peek = nxt.result()
            self._hold([r.member for r in peek.reaped if r.parsed is not None], peek.now)
        if ahead is not None and ahead.claim is not None:
            now, codes, _ = ahead.claim.result()
            for (it, entry), c in zip(ahead.planned, codes, strict=True):
                if c.code == CLAIMED and entry is not None:
                    self._hold([member(it.name, t) for t in (it.ticks if c.ticks is None else c.ticks)], now)

    def _revoke(self, entry: EntryDef, tick: int, task_id: str) -> None:
        """overlap='replace': the run of ``tick`` (queued or running) is revoked before the
        new tick goes out; ``terminate`` kills a running one too. Never fatal: at worst the
        old run finishes."""
        task_id = task_id or task_id_for(self.settings.key_prefix, entry.name, tick)
        try:
            if self.revoke is not None:
                self.revoke(task_id, entry.schedule.terminate)
                logger.info("redbeat_safe: entry %r: revoked the run of %s to replace it", entry.name, self._tick(entry.name, tick))
        except Exception as exc:  # noqa: BLE001 - the broker's control channel: the new tick is published regardless
            self._report(entry.name, f"could not revoke {task_id} to replace it ({type(exc).__name__}: {exc})")

    def _lease_left(self, lease_start: float, lease_ms: int | None = None) -> bool:
        """Whether the lease taken at the last claim or reap is still safely ours.

        An instance that was paused (SIGSTOP, a long GC, a frozen VM) past its
        lease must not publish: another instance may have reaped the tick
        already. The tick stays in flight and the reaper (maybe us) sends it.
        """
        return time.monotonic() - lease_start < (lease_ms or self.settings.lease_ms) / 1000.0 * 0.8

    def _tick(self, name: str, tick: int) -> str:
        """How a log line names one tick: entry, ms, ISO time and task id, so a line can
        be matched with the broker's and the worker's logs."""
        return f"{name} tick {tick} ({iso(tick)}, task id {task_id_for(self.settings.key_prefix, name, tick)})"

    def _send(self, entry: EntryDef, name: str, tick: int, lease_start: float, kind: str = "s", lease_ms: int | None = None) -> bool:
        """Publish one tick; False (and leave it in flight for the reaper) on a transient failure."""
        m = member(name, tick)
        if not self._lease_left(lease_start, lease_ms):
            logger.warning("redbeat_safe: the lease on %s ran out before it was published; leaving it to the reaper", self._tick(name, tick))
            return False
        task_id = task_id_for(self.settings.key_prefix, name, tick)
        if logger.isEnabledFor(logging.INFO):  # iso() is not free, and a burst calls this thousands of times
            logger.info("Scheduler: Sending due task %s (%s) for tick %d (%s), task id %s", name, entry.task, tick, iso(tick), task_id)
        started = time.monotonic()
        try:
            self.publish(entry, name, tick)
            self.observer.published(time.monotonic() - started, True)
        except PublishError as exc:
            self.observer.published(time.monotonic() - started, False)
            if exc.transient:
                logger.error("redbeat_safe: publishing %s failed (%s); it stays claimed and is retried after the lease",
                             self._tick(name, tick), exc)
                return False
            # Retrying cannot help (arguments the task refuses, an unserialisable
            # value): Celery's beat would drop the tick too, but we say so loudly.
            logger.error("redbeat_safe: dropping %s: %s (retrying would fail the same way)", self._tick(name, tick), exc)
            kind = "x"
        self._unpublished.pop(m, None)
        self._acks.append(Ack(m, task_id, kind))
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
            return None
        try:
            return EntryDef.from_json(name, raw)
        except DefinitionError as exc:
            self._report(name, str(exc))
            return None

    def _report(self, name: str, problem: str, level: int = logging.WARNING) -> None:
        """Log a problem with one entry once; again after REPORT_EVERY, or after the entry was healthy in between."""
        seen = self._reported.setdefault(name, {})
        now = time.monotonic()
        last = seen.get(problem)
        if last is not None and now - last < REPORT_EVERY:
            return
        if len(self._reported) > _REPORT_LIMIT:
            self._reported = {name: seen}
        seen[problem] = now
        logger.log(level, "redbeat_safe: entry %r: %s (every other entry keeps firing)", name, problem)
