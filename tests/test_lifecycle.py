"""Instances coming and going, and a server clock that steps back: a clean stop
releases only what it still holds, a lost registration hands over what the
peek re-leased, state never only grows, and a clock step never blocks writes."""

from __future__ import annotations

from faults import T0, Fleet, Sent, run_until_idle
from harness import RedisServer
from redbeat_safe import every, pattern, registry
from redbeat_safe.definitions import build
from redbeat_safe.dispatch import task_id_for
from redbeat_safe.engine import PublishError
from redbeat_safe.store import REPLY_TTL_MS
from redbeat_safe.trigger import trigger


def test_a_clean_stop_releases_only_the_claims_it_still_holds(redis_server: RedisServer, prefix: str) -> None:
    fleet = Fleet(redis_server.client(), prefix, lease_ms=2000)
    registry.upsert(fleet.store(), [build("e", "t", every(10), default_tz="UTC")], "api")

    def broker_down(*_: object) -> None:
        raise PublishError("broker down", transient=True)

    a = fleet.engine("a", publish=broker_down)
    b, c = fleet.engine("b"), fleet.engine("c")
    for e in (a, b, c):
        e.register()
    fleet.clock.advance(10_000)
    run_until_idle(a)  # claimed, publish failed: stays in flight under a's lease
    assert fleet.sent == []
    fleet.clock.advance(2001)
    b.prepare()  # b reaps it and publishes it; its acknowledgement is still pending
    assert [s.instance for s in fleet.sent] == ["b"]
    a.leave(a.store)  # a stops cleanly: the tick is b's now, not a's to hand back
    run_until_idle(c)
    assert [s.instance for s in fleet.sent] == ["b"], "a released a tick it no longer held; c published it again"
    assert len(a._unpublished) == 0


def test_unpublished_bookkeeping_forgets_what_the_lease_took_back(redis_server: RedisServer, prefix: str) -> None:
    fleet = Fleet(redis_server.client(), prefix, lease_ms=1000)
    registry.upsert(fleet.store(), [build("e", "t", every(1), default_tz="UTC")], "api")

    def broker_down(*_: object) -> None:
        raise PublishError("broker down", transient=True)

    a = fleet.engine("a", publish=broker_down)
    a.register()
    for _ in range(30):  # every publish fails; the reaper (a itself) keeps retrying
        fleet.clock.advance(1000)
        run_until_idle(a)
    assert len(a._unpublished) <= 3, len(a._unpublished)


def test_a_lost_registration_still_publishes_what_its_peek_re_leased(redis_server: RedisServer, prefix: str) -> None:
    fleet = Fleet(redis_server.client(), prefix, lease_ms=2000)
    registry.upsert(fleet.store(), [build("e", "t", every(1), default_tz="UTC")], "api")
    dead = fleet.engine("dead", publish=lambda *a: (_ for _ in ()).throw(SystemExit))
    dead.register()
    a = fleet.engine("a")
    a.register()
    fleet.clock.advance(1000)
    try:
        dead.run_once()
    except SystemExit:
        pass
    fleet.clock.advance(2001)
    redis_server.client().hdel(fleet.keys.instinfo, "a")  # a's registration is gone (it was paused too long)
    a.run_once()
    assert fleet.ticks("e")[:1] == [1_800_000_001_000], f"the reaped tick waited for another lease: {fleet.ticks('e')}"


def test_instance_records_leave_with_the_instance(redis_server: RedisServer, prefix: str) -> None:
    fleet = Fleet(redis_server.client(), prefix)
    registry.upsert(fleet.store(), [build("e", "t", every(1), default_tz="UTC")], "api")
    stayer = fleet.engine("stayer")
    stayer.register()
    for i in range(50):  # worker -B fleets restart often
        e = fleet.engine(f"cycle{i}")
        e.register()
        fleet.clock.advance(1000)
        run_until_idle(e)
        run_until_idle(stayer)
        e.leave(e.store)
    client = redis_server.client()
    assert client.hlen(fleet.keys.inststats) <= 1, client.hkeys(fleet.keys.inststats)
    assert client.hlen(fleet.keys.instinfo) == 1 and client.zcard(fleet.keys.instances) == 1
    assert client.zrange(fleet.keys.seen, 0, -1) == [b"stayer"]  # the burst split's record leaves too


def test_no_key_outlives_its_entry(redis_server: RedisServer, prefix: str) -> None:
    fleet = Fleet(redis_server.client(), prefix)
    api = fleet.store()
    registry.upsert(api, [build("e", "t", every(1), default_tz="UTC")], "api")

    def removed_while_publishing(entry: object, name: str, tick: int) -> None:
        fleet.sent.append(Sent(name, tick, "", "a"))
        api.remove([name])  # an operator removes it between the publish and its acknowledgement

    a = fleet.engine("a", publish=removed_while_publishing)
    a.register()
    fleet.clock.advance(1000)
    run_until_idle(a)
    assert fleet.ticks("e") == [1_800_000_001_000]
    client = redis_server.client()
    assert not client.exists(fleet.keys.history("e")), "acknowledging a removed entry's tick recreated its history"
    registry.upsert(api, [build("e", "t", every(1), default_tz="UTC")], "api")
    assert client.llen(fleet.keys.history("e")) == 0, "a re-added entry shows the old one's history"
    api.remove(["e"])
    a.leave(a.store)
    leftover = sorted(k.decode() for k in client.keys("{" + prefix + "}:*") if not k.endswith(b":testclock"))
    replies = [k for k in leftover if ":reply:" in k]  # answers kept for a retried call, expiring on their own
    assert all(0 < client.pttl(k) <= REPLY_TTL_MS for k in replies), [client.pttl(k) for k in replies]
    # what is about the whole app, not an entry: the epoch, the metrics' cluster-wide totals,
    # and the wake-up stream (at most 32 records, whatever happens)
    assert sorted(set(leftover) - set(replies)) == [f"{{{prefix}}}:counters", f"{{{prefix}}}:meta", f"{{{prefix}}}:wake"], leftover
    assert client.xlen(f"{{{prefix}}}:wake") <= 32


def test_a_clock_step_back_never_blocks_registration_or_causes_a_repeat(redis_server: RedisServer, prefix: str) -> None:
    fleet = Fleet(redis_server.client(), prefix)
    api = fleet.store()
    registry.upsert(api, [build("p", "t", pattern("*/1 * * * * *", tz="UTC"), default_tz="UTC"),
                          build("e", "t", every(1), default_tz="UTC")], "api")
    a = fleet.engine("a")
    a.register()
    for _ in range(5):
        fleet.clock.advance(1000)
        run_until_idle(a)
    fleet.clock.advance(-3000)  # NTP step, or a failover to a replica whose clock is behind
    changed = [build("p", "t", pattern("*/2 * * * * *", tz="UTC"), default_tz="UTC"),
               build("e", "t", every(0.5), default_tz="UTC")]
    assert registry.upsert(api, changed, "api") == {"p": "updated", "e": "updated"}
    registry.upsert(api, [build("e", "t", every(0.5), args=[1], default_tz="UTC")], "api")
    b = fleet.engine("b")
    b.register()  # a beat starting after the step registers too
    for _ in range(12):
        fleet.clock.advance(500)
        run_until_idle(a)
        run_until_idle(b)
    for name in ("p", "e"):
        ticks = fleet.ticks(name)
        assert len(ticks) == len(set(ticks)) and ticks == sorted(ticks), (name, ticks)


def test_a_schedule_changed_after_a_clock_step_back_never_lands_on_a_triggered_tick(redis_server: RedisServer, prefix: str) -> None:
    """Found by the property test: a trigger's tick is off the old grid, but a new grid
    computed from a "now" that stepped back behind it could pass through it (same task id)."""
    fleet = Fleet(redis_server.client(), prefix)
    api = fleet.store()
    registry.upsert(api, [build("e", "t", every(3600), default_tz="UTC")], "api")
    fleet.clock.advance(500)

    def send(entry: object, name: str, tick: int) -> None:
        fleet.sent.append(Sent(name, tick, task_id_for(prefix, name, tick), "api"))

    trigger(api, "e", send, lease_ms=3000, caller="op")
    assert fleet.ticks("e") == [T0 + 500]
    fleet.clock.advance(-250)  # the clock steps back behind the triggered tick
    assert registry.upsert(api, [build("e", "t", every(0.25), default_tz="UTC")], "api") == {"e": "updated"}
    beat = fleet.engine("beat")
    beat.register()
    for _ in range(8):
        fleet.clock.advance(250)
        run_until_idle(beat)
    ids = [s.task_id for s in fleet.sent]
    assert len(ids) == len(set(ids)) and len(ids) > 4, fleet.ticks("e")


def test_a_pass_that_did_nothing_never_asks_to_go_again_at_once(redis_server: RedisServer, prefix: str) -> None:
    """Found by the property test: a next tick a fraction of a ms ahead (planted: 1000.5)
    made run_once() return 0 though nothing was due yet; with a server clock that does
    not move (the tests', or a stalled one) that was a loop with no sleep."""
    fleet = Fleet(redis_server.client(), prefix)
    registry.upsert(fleet.store(), [build("e", "t", every(1), default_tz="UTC")], "api")
    redis_server.client().zadd(fleet.keys.due, {"e": T0 + 1000.5})
    fleet.clock.advance(1000)  # the clock stays put, half a millisecond before it
    engine = fleet.engine("beat")
    engine.register()
    assert all(engine.run_once() > 0 for _ in range(5))
