"""Changes take effect at once: a beat's sleep is a wait on the `{p}:wake` stream that
upsert and release write to, so an entry added, changed or resumed through the API is
published on its own tick whatever `beat_max_loop_interval` is, and no wake-up is lost
between a beat's look and its wait. In-process engines on a real Redis for the race
and the damage; real `celery beat` processes for the end to end."""

from __future__ import annotations

import threading
import time

import pytest
from celery import Celery

from conftest import BeatGroup, make_app
from faults import T0, Fleet, run_until_idle
from harness import RedisServer, wait_for
from history import assert_exactly_once, check
from redbeat_safe import Schedules, every, registry
from redbeat_safe.definitions import EntryDef, build
from redbeat_safe.engine import PublishError
from redbeat_safe.schedules import ms_to_datetime
from redbeat_safe.store import SPLIT_WINDOW_MS, RedisStore


def _entry(name: str, seconds: float = 10) -> EntryDef:
    return build(name, "t", every(seconds, start=ms_to_datetime(T0 + 60_000)), default_tz="UTC")


def test_a_change_made_between_a_look_and_the_wait_still_wakes_the_beat(redis_server: RedisServer, prefix: str) -> None:
    """The wake-up id is read with the due list; a change after that read is after that id,
    so the wait that follows returns at once instead of sleeping its full length."""
    fleet = Fleet(redis_server.client(), prefix)
    a = fleet.engine("a")
    a.register()
    a.finish(a.prepare())  # looked: nothing due
    registry.upsert(fleet.store(), [_entry("late-comer")], "api")  # written while the beat is between calls
    started = time.monotonic()
    look = a.look(wait=8.0)
    assert time.monotonic() - started < 4.0, "the wait did not see the change made before it began"
    assert a.wakeups_seen == 1 and a.wakeups
    assert look.peek.next_tick is not None  # and the peek behind the wait already sees the new entry


def test_a_wait_with_nothing_changed_lasts_its_length_and_then_looks(redis_server: RedisServer, prefix: str) -> None:
    fleet = Fleet(redis_server.client(), prefix)
    a = fleet.engine("a")
    a.register()
    a.finish(a.prepare())
    started = time.monotonic()
    a.look(wait=0.6)
    assert 0.5 <= time.monotonic() - started < 3.0
    assert a.wakeups_seen == 0


def test_waits_longer_than_one_blocking_call_are_cut_into_several(redis_server: RedisServer, prefix: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """One blocking call stays inside the socket timeout (store.block_cap_ms); a longer
    sleep is made of several, and a change during any of them ends it."""
    fleet = Fleet(redis_server.client(), prefix)
    a = fleet.engine("a")
    a.register()
    a.finish(a.prepare())
    assert 0 < a.store.block_cap_ms < 10_000
    monkeypatch.setattr(RedisStore, "block_cap_ms", property(lambda self: 300))
    started = time.monotonic()
    a.look(wait=1.0)
    assert 0.9 <= time.monotonic() - started < 3.0
    threading.Timer(0.7, lambda: registry.upsert(fleet.store(), [_entry("later")], "api")).start()
    started = time.monotonic()
    a.look(wait=20.0)
    assert time.monotonic() - started < 5.0 and a.wakeups_seen == 1


def test_release_at_shutdown_wakes_the_others(redis_server: RedisServer, prefix: str) -> None:
    """A beat that stops hands its unpublished claims back; the others are woken to
    publish them at once, not at their next loop."""
    fleet = Fleet(redis_server.client(), prefix)
    registry.upsert(fleet.store(), [build("e", "t", every(1, start=ms_to_datetime(T0 + 1000)), default_tz="UTC")], "api")

    def broker_down(entry: EntryDef, name: str, tick: int) -> None:
        raise PublishError("OperationalError: connection refused", transient=True)

    a, b = fleet.engine("a", publish=broker_down), fleet.engine("b")
    a.register()
    b.register()
    b.look()  # b has read the latest wake-up id
    fleet.clock.set(T0 + 1000 + SPLIT_WINDOW_MS + 1)  # b's look no longer counts for the split: the tick is a's
    a.run_once()  # claimed, its publish failed: a holds it
    assert fleet.client.zcard(fleet.keys.inflight) >= 1
    a.leave(a.store)  # a clean stop: the claims are handed back
    started = time.monotonic()
    b.look(wait=8.0)
    assert time.monotonic() - started < 4.0 and b.wakeups_seen == 1


@pytest.mark.parametrize("damage", ["a string", "a hash"])
def test_a_damaged_wake_key_costs_only_the_wake_ups(redis_server: RedisServer, prefix: str, damage: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """`{p}:wake` planted as another type: the wait is refused, the beat says so once and
    sleeps instead (nothing else changes), and the next change through the API replaces
    the key, so wake-ups work again after the retry."""
    fleet = Fleet(redis_server.client(), prefix)
    client = redis_server.client()
    wake = fleet.keys.wake
    client.delete(wake)
    client.set(wake, "junk") if damage == "a string" else client.hset(wake, "x", "1")
    a = fleet.engine("a")
    a.register()
    a.finish(a.prepare())
    a.look(wait=0.5)  # refused at once; the Scheduler then sleeps the delay instead (no spin: see below)
    a.look(wait=5.0)  # not asked again until the retry is due
    assert not a.wakeups
    assert sum("cannot wait for wake-ups" in r.getMessage() for r in caplog.records) == 1
    assert registry.upsert(fleet.store(), [_entry("repairs")], "api") == {"repairs": "created"}
    assert client.type(wake) == b"stream"
    a._wakeups_retry = 0.0  # the retry is due (REPORT_EVERY later, in a real beat)
    a.plan_pass(a.look())
    assert a.wakeups
    registry.upsert(fleet.store(), [_entry("again", 20)], "api")
    started = time.monotonic()
    a.look(wait=8.0)
    assert time.monotonic() - started < 4.0 and a.wakeups_seen == 1
    run_until_idle(a)


def test_a_beat_with_a_damaged_wake_key_sleeps_instead_and_keeps_firing(beats: BeatGroup, redis_server: RedisServer) -> None:
    """The real beat: it says so once, never spins (the peeks stay about one a loop), and
    every tick is published once."""
    client = redis_server.client()
    b = beats.start({"e1": {"every": 1}}, "a")
    b.wait_log("registered 1 static entries")  # registering wrote the key (it would have replaced a damaged one)
    client.delete(f"{{{beats.prefix}}}:wake")
    client.set(f"{{{beats.prefix}}}:wake", "planted")
    time.sleep(1)
    before = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    time.sleep(4)
    calls = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0) - before
    beats.stop_all()
    assert calls < 40, f"{calls} script calls in 4 s: the loop spun"  # about 4 peeks and 4 claims, and others' tests
    assert b.output().count("cannot wait for wake-ups") == 1
    assert_exactly_once(check(beats.broker.messages(), beats.prefix, {"e1": every(1)}), min_ticks=4)


def _lateness(app: Celery, name: str, count: int) -> list[int]:
    """Publish lateness (ms) of the first ``count`` scheduled ticks of ``name``, oldest first:
    when the beat acknowledged each (server clock, right after publishing) minus its tick."""
    s = Schedules(app)
    found = wait_for(lambda: [d for d in s.history(name, 100) if d.kind == "scheduled"][-count:]
                     if len(s.history(name, 100)) >= count else None, 30, what=f"{count} dispatches of {name}")
    ordered = sorted(found, key=lambda d: d.tick_ms)[:count]
    ticks = [d.tick_ms for d in ordered]
    assert all(b > a for a, b in zip(ticks, ticks[1:], strict=False)), ticks
    return [int(d.published_at.timestamp() * 1000) - d.tick_ms for d in ordered]


@pytest.mark.slow
def test_changes_through_the_api_go_out_on_their_own_ticks_with_a_300_s_loop(beats: BeatGroup, redis_server: RedisServer) -> None:
    """celery-redbeat users come with beat_max_loop_interval = 300. Before wake-ups an entry
    added through the API waited for the beat's next loop, then its ticks went out in a
    burst. Now it is added, changed, paused and resumed under two sleeping beats, and
    every tick is published within a generous bound of its own time, each once."""
    beats.start({"slow": {"every": 3600}}, "a", BEAT_MAX_INTERVAL="300")
    beats.start({"slow": {"every": 3600}}, "b", BEAT_MAX_INTERVAL="300")
    for b in beats.beats:
        b.wait_log("registered 1 static entries")
    time.sleep(2)  # both asleep: nothing is due for an hour
    app = make_app(redis_server, beats.prefix)
    s = Schedules(app)
    s.upsert("added", "beatapp.record", every(2))
    late = _lateness(app, "added", 3)
    print(f"\nadded under a 300 s loop, lateness of its first ticks: {late} ms")
    assert max(late) < 1000, f"an added entry's ticks went out late: {late} ms"
    s.upsert("added", "beatapp.record", every(1))  # changed: the next tick moves earlier
    s.pause("added")
    time.sleep(2.5)
    s.resume("added")
    resumed_from = int(time.time() * 1000)
    wait_for(lambda: len([d for d in s.history("added", 100) if d.tick_ms > resumed_from]) >= 3, 30, what="ticks after resume")
    after = sorted((d for d in s.history("added", 100) if d.tick_ms > resumed_from), key=lambda d: d.tick_ms)
    late = [int(d.published_at.timestamp() * 1000) - d.tick_ms for d in after]
    print(f"changed, paused and resumed: lateness of the ticks after the resume: {late} ms")
    assert max(late) < 1000, f"ticks after a resume went out late: {late} ms"
    assert [b.tick_ms - a.tick_ms for a, b in zip(after, after[1:], strict=False)] == [1000] * (len(after) - 1)
    ids = [m.task_id for m in beats.broker.messages() if m.entry == "added"]
    assert len(ids) == len(set(ids)) >= 6
    for b in beats.beats:
        assert "cannot wait for wake-ups" not in b.output()
