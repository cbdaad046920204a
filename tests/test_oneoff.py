"""One-off runs (`at`), many entries at once (`Schedules.upsert_many`), finished entries
removed after their retention, and Celery's `solar` converted with Celery's own
arithmetic (checked against celery.schedules.solar for a year of days in three places,
one above the Arctic circle)."""

from __future__ import annotations

import builtins
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery.schedules import solar as celery_solar

from conftest import BeatGroup, make_app
from faults import T0, Fleet, run_until_idle
from harness import RedisServer, wait_for
from redbeat_safe import DefinitionError, Schedules, StaticEntry, at, every, registry, solar
from redbeat_safe.definitions import build, from_beat_entry
from redbeat_safe.schedules import ScheduleError, ms_to_datetime

UTC = timezone.utc


@pytest.mark.slow
def test_one_off_runs_go_out_once_with_three_beats_and_are_finished_after(beats: BeatGroup, redis_server: RedisServer) -> None:
    for name in "abc":
        beats.start({}, name)
    time.sleep(2)
    s = Schedules(make_app(redis_server, beats.prefix))
    base = datetime.now(UTC) + timedelta(seconds=2)
    items = [{"name": f"once-{i:03d}", "task": "beatapp.record", "schedule": at(base + timedelta(milliseconds=37 * i)), "args": [i]}
             for i in range(60)]
    assert s.upsert_many(items) == {"created": 60}
    assert s.upsert_many(items) == {"unchanged": 60}  # idempotent
    wait_for(lambda: len(beats.broker.messages()) >= 60, 30, what="every one-off run")
    time.sleep(2)
    beats.stop_all()
    messages = beats.broker.messages()
    assert len(messages) == 60 and len({m.task_id for m in messages}) == 60
    for m in messages:
        assert m.tick == at(base + timedelta(milliseconds=37 * m.args[0])).when_ms, "published with another tick than its own"
    listed = {e.name: e for e in s.list()}
    assert all(listed[f"once-{i:03d}"].finished and listed[f"once-{i:03d}"].total_runs == 1 for i in range(60))


def test_an_at_in_the_past_runs_once_at_once(redis_server: RedisServer, prefix: str) -> None:
    fleet = Fleet(redis_server.client(), prefix)
    registry.upsert(fleet.store(), [build("late", "t", at(ms_to_datetime(T0 - 3_600_000)), default_tz="UTC")], "api")
    a = fleet.engine("a")
    a.register()
    for _ in range(3):
        run_until_idle(a)
        fleet.clock.advance(1000)
    assert fleet.ticks("late") == [T0 - 3_600_000]  # coalesced: once, late, with its own tick


def test_finished_entries_are_removed_after_their_retention_unless_changed_meanwhile(redis_server: RedisServer, prefix: str) -> None:
    fleet = Fleet(redis_server.client(), prefix)
    fleet.settings = fleet.settings.__class__(**{**fleet.settings.__dict__, "finished_retention_ms": 60_000})
    store = fleet.store()
    registry.upsert(store, [build(f"o{i}", "t", at(ms_to_datetime(T0 + 1000)), default_tz="UTC") for i in range(3)], "api")
    a = fleet.engine("a")
    a.register()
    fleet.clock.set(T0 + 1000)
    run_until_idle(a)
    assert sorted(s.entry for s in fleet.sent) == ["o0", "o1", "o2"]
    k = fleet.keys
    assert fleet.client.zcard(k.finished) == 3
    registry.upsert(store, [build("o1", "t", every(60), default_tz="UTC")], "api")  # o1 given a new life meanwhile
    fleet.clock.advance(30_000)
    assert store.sweep_finished(60_000) == []  # not yet
    fleet.clock.advance(31_000)
    assert sorted(store.sweep_finished(60_000)) == ["o0", "o2"]
    assert store.sweep_finished(60_000) == []
    names = store.names()
    assert "o1" in names and "o0" not in names and "o2" not in names
    assert not fleet.client.exists(k.history("o0")) and not fleet.client.exists(k.runs("o0"))


def test_upsert_many_checks_everything_before_writing(redis_server: RedisServer, prefix: str) -> None:
    s = Schedules(make_app(redis_server, prefix))
    good = {"name": "g", "task": "t", "schedule": every(60)}
    with pytest.raises(DefinitionError) as refused:
        s.upsert_many([good, {"name": "bad", "task": "t", "schedule": every(60), "args": "x"},
                       {"name": "g", "task": "t", "schedule": every(30)}, {"name": "z", "task": "t", "schedule": 5, "typo": 1}])
    text = str(refused.value)
    assert "entry 'bad': args must be a list" in text and "'g' appears twice" in text and "unknown key(s) 'typo'" in text
    assert s.list() == []  # nothing was written
    with pytest.raises(ScheduleError, match="would never fire"):
        s.upsert_many([good, {"name": "ended", "task": "t", "schedule": every(60, end=datetime(2020, 1, 1, tzinfo=UTC))}])
    assert s.list() == []
    s.store.client.sadd(s.store.keys.static, "g")
    with pytest.raises(StaticEntry):
        s.upsert_many([good])
    assert s.upsert_many([good], force=True) == {"created": 1}


def test_two_large_upsert_many_calls_racing_over_the_same_names_leave_each_entry_whole(redis_server: RedisServer,
                                                                                      prefix: str) -> None:
    """Large calls write chunk k while chunk k+1 is read (a thread): two of them over the
    same 3,000 names, with a third writer pausing some meanwhile. Every compare-and-set
    that lost is read and decided again: each call accounts for every name, each entry
    ends as one writer's whole definition, none damaged, each due at most once."""
    import threading

    base = datetime.now(UTC) + timedelta(hours=1)
    names = [f"n{i:05d}" for i in range(3000)]

    def items(tag: str) -> list[dict[str, Any]]:
        return [{"name": n, "task": "t", "schedule": at(base + timedelta(seconds=i)), "args": [tag]} for i, n in enumerate(names)]

    results: dict[str, dict[str, int]] = {}

    def write(tag: str) -> None:
        results[tag] = Schedules(make_app(redis_server, prefix)).upsert_many(items(tag))

    def pause() -> None:
        s = Schedules(make_app(redis_server, prefix))
        for n in names[::50]:
            try:
                s.pause(n)
            except KeyError:  # not written yet
                pass

    threads = [threading.Thread(target=write, args=(t,)) for t in ("a", "b")] + [threading.Thread(target=pause)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert {t: sum(r.values()) for t, r in results.items()} == {"a": 3000, "b": 3000}, results
    s = Schedules(make_app(redis_server, prefix))
    listed = s.list()
    assert sorted(e.name for e in listed) == names and not [e for e in listed if e.problem], [e for e in listed if e.problem][:3]
    assert {tuple(e.args) for e in listed} <= {("a",), ("b",)}
    due = s.store.client.zrange(s.store.keys.due, 0, -1)
    assert len(due) == len(set(due)) <= 3000
    again = Schedules(make_app(redis_server, prefix)).upsert_many(items("a"))
    assert sum(again.values()) == 3000 and again.get("unchanged", 0) + again.get("updated", 0) + again.get("resumed", 0) == 3000


def test_a_datetime_and_celerys_solar_in_a_beat_schedule() -> None:
    when = datetime(2027, 6, 1, 12, tzinfo=UTC)
    entry = from_beat_entry("clocked", {"task": "t", "schedule": when}, "UTC")
    assert entry.schedule.to_json() == {"kind": "at", "when": int(when.timestamp() * 1000)}
    sunrise = from_beat_entry("sun", {"task": "t", "schedule": celery_solar("sunrise", 52.52, 13.405)}, "UTC")
    assert sunrise.schedule.to_json() == {"kind": "solar", "event": "sunrise", "lat": 52.52, "lon": 13.405}
    with pytest.raises(ScheduleError, match="solar event 'sunnyrise'"):
        solar("sunnyrise", 1, 2)
    with pytest.raises(ScheduleError, match="latitude"):
        solar("sunrise", 91, 2)


def test_solar_without_ephem_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_ephem(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ephem":
            raise ImportError("No module named 'ephem'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ephem)
    with pytest.raises(ScheduleError, match=r"pip install 'redbeat-safe\[solar\]'"):
        solar("sunset", 10, 10)


PLACES = {"Berlin": (52.52, 13.405), "Tromsø (69.6° N, above the Arctic circle)": (69.65, 18.96), "Sydney": (-33.87, 151.21)}
EVENTS = ("dawn_astronomical", "sunrise", "solar_noon", "sunset", "dusk_nautical")


@pytest.mark.parametrize("place", list(PLACES))
def test_solar_agrees_with_celerys_own_for_every_day_of_a_year(place: str) -> None:
    """Celery's solar.remaining_estimate from each midnight (UTC) of 2027, against ours:
    the same instant, to the ms (ours are whole ms). In Tromsø some events do not occur for
    weeks (astronomical dawn in summer, sunrise in the polar night): both search on."""
    lat, lon = PLACES[place]
    missing: dict[str, int] = {}
    for event in EVENTS:
        ours = solar(event, lat, lon)
        for day in range(365):
            start = datetime(2027, 1, 1, tzinfo=UTC) + timedelta(days=day)
            theirs = start + celery_solar(event, lat, lon, nowfun=lambda s=start: s).remaining_estimate(start)
            mine = ours.next_after(int(start.timestamp() * 1000))
            assert mine is not None and abs(mine - theirs.timestamp() * 1000) <= 1, (place, event, start, mine, theirs)
            if theirs - start > timedelta(days=1):
                missing[event] = missing.get(event, 0) + 1
    if place.startswith("Tromsø"):
        assert missing.get("sunrise", 0) > 20 and missing.get("dawn_astronomical", 0) > 60, missing  # the polar cases were met


def test_a_solar_entry_fires_on_its_event(redis_server: RedisServer, prefix: str) -> None:
    fleet = Fleet(redis_server.client(), prefix)
    noon = solar("solar_noon", 52.52, 13.405)
    first = noon.first_after(T0)
    assert first is not None
    registry.upsert(fleet.store(), [build("noon", "t", noon, default_tz="UTC")], "api")
    a = fleet.engine("a")
    a.register()
    fleet.clock.set(first)
    run_until_idle(a)
    assert fleet.ticks("noon") == [first]
