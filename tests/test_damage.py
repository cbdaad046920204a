"""Records damaged by hand, after the beats have cached the entry: one bad record
never affects another entry, no loop spins, the operator sees what is wrong and
can repair it, and nothing raises a false alarm."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery

from conftest import BeatGroup, make_app
from faults import DAMAGE, T0, Fleet, run_until_idle
from harness import HERE, ROOT, RedisServer
from history import check
from redbeat_safe import Schedules, every, registry
from redbeat_safe.config import Settings
from redbeat_safe.definitions import build
from redbeat_safe.engine import NO_PROGRESS_SLEEP, Engine
from redbeat_safe.scheduler import Scheduler
from redbeat_safe.store import ASIDE, ClaimItem, Keys, RedisStore, UpsertItem


def test_a_definition_deleted_under_two_beats_stalls_no_other_entry(beats: BeatGroup, redis_server: RedisServer) -> None:
    schedule = {f"e{i:02d}": {"every": 1} for i in range(20)}
    a = beats.start(schedule, "a")
    b = beats.start(schedule, "b")
    a.wait_log("registered 20 static entries")
    b.wait_log("registered 20 static entries")
    time.sleep(2.5)  # both have every definition cached
    redis_server.client().hdel(Keys(beats.prefix).defs, "e07")
    damaged = int(time.time() * 1000)
    time.sleep(5)
    stopped = int(time.time() * 1000)
    a.stop()
    b.stop()
    healthy = {n: every(1) for n in schedule if n != "e07"}
    reports = check(beats.broker.messages(), beats.prefix, healthy)
    for name, rep in reports.items():
        assert not rep.gaps and rep.same_id_repeats == 0, (name, rep)
        assert rep.ticks and rep.ticks[-1] > stopped - 2500, f"{name} stopped firing after the damage to e07"
    logs = a.output() + b.output()
    assert "Redis unavailable" not in logs
    assert "'e07'" in logs and "definition" in logs
    assert redis_server.client().zscore(Keys(beats.prefix).due, "e07") is None  # set aside
    assert damaged


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_to_a_cached_entry_sets_it_aside_once_and_never_spins(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    app = make_app(redis_server, prefix)
    api = Schedules(app)
    api.upsert("good", "t", every(0.05))
    api.upsert("bad", "t", every(0.05))
    client, k = redis_server.client(), Keys(prefix)
    sent: list[tuple[str, int]] = []
    engine = Engine(RedisStore(client, prefix), Settings.from_app(app), lambda e, n, t: sent.append((n, t)), max_interval=1.0)
    engine.register()
    for _ in range(4):  # both fire, both definitions are cached
        time.sleep(0.06)
        engine.run_once()
    assert {n for n, _ in sent} == {"good", "bad"}
    DAMAGE[kind](client, k, "bad")
    damaged_at = len(sent)
    passes, start = 0, time.monotonic()
    with caplog.at_level(logging.INFO, logger="redbeat_safe"):
        while time.monotonic() - start < 1.5:
            passes += 1
            time.sleep(min(engine.run_once(), 0.2))  # never raises
    good = [t for n, t in sent[damaged_at:] if n == "good"]
    assert len(good) >= 20 and all(b - a == 50 for a, b in zip(good, good[1:], strict=False)), good
    assert passes < 80, f"{passes} passes in 1.5 s: the loop spins"
    if kind != "state deleted":  # a deleted state is a removed entry: nothing to report
        lines = [r.getMessage() for r in caplog.records if "'bad'" in r.getMessage() and r.levelno >= logging.WARNING]
        assert len(lines) == 1, lines
        assert client.zscore(k.due, "bad") is None, "not set aside"
    assert len([t for n, t in sent[damaged_at:] if n == "bad"]) <= 1  # at most the one claimed before the damage


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_entry_is_shown_with_its_problem_and_an_add_repairs_it(redis_server: RedisServer, prefix: str, kind: str) -> None:
    app = make_app(redis_server, prefix)
    api = Schedules(app)
    api.upsert("bad", "t", every(10))
    api.upsert("good", "t", every(10))
    DAMAGE[kind](redis_server.client(), Keys(prefix), "bad")
    listed = {e.name: e for e in api.list()}
    if kind == "state deleted":
        assert "bad" in listed or api.get("bad") is None
    else:
        assert "bad" in listed, f"{kind}: the damaged entry vanished from list()"
        assert listed["bad"].problem, kind
        assert api.get("bad") is not None and api.get("bad").problem  # type: ignore[union-attr]
        assert "bad" in {d["name"] for d in api.status()["damaged"]}
    assert listed["good"].problem is None
    assert api.upsert("bad", "t", every(10)) in ("repaired", "created", "updated")
    repaired = api.get("bad")
    assert repaired is not None and repaired.problem is None and repaired.next_tick is not None
    assert api.upsert("bad", "t", every(10)) == "unchanged"


def test_cli_list_and_show_name_a_damaged_entry_and_remove_repairs(redis_server: RedisServer, prefix: str, tmp_path: object) -> None:
    app = make_app(redis_server, prefix)
    Schedules(app).upsert("bad", "beatapp.record", every(10))
    DAMAGE["definition garbled"](redis_server.client(), Keys(prefix), "bad")
    env = {"BEAT_BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/1", "BEAT_REDIS_URL": redis_server.url,
           "BEAT_PREFIX": prefix, "BEAT_QUEUE": f"q-{prefix}", "PYTHONPATH": f"{HERE}:{ROOT}"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        import os

        return subprocess.run([sys.executable, "-m", "celery", "-A", "beatapp", "schedules", *args], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=60)

    listed = cli("list")
    assert listed.returncode == 0 and "bad" in listed.stdout and "damaged" in listed.stdout.lower(), listed
    shown = cli("show", "bad", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["problem"], shown
    removed = cli("remove", "bad")
    assert removed.returncode == 0, removed
    assert not redis_server.client().keys("{" + prefix + "}:*bad*")
    assert all(not redis_server.client().hexists(k, "bad") for k in (Keys(prefix).defs, Keys(prefix).state))


def test_an_args_change_racing_a_pass_is_no_false_alarm_and_real_damage_is_still_reported(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = Fleet(redis_server.client(), prefix)
    api = fleet.store()
    registry.upsert(api, [build("e", "t", every(1), args=[0], default_tz="UTC")], "api")
    store = fleet.store()
    engine = fleet.engine("beat", store=store)
    engine.register()
    real = store.definitions
    flips = iter(range(1, 1000))

    def racing(names: list[str]) -> list[bytes | None]:
        # between the peek and the read of the definition, someone changes the arguments
        registry.upsert(api, [build("e", "t", every(1), args=[next(flips)], default_tz="UTC")], "api")
        return real(names)

    store.definitions = racing  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="redbeat_safe"):
        for _ in range(3):
            fleet.clock.advance(1000)
            run_until_idle(engine)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
        store.definitions = real  # type: ignore[method-assign]
        fleet.clock.advance(1000)
        run_until_idle(engine)
        assert len(fleet.ticks("e")) == 4, fleet.ticks("e")  # the race cost no tick
        DAMAGE["definition garbled"](redis_server.client(), fleet.keys, "e")
        fleet.clock.advance(1000)
        run_until_idle(engine)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "'e'" in errors[0], errors


def test_reports_are_rate_limited_per_entry_not_silenced_for_good(redis_server: RedisServer, prefix: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    fleet = Fleet(redis_server.client(), prefix)
    api = fleet.store()
    entry = build("e", "t", every(1), default_tz="UTC")
    registry.upsert(api, [entry], "api")
    engine = fleet.engine("beat")
    engine.register()
    with caplog.at_level(logging.ERROR, logger="redbeat_safe"):
        for _ in range(3):  # damaged, repaired, fires again, damaged again: each damage is reported once
            DAMAGE["definition deleted"](redis_server.client(), fleet.keys, "e")
            for _ in range(3):
                fleet.clock.advance(1000)
                run_until_idle(engine)
            assert registry.upsert(api, [entry], "api") == {"e": "repaired"}
            fleet.clock.advance(1000)
            run_until_idle(engine)
    assert len([r for r in caplog.records if "'e'" in r.getMessage()]) == 3
    assert len(fleet.ticks("e")) == 3


def test_ticks_beyond_1e14_ms_are_stored_exactly(redis_server: RedisServer, prefix: str) -> None:
    api = Schedules(make_app(redis_server, prefix))
    start = datetime(6000, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=7)
    api.upsert("far", "t", every(1, start=start))
    first = api.get("far")
    assert first is not None and first.next_tick == start
    api.pause("far")
    api.resume("far", from_now=False)
    again = api.get("far")
    assert again is not None and again.next_tick == start, (again.next_tick if again else None, start)
    # claims out there keep exact ticks too (history and last tick)
    fleet = Fleet(redis_server.client(), prefix)
    fleet.clock.set(int(start.timestamp() * 1000) + 2)
    engine = fleet.engine("beat")
    engine.register()
    run_until_idle(engine)
    fleet.clock.advance(1000)
    run_until_idle(engine)
    tick = int(start.timestamp() * 1000)
    assert fleet.ticks("far") == [tick, tick + 1000]
    history = [json.loads(r)["tick"] for r in redis_server.client().lrange(Keys(prefix).history("far"), 0, -1)]
    assert sorted(history) == [tick, tick + 1000]
    last = api.get("far")
    assert last is not None and last.last_tick is not None and int(last.last_tick.timestamp() * 1000) == tick + 1000


def test_a_redis_error_reply_is_not_reported_as_an_outage(redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    app: Celery = make_app(redis_server, prefix, result_expires=None)
    app.conf.beat_schedule = {"e": {"task": "t", "schedule": 1}}
    s = Scheduler(app=app)
    try:
        s.tick()
        redis_server.client().set(Keys(prefix).inflight, "not a sorted set")  # every pass now gets WRONGTYPE
        with caplog.at_level(logging.ERROR):
            s.tick()
            s.tick()
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert lines and not any("unavailable" in line for line in lines), lines
        assert any("WRONGTYPE" in line for line in lines), lines
    finally:
        redis_server.client().delete(Keys(prefix).inflight)
        s.close()


def test_an_upsert_racing_a_set_aside_never_leaves_the_entry_finished(redis_server: RedisServer, prefix: str) -> None:
    """A beat sets the entry aside between the upsert's read and its write: the write keeps
    no next tick it does not have (it re-reads and repairs), so the entry fires again."""
    fleet = Fleet(redis_server.client(), prefix)
    store = fleet.store()
    registry.upsert(store, [build("a", "t", every(1), default_tz="UTC")], "api")
    fleet.clock.advance(1500)

    class Racing(RedisStore):
        fired = False

        def snapshot(self, names: Any, full: bool = False) -> Any:
            out = super().snapshot(names, full)
            if not Racing.fired and list(names) == ["a"]:
                Racing.fired = True  # a beat sets "a" aside right after this read
                d = self.peek("B", 60000, 3000, 200, 100).due[0]
                assert self.claim([ClaimItem("a", d.score, d.version, [], None, mode="park", reason="test")], 3000, "B")[1][0].code == ASIDE
            return out

    racing = Racing(redis_server.client(), prefix, test_clock_key=fleet.clock.key)
    outcome = registry.upsert(racing, [build("a", "t", every(1), args=[1], default_tz="UTC")], "api")
    assert outcome == {"a": "updated"}
    _, found = store.snapshot(["a"])
    a = found["a"]
    assert a.state is not None and not a.state.done and a.score is not None, (a.state, a.score)
    engine = fleet.engine("beat")
    engine.register()
    fleet.clock.advance(2000)
    run_until_idle(engine)
    assert fleet.ticks("a"), "the entry never fired again"


def test_a_due_name_that_is_not_utf8_is_set_aside_listed_and_removable(redis_server: RedisServer, prefix: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    fleet = Fleet(redis_server.client(), prefix)
    registry.upsert(fleet.store(), [build("ok", "t", every(1), default_tz="UTC")], "api")
    redis_server.client().zadd(fleet.keys.due, {b"\xffbad": T0})
    engine = fleet.engine("beat")
    engine.register()
    sleeps = []
    with caplog.at_level(logging.WARNING, logger="redbeat_safe"):
        for _ in range(10):
            fleet.clock.advance(500)
            sleeps.append(engine.run_once())
    assert redis_server.client().zscore(fleet.keys.due, b"\xffbad") is None, "not set aside"
    assert len(fleet.ticks("ok")) == 5 and sum(s == NO_PROGRESS_SLEEP for s in sleeps) <= 2, sleeps
    assert len([r for r in caplog.records if "bad" in r.getMessage()]) == 1, [r.getMessage() for r in caplog.records]
    app = make_app(redis_server, prefix)
    api = Schedules(app)
    listed = [e for e in api.list() if e.name != "ok"]
    assert len(listed) == 1 and listed[0].problem, listed
    assert api.remove(listed[0].name) is True
    assert not redis_server.client().hexists(fleet.keys.aside, b"\xffbad")


def test_no_script_fails_on_arguments_that_are_not_numbers(redis_server: RedisServer, prefix: str) -> None:
    fleet = Fleet(redis_server.client(), prefix)
    store = fleet.store()
    entry = build("a", "t", every(1), default_tz="UTC")
    item = UpsertItem("a", None, entry.to_json(), entry.definition_hash, entry.schedule_hash, "api", "soon", True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a tick for 'a'"):
        store.upsert([item])
    assert not redis_server.client().hexists(fleet.keys.state, "a")
