"""Stateful property test of the store and the claim protocol against a simple model.

Several simulated instances (the real Engine, publishing into a list) interleave
with upserts, removals, pauses, resumes, crashes between claim and publish,
lease expiry and reaping, on a server clock the test controls. After every
step the invariants must hold; at the end, after draining, every claimed tick
must have been published exactly once.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from harness import RedisServer
from redbeat_safe import every, registry
from redbeat_safe.config import Settings
from redbeat_safe.definitions import EntryDef, build
from redbeat_safe.dispatch import task_id_for
from redbeat_safe.engine import Engine, Pass
from redbeat_safe.store import RedisStore

T0 = 1_800_000_000_000
LEASE = 5000
NAMES = ("a", "b", "c")
INTERVALS = (1000, 2000, 5000)


class TracedEngine(Engine):
    """The real engine, noting which half of a pass is publishing (reaping or claiming)."""

    phase = ""

    def prepare(self) -> Pass:
        self.phase = "reap"
        try:
            return super().prepare()
        finally:
            self.phase = ""

    def finish(self, p: Pass) -> float:
        self.phase = "claim"
        try:
            return super().finish(p)
        finally:
            self.phase = ""


class Crash(BaseException):
    """The process dies right here (not an Exception: nothing may catch it)."""


@dataclass
class Published:
    entry: str
    tick: int
    task_id: str
    instance: str


@dataclass
class Model:
    now: int = T0
    created: dict[str, int] = field(default_factory=dict)  #: name -> server time of its latest creation
    #: name -> (server time, interval) each time its schedule (re)started: creation, change, resume
    events: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    published: list[Published] = field(default_factory=list)


SERVER: RedisServer | None = None
STATS = {"examples": 0, "published": 0, "crashes": 0, "reaped": 0, "races": 0}


class Protocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert SERVER is not None
        self.client = redis.Redis(port=SERVER.port, socket_timeout=10)
        self.prefix = f"prop{uuid.uuid4().hex[:10]}"
        self.clock_key = f"{{{self.prefix}}}:testclock"
        self.settings = Settings(redis_url=SERVER.url, key_prefix=self.prefix, lease_ms=LEASE, catchup="all", catchup_max=100_000)
        self.model = Model()
        self.crash_next: dict[int, bool] = {}
        self.engines: list[Engine] = []
        self.api = self._store()

    def _store(self) -> RedisStore:
        return RedisStore(self.client, self.prefix, test_clock_key=self.clock_key)

    def _engine(self, slot: int) -> Engine:
        def publish(entry: EntryDef, name: str, tick: int) -> None:
            if self.crash_next.pop(slot, False):
                raise Crash()
            if engine.phase == "claim":
                # a claim publishes the definition current when it was claimed
                stored = EntryDef.from_json(name, self.client.hget(self.api.keys.defs, name))  # type: ignore[arg-type]
                assert entry.args == stored.args, f"{name} tick {tick} sent with outdated arguments"
            self.model.published.append(Published(name, tick, task_id_for(self.prefix, name, tick), engine.instance_id))

        engine = TracedEngine(self._store(), self.settings, publish, max_interval=1.0, instance_id=f"i{slot}-{uuid.uuid4().hex[:4]}")
        return engine

    @initialize()
    def start(self) -> None:
        self.client.set(self.clock_key, self.model.now)
        self.engines = [self._engine(i) for i in range(3)]
        for e in self.engines:
            e.register()

    # -- what operators do -------------------------------------------------
    @rule(name=st.sampled_from(NAMES), interval=st.sampled_from(INTERVALS), variant=st.integers(0, 1))
    def upsert(self, name: str, interval: int, variant: int) -> None:
        entry = build(name, "t", every(milliseconds=interval), args=[variant], default_tz="UTC")
        outcome = registry.upsert(self.api, [entry], "api")[name]
        if outcome == "created":
            self.model.created[name] = self.model.now
            self.model.events[name] = [(self.model.now, interval)]
        elif outcome in ("updated", "resumed"):
            self.model.events.setdefault(name, []).append((self.model.now, interval))

    @rule(name=st.sampled_from(NAMES))
    def remove(self, name: str) -> None:
        self.api.remove([name])
        self.model.created.pop(name, None)

    @rule(name=st.sampled_from(NAMES), enabled=st.booleans())
    def pause_or_resume(self, name: str, enabled: bool) -> None:
        raw = self.client.hget(self.api.keys.defs, name)
        st_ = registry.parse_state(self.client.hget(self.api.keys.state, name))
        if raw is None or st_ is None:
            return
        entry = EntryDef.from_json(name, raw)
        outcome = registry.upsert(self.api, [entry], st_.source, enabled=enabled)[name]
        if outcome == "resumed":
            self.model.events.setdefault(name, []).append((self.model.now, entry.schedule.to_json()["interval_ms"]))

    # -- time and instances --------------------------------------------------
    @rule(ms=st.integers(1, 7000))
    def advance(self, ms: int) -> None:
        self.model.now += ms
        self.client.set(self.clock_key, self.model.now)

    @rule(slot=st.integers(0, 2), crash=st.sampled_from([False, False, True]))
    def run_pass(self, slot: int, crash: bool = False) -> None:
        """Passes of one instance until it would sleep; with ``crash`` it dies at its first publish."""
        if crash:
            self.crash_next[slot] = True
        try:
            for _ in range(50):  # until it would sleep
                if not self.engines[slot].registered:
                    self.engines[slot].register()
                if self.engines[slot].run_once() > 0:
                    break
        except Crash:
            # the process is gone: its claims stay in flight until the lease expires
            STATS["crashes"] += 1
            self.engines[slot] = self._engine(slot)

    @rule(first=st.integers(0, 2), second=st.sampled_from([None, None, 0, 1, 2]), gap=st.integers(0, 1500), pick=st.integers(-1, 5))
    def interleaved(self, first: int, second: int | None, gap: int, pick: int) -> None:
        """Instance ``first`` plans its claims, then ``second`` runs, time may pass and
        an entry's arguments may change (``pick``: one of the planned entries when
        there are any, else any entry; -1: none), before ``first`` claims with what
        it saw: the races the compare-and-set exists for."""
        if first == second or not self.engines[first].registered:
            return
        try:
            seen = self.engines[first].prepare()
        except Crash:
            STATS["crashes"] += 1
            self.engines[first] = self._engine(first)
            return
        planned = [it.name for it, _ in seen.planned]
        change = "" if pick < 0 else (planned[pick % len(planned)] if planned else NAMES[pick % len(NAMES)])
        if second is not None:
            self.run_pass(second)
        self.advance(gap)
        raw = self.client.hget(self.api.keys.defs, change) if change else None
        if raw is not None and any(it.name == change for it, _ in seen.planned):
            STATS["races"] += 1
        if raw is not None:  # same schedule, other arguments: the next tick stays, the version moves
            old = EntryDef.from_json(change, raw)
            flipped = build(change, old.task, old.schedule, args=[1 - old.args[0]], default_tz="UTC")
            registry.upsert(self.api, [flipped], "api")
            self.model.events.setdefault(change, []).append((self.model.now, old.schedule.to_json()["interval_ms"]))
        try:
            go_on = self.engines[first].finish(seen) == 0
        except Crash:
            STATS["crashes"] += 1
            self.engines[first] = self._engine(first)
            return
        if go_on:  # beat's loop calls it again at once; it never idles holding unacknowledged publishes
            self.run_pass(first)

    # -- invariants ----------------------------------------------------------
    @invariant()
    def every_enabled_entry_has_exactly_one_next_tick(self) -> None:
        k = self.api.keys
        states = {n.decode(): registry.parse_state(v) for n, v in self.client.hgetall(k.state).items()}
        due = {n.decode(): int(s) for n, s in self.client.zrange(k.due, 0, -1, withscores=True)}
        assert set(due) <= set(states), "a due entry without a record"
        for name, st_ in states.items():
            assert st_ is not None
            if st_.enabled and not st_.done:
                assert name in due, f"{name} is enabled but has no next tick (a stall)"
                assert st_.last is None or due[name] > st_.last, f"{name}: next tick not after the last claimed one"
            else:
                assert name not in due

    @invariant()
    def no_tick_is_published_twice_or_under_another_id(self) -> None:
        seen: dict[tuple[str, int], str] = {}
        for p in self.model.published:
            assert (p.entry, p.tick) not in seen, f"{p.entry} tick {p.tick} published twice"
            seen[(p.entry, p.tick)] = p.task_id

    def teardown(self) -> None:
        try:
            self._drain_and_check()
        finally:
            self.client.delete(*self.client.keys("{" + self.prefix + "}*") or ["-"])
            self.client.close()

    def _drain_and_check(self) -> None:
        if not self.engines:
            return
        self.crash_next.clear()
        for _ in range(3):  # past every lease, then let one instance reap and ack
            self.advance(LEASE + 1)
            for slot in range(3):
                self.run_pass(slot)
        assert self.client.zcard(self.api.keys.inflight) == 0, "claims left unpublished"
        STATS["examples"] += 1
        STATS["published"] += len(self.model.published)
        for name in NAMES:
            for raw in self.client.lrange(self.api.keys.history(name), 0, -1):
                STATS["reaped"] += json.loads(raw)["kind"] == "r"
        self.no_tick_is_published_twice_or_under_another_id()
        k = self.api.keys
        for name, created in self.model.created.items():
            st_ = registry.parse_state(self.client.hget(k.state, name))
            assert st_ is not None
            mine = sorted(p.tick for p in self.model.published if p.entry == name and p.tick >= created)
            assert st_.runs == len(mine), f"{name}: {st_.runs} ticks claimed, {len(mine)} published"
            events = self.model.events.get(name, [])
            for a, b in zip(mine, mine[1:], strict=False):
                if any(a <= when <= b for when, _ in events):
                    continue  # the schedule restarted in between
                interval = [iv for when, iv in events if when <= a][-1]
                assert b - a == interval, f"{name}: missed ticks between {a} and {b} (every {interval} ms)"


@pytest.mark.timeout(900)  # a failure shrinks for a while before it reports
def test_protocol_invariants(redis_server: RedisServer) -> None:
    global SERVER
    SERVER = redis_server
    run_state_machine_as_test(Protocol, settings=settings(
        max_examples=150, stateful_step_count=50, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ))
    print(f"\nproperty test: {STATS}")
    # not vacuous: ticks were published, instances crashed mid-claim, the reaper re-published,
    # and claims raced changes of the same entry
    assert STATS["examples"] >= 30 and STATS["published"] > 200 and STATS["crashes"] > 2, STATS
    assert STATS["reaped"] > 0 and STATS["races"] > 0, STATS
