"""Live instances split a burst instead of racing over it (peek.lua): two engines
reading the same 300 due entries get disjoint halves, win every claim, and publish
each tick once; when one stops heartbeating, the other takes everything after the
split window. In-process engines on a real Redis, on a server clock the test sets."""

from __future__ import annotations

from collections import Counter

from faults import T0, Fleet, Sent, run_until_idle
from harness import RedisServer
from redbeat_safe import every, registry
from redbeat_safe.definitions import EntryDef, build
from redbeat_safe.dispatch import task_id_for
from redbeat_safe.engine import Observer, PublishError
from redbeat_safe.schedules import ms_to_datetime
from redbeat_safe.store import SPLIT_WINDOW_MS

N = 301  # more than one peek's batch (200), so the old random windows overlapped; odd, so the parts' boundary is tested


class Lost(Observer):
    def __init__(self) -> None:
        self.won = self.lost = 0

    def claims(self, won: int, lost: int) -> None:
        self.won += won
        self.lost += lost


def _fleet(redis_server: RedisServer, prefix: str) -> Fleet:
    fleet = Fleet(redis_server.client(), prefix, lease_ms=10_000)
    entries = [build(f"e{i:03d}", "t", every(10, start=ms_to_datetime(T0 + 1000)), default_tz="UTC") for i in range(N)]
    registry.upsert(fleet.store(), entries, "api")
    return fleet


def test_two_live_instances_read_disjoint_halves_and_never_race(redis_server: RedisServer, prefix: str) -> None:
    fleet = _fleet(redis_server, prefix)
    a, b = fleet.engine("a"), fleet.engine("b")
    a.observer, b.observer = Lost(), Lost()
    a.register()
    b.register()
    a.run_once(), b.run_once()  # both have looked (nothing is due yet): both count for the split
    fleet.clock.set(T0 + 1000)  # every entry due at this instant
    pa, pb = a.prepare(), b.prepare()  # both read before either claims: the worst interleaving
    names_a, names_b = {d.name for d in pa.peek.due}, {d.name for d in pb.peek.due}
    assert names_a.isdisjoint(names_b), f"{len(names_a & names_b)} entries read by both"
    assert len(names_a | names_b) == N and pa.peek.due_total == N
    a.finish(pa)
    b.finish(pb)
    assert a.observer.lost == 0 and b.observer.lost == 0  # type: ignore[attr-defined]
    sent = Counter((s.entry, s.tick) for s in fleet.sent)
    assert len(sent) == N and set(sent.values()) == {1}
    assert {s.instance for s in fleet.sent} == {"a", "b"}


def test_a_dead_instances_part_is_taken_over(redis_server: RedisServer, prefix: str) -> None:
    """b did its part once (an idle pass), then peeks the burst and dies: a reads its own
    part while b counts, takes over b's as the parts shift, and after the window b no
    longer counts at all. b's peek alone (a part handed out, never claimed) does not
    make it count for longer."""
    fleet = _fleet(redis_server, prefix)
    a, b = fleet.engine("a"), fleet.engine("b")
    a.register()
    b.register()
    b.run_once()  # nothing due yet: b has done its part, it counts for the split
    fleet.clock.set(T0 + 1000)
    b.prepare()  # b reads its part of the burst, and will never claim it
    first = a.prepare()
    assert len(first.peek.due) == N // 2  # b counts: a reads its half only
    a.finish(first)
    fleet.clock.set(T0 + SPLIT_WINDOW_MS + 1)  # b has not done its part for longer than the window
    alone = a.prepare()
    assert len(alone.peek.due) == min(200, N - N // 2) and alone.peek.due_total == N - N // 2  # all of the rest is a's
    a.finish(alone)
    while True:
        p = a.prepare()
        if not p.peek.due:
            break
        a.finish(p)
    sent = Counter((s.entry, s.tick) for s in fleet.sent)
    assert len(sent) == N and set(sent.values()) == {1}, "a took over b's part, each tick once"
    assert {s.instance for s in fleet.sent} == {"a"}


def test_a_beat_that_registered_but_never_peeked_does_not_count(redis_server: RedisServer, prefix: str) -> None:
    """Found by review: liveness for the split was the heartbeat deadline, which
    registering also refreshes (a beat whose registration keeps failing never claims)
    and which depends on each beat's own settings. Only peeks count now."""
    fleet = _fleet(redis_server, prefix)
    a, b = fleet.engine("a"), fleet.engine("b")
    b.register()  # registers, never peeks
    a.register()
    fleet.clock.set(T0 + 1000)
    assert len(a.prepare().peek.due) == 200  # a full batch: a is alone in the split


def test_entries_due_longer_than_the_window_are_shared_out_from_the_oldest(redis_server: RedisServer, prefix: str) -> None:
    """Overload: the due list stays long. Live instances split its oldest part, so the
    oldest ticks are read first, by one instance each."""
    fleet = _fleet(redis_server, prefix)
    a, b = fleet.engine("a"), fleet.engine("b")
    a.register()
    b.register()
    fleet.clock.set(T0 + 1000 + SPLIT_WINDOW_MS + 1)  # every entry overdue
    for e in (a, b):  # both have just looked (reading nothing): both did their part
        e.store.peek(e.instance_id, e.heartbeat_ms, 10_000, 0, 0)
    pa, pb = a.prepare(), b.prepare()
    names_a, names_b = {d.name for d in pa.peek.due}, {d.name for d in pb.peek.due}
    assert names_a.isdisjoint(names_b) and len(names_a | names_b) == N


def test_a_stuck_instances_part_is_taken_over_before_its_ticks_count_as_missed(redis_server: RedisServer, prefix: str) -> None:
    """Found by the RabbitMQ crash test in CI: during a broker outage one beat blocked in
    Celery's reconnect loop and stopped peeking, yet counted for the split for 5 s, longer
    than the misfire grace of a 3 s lease (+ 1 s loop); the other beat, slowed by failing
    publishes, read only its own part, and the silent beat's ticks were coalesced away
    although a beat ran all along. The split window now follows the lease."""
    fleet = Fleet(redis_server.client(), prefix, lease_ms=3000)
    # staggered phases, as in the RabbitMQ test
    entries = [build(f"e{i}", "t", every(0.7, start=ms_to_datetime(T0 + 100 + 233 * i)), default_tz="UTC") for i in range(3)]
    registry.upsert(fleet.store(), entries, "api")
    broker_up = False

    def publish(entry: EntryDef, name: str, tick: int) -> None:
        if not broker_up:
            fleet.clock.advance(600)  # what a publish to a dead broker costs (Celery's retries)
            raise PublishError("OperationalError: [Errno 111] Connection refused", transient=True)
        fleet.sent.append(Sent(name, tick, task_id_for(prefix, name, tick), "b"))

    # the silent one ranks first: its part is the oldest of the due list
    a, b = fleet.engine("b", publish=publish), fleet.engine("a")
    a.register()
    b.register()
    b.prepare()  # "a" has looked, then blocks on the broker and never peeks again
    while fleet.clock.now < T0 + 12_000:
        fleet.clock.advance(100)
        run_until_idle(a)
    broker_up = True
    outage_end = fleet.clock.now
    for _ in range(40):
        fleet.clock.advance(250)
        run_until_idle(a)
    for e in entries:
        ticks = sorted(set(fleet.ticks(e.name)))
        expected = list(range(ticks[0], ticks[-1] + 1, 700))
        assert ticks[0] < T0 + 1000 and ticks[-1] > outage_end
        assert ticks == expected, f"{e.name}: {sorted(set(expected) - set(ticks))} missing"
