"""Schedule objects, conversions from Celery, and the catch-up policy (pure logic)."""

from __future__ import annotations

import pickle
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from celery.schedules import crontab, schedule
from hypothesis import given, settings
from hypothesis import strategies as st

from redbeat_safe import ScheduleError, every, pattern
from redbeat_safe.catchup import MAX_TICKS_PER_CLAIM, plan
from redbeat_safe.schedules import Schedule, from_celery

UTC = timezone.utc
T0 = 1_800_000_000_000  # 2027-01-15, a round number of ms


def test_every_ticks_are_anchored_no_drift_over_1000_ticks() -> None:
    e = every(seconds=0.1)
    t = e.first_after(T0)
    assert t == T0 + 100
    for _ in range(1000):
        t = e.next_after(t)  # type: ignore[arg-type]
    assert t == T0 + 100 + 1000 * 100
    odd = every(seconds=7.3)
    t = odd.first_after(T0)
    for _ in range(1000):
        t = odd.next_after(t)  # type: ignore[arg-type]
    assert t == T0 + 7300 * 1001


def test_every_forms_and_start_anchor() -> None:
    assert every(90).interval_ms == every(minutes=1.5).interval_ms == every(timedelta(seconds=90)).interval_ms == 90000
    assert every(hours=1, minutes=30).human() == "every 1h30m"
    start = datetime.fromtimestamp((T0 + 5000) / 1000, UTC)
    e = every(seconds=10, start=start)
    assert e.first_after(T0) == T0 + 5000  # at start when start is ahead
    assert e.first_after(T0 + 12000) == T0 + 15000  # on start's grid after that
    aligned = every(seconds=60, align=True)
    assert aligned.first_after(T0 + 1) % 60000 == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seconds": 0}, "at least 10 ms"),
        ({"seconds": 0.001}, "at least 10 ms"),
        ({"seconds": -5}, "must not be negative"),
        ({"seconds": 1.0005}, "whole number of milliseconds"),
        ({"days": 365 * 2000}, "thousand years"),
        ({"seconds": float("nan")}, "finite"),
        ({"seconds": "10"}, "must be numbers"),
        ({"seconds": 1, "limit": 0}, "limit must be"),
        ({"seconds": 1, "catchup": "sometimes"}, "catchup must be one of"),
        ({"seconds": 1, "start": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"seconds": 1, "start": datetime(2026, 2, 1, tzinfo=UTC), "end": datetime(2026, 1, 1, tzinfo=UTC)}, "end is before start"),
    ],
)
def test_bad_every_is_refused_clearly(kwargs: dict, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        every(**kwargs)


@pytest.mark.parametrize(
    "expr, tz, message",
    [
        ("* * * *", "UTC", "4 fields"),
        ("* * * * * * *", "UTC", "7 fields"),
        ("61 * * * *", "UTC", "not a valid pattern"),
        ("*/0 * * * *", "UTC", "not a valid pattern"),
        ("", "UTC", "empty"),
        ("* * * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_pattern_is_refused_clearly(expr: str, tz: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        pattern(expr, tz=tz)


def test_end_and_start_bound_ticks() -> None:
    end = datetime.fromtimestamp((T0 + 3000) / 1000, UTC)
    e = every(seconds=1, end=end)
    assert e.next_after(T0 + 2000) == T0 + 3000
    assert e.next_after(T0 + 3000) is None
    p = pattern("* * * * *", tz="UTC", start=datetime(2030, 1, 1, tzinfo=UTC))
    assert p.first_after(T0) == int(datetime(2030, 1, 1, tzinfo=UTC).timestamp() * 1000)


def test_json_round_trip() -> None:
    for s in (
        every(seconds=5, limit=3, catchup="all", start=datetime(2026, 1, 1, tzinfo=UTC)),
        every(minutes=1, align=True),
        pattern("*/5 * * * * *", tz="Europe/Berlin", end=datetime(2027, 1, 1, tzinfo=UTC)),
        pattern("0 9 * * 1", tz="UTC", day_and=True),
    ):
        assert Schedule.from_json(s.to_json()) == s


def test_celery_forms_convert() -> None:
    assert from_celery(10) == every(10)
    assert from_celery(2.5) == every(seconds=2.5)
    assert from_celery(timedelta(minutes=5)) == every(minutes=5)
    assert from_celery(schedule(timedelta(seconds=30))) == every(30)
    assert from_celery(schedule(timedelta(seconds=30), relative=True)) == every(30, align=True)
    assert from_celery(10, relative=True) == every(10, align=True)
    c = from_celery(crontab(minute="*/15", hour="9-17", day_of_week="mon-fri"))
    assert isinstance(c, pattern)
    assert c.expr == "0,15,30,45 9,10,11,12,13,14,15,16,17 * * 1,2,3,4,5"
    assert c.day_and is True


def test_crontab_day_fields_are_anded_like_celery() -> None:
    # Celery: the 13th AND a Friday. Classic cron would fire on every 13th and every Friday.
    c = from_celery(crontab(minute=0, hour=0, day_of_month=13, day_of_week=5)).with_zone("UTC")  # type: ignore[attr-defined]
    t = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
    got = []
    for _ in range(3):
        t = c.next_after(t)
        got.append(datetime.fromtimestamp(t / 1000, UTC).date().isoformat())
    assert got == ["2026-02-13", "2026-03-13", "2026-11-13"]
    classic = pattern("0 0 13 * 5", tz="UTC")
    first = classic.next_after(int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000))
    assert datetime.fromtimestamp(first / 1000, UTC).date().isoformat() == "2026-01-02"  # a Friday


def test_unsupported_schedules_are_refused() -> None:
    class OwnSchedule(schedule):  # a subclass has its own is_due, which we cannot honour
        pass

    with pytest.raises(ScheduleError, match="unsupported schedule type OwnSchedule"):
        from_celery(OwnSchedule(10))
    with pytest.raises(ScheduleError, match="ambiguous"):
        from_celery("*/5 * * * *")
    with pytest.raises(ScheduleError, match="boolean"):
        from_celery(True)


# -- catch-up policy ----------------------------------------------------------

SEC = 1000


def test_on_time_tick_fires_once_and_advances() -> None:
    p = plan(every(1), T0, T0 + 5, 0, policy="coalesce", grace_ms=11 * SEC)
    assert p.fire == [T0] and p.next == T0 + SEC and not p.missed


def test_slightly_late_ticks_all_fire_under_every_policy() -> None:
    for policy in ("coalesce", "skip", "all"):
        p = plan(every(1), T0, T0 + 3500, 0, policy=policy, grace_ms=11 * SEC)
        assert p.fire == [T0, T0 + SEC, T0 + 2 * SEC, T0 + 3 * SEC], policy
        assert p.next == T0 + 4 * SEC


def test_downtime_coalesce_collapses_the_missed_ticks_into_one_run() -> None:
    # on-time ticks follow the missed ones: they are that run
    p = plan(every(10), T0, T0 + 3600 * SEC + 5, 0, policy="coalesce", grace_ms=11 * SEC)
    assert p.fire == [T0 + 3590 * SEC, T0 + 3600 * SEC] and p.next == T0 + 3610 * SEC and p.missed == 359 and p.dropped == 359
    # none on time: the latest missed tick runs, once
    p = plan(every(10), T0, T0 + 3605 * SEC, 0, policy="coalesce", grace_ms=2 * SEC)
    assert p.fire == [T0 + 3600 * SEC] and p.next == T0 + 3610 * SEC and p.missed == 361 and p.dropped == 360


def test_downtime_skip_drops_missed_keeps_on_time() -> None:
    p = plan(every(10), T0, T0 + 3600 * SEC + 5, 0, policy="skip", grace_ms=11 * SEC)
    assert p.fire == [T0 + 3590 * SEC, T0 + 3600 * SEC]  # within the 11 s grace window: on time
    p = plan(every(10), T0, T0 + 3605 * SEC, 0, policy="skip", grace_ms=2 * SEC)
    assert p.fire == [] and p.next == T0 + 3610 * SEC


def test_downtime_all_is_bounded() -> None:
    p = plan(every(10), T0, T0 + 3600 * SEC, 0, policy="all", grace_ms=SEC, max_catchup=5)
    assert p.fire == [T0 + k * 10 * SEC for k in range(355, 361)]  # 5 missed + the on-time one
    assert p.next == T0 + 3610 * SEC


def test_per_claim_cap_leaves_the_rest_due() -> None:
    p = plan(every(seconds=0.01), T0, T0 + 5 * SEC, 0, policy="coalesce", grace_ms=11 * SEC)
    assert len(p.fire) == MAX_TICKS_PER_CLAIM
    assert p.next == T0 + MAX_TICKS_PER_CLAIM * 10


def test_limit_ends_the_entry() -> None:
    e = every(1, limit=3)
    p = plan(e, T0, T0 + 10 * SEC, 1, policy="all", grace_ms=60 * SEC)
    assert p.fire == [T0, T0 + SEC] and p.next is None
    assert plan(e, T0, T0 + 10 * SEC, 3, policy="all", grace_ms=60 * SEC).fire == []


def test_starting_deadline_drops_old_pattern_ticks() -> None:
    p = pattern("0 * * * *", tz="UTC")
    hour = 3600 * SEC
    due = (T0 // hour) * hour
    late = plan(p, due, due + 20 * 60 * SEC, 0, policy="coalesce", grace_ms=11 * SEC, deadline_ms=300 * SEC)
    assert late.fire == [] and late.next == due + hour
    fresh = plan(p, due, due + 60 * SEC, 0, policy="coalesce", grace_ms=11 * SEC, deadline_ms=300 * SEC)
    assert fresh.fire == [due]


def test_pattern_coalesce_after_a_year_finds_the_latest_tick_quickly() -> None:
    p = pattern("*/1 * * * * *", tz="Europe/Berlin")
    due = T0
    now = T0 + 365 * 86400 * SEC + 500
    out = plan(p, due, now, 0, policy="coalesce", grace_ms=0)
    assert out.fire == [now - 500] and out.next == now + 500


@given(
    interval=st.integers(10, 10**7),
    lateness=st.integers(0, 10**9),
    policy=st.sampled_from(["coalesce", "skip", "all"]),
    grace=st.integers(0, 10**6),
)
def test_plan_invariants(interval: int, lateness: int, policy: str, grace: int) -> None:
    e = every(milliseconds=interval)
    p = plan(e, T0, T0 + lateness, 0, policy=policy, grace_ms=grace, max_catchup=50)
    # fired ticks are on the grid, increasing, due, and the next tick is after them all
    assert all((t - T0) % interval == 0 for t in p.fire)
    assert p.fire == sorted(set(p.fire))
    assert all(T0 <= t <= T0 + lateness for t in p.fire)
    assert p.next is not None and (not p.fire or p.next > p.fire[-1]) and (p.next - T0) % interval == 0
    if len(p.fire) < MAX_TICKS_PER_CLAIM:
        assert p.next > T0 + lateness  # nothing due is left behind
    on_time = [t for t in p.fire if t >= T0 + lateness - grace]
    if policy == "coalesce":  # missed ticks collapse into the on-time ones, else into one run
        assert p.kept == 0 or (p.kept == 1 and len(p.fire) == 1 and not on_time)
    if policy == "skip":
        assert p.fire == on_time and p.kept == 0


def test_every_and_pattern_also_work_under_celerys_default_scheduler(tmp_path: Path) -> None:
    """If someone switches back to Celery's PersistentScheduler, the same beat_schedule still runs."""
    from celery import Celery
    from celery.beat import PersistentScheduler

    app = Celery("compat", set_as_current=False)
    app.conf.update(broker_url="memory://", timezone="Europe/Berlin", result_expires=None)
    app.conf.beat_schedule = {
        "e": {"task": "t", "schedule": every(seconds=10)},
        "p": {"task": "t", "schedule": pattern("*/5 * * * * *")},
    }
    s = PersistentScheduler(app=app, schedule_filename=str(tmp_path / "sched"))
    try:
        e, p = s.schedule["e"], s.schedule["p"]
        due, nxt = e.is_due()
        assert not due and 9 < nxt <= 10
        later = e.last_run_at - timedelta(seconds=11)
        due, nxt = e.schedule.is_due(later)
        assert due and 0 < nxt <= 10
        due, nxt = p.is_due()
        assert 0 <= nxt <= 5
        s.sync()
    finally:
        s.close()
    assert pickle.loads(pickle.dumps(every(5, limit=2))) == every(5, limit=2)


# -- the latest ticks before now, found by searching (issue 12, finding 3) -----------

def walk_latest(s: Schedule, tick: int, upto: int, count: int) -> list[int]:
    """The reference: every tick from ``tick`` to ``upto``, the last ``count`` kept."""
    out: list[int] = []
    current: int | None = tick
    while current is not None and current <= upto:
        out.append(current)
        current = s.next_after(current)
    return out[-count:]


LATEST_PATTERNS = ["*/1 * * * * *", "*/7 * * * * *", "0 30 2 * * *", "0 0 * * 1-5", "15 3 * 3 0", "30 1,2,3 * * *",
                   "0 0 1 * *", "*/13 * 2 * * *", "59 59 23 31 12 *"]


@settings(deadline=None)
@given(expr=st.sampled_from(LATEST_PATTERNS), tz=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kathmandu"]),
       offset=st.integers(0, 40 * 86_400_000), span=st.integers(0, 3 * 86_400_000), count=st.integers(1, 30),
       end=st.one_of(st.none(), st.integers(0, 3 * 86_400_000)))
def test_latest_ticks_are_the_last_ticks_a_walk_finds(expr: str, tz: str, offset: int, span: int, count: int, end: int | None) -> None:
    """Around DST changes (March, November 2027 in the span), with and without an end."""
    if expr.startswith("*/"):
        span %= 7_200_000  # the reference walks every tick: two hours of seconds at most
    base = pattern(expr, tz=tz)
    first = base.first_after(T0 + 40 * 86_400_000 + offset - 1)  # late Feb .. early April 2027
    assert first is not None
    s = base if end is None else pattern(expr, tz=tz, end=datetime.fromtimestamp((first + end) / 1000, UTC))
    assert s.latest_ticks(first, first + span, count) == walk_latest(s, first, first + span, count)


class Counted(pattern):
    """A pattern that counts its tick computations."""

    calls = 0

    def next_after(self, tick_ms: int) -> int | None:
        Counted.calls += 1
        return super().next_after(tick_ms)


def test_an_old_due_tick_of_a_dense_pattern_costs_a_bounded_search() -> None:
    """Every second of January, due on 1 January and planned on 15 December: the
    walk forward took 2.7M computations (58 s in a beat, every beat at once). The
    search takes a few hundred and finds the same last ticks of January."""
    jan = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
    dec = int(datetime(2026, 12, 15, tzinfo=UTC).timestamp() * 1000)
    s = Counted("* * * * 1 *", tz="UTC")
    Counted.calls = 0
    got = s.latest_ticks(jan, dec, 3)
    end_of_jan = int(datetime(2026, 2, 1, tzinfo=UTC).timestamp() * 1000)
    assert got == [end_of_jan - 3000, end_of_jan - 2000, end_of_jan - 1000]
    assert Counted.calls < 500, Counted.calls
    Counted.calls = 0
    assert len(s.latest_ticks(jan, dec, 100)) == 100
    assert Counted.calls < 2000, Counted.calls  # a few per tick once the first is found
    plans = plan(s, jan, dec, 0, policy="all", grace_ms=1000, max_catchup=100)
    assert plans.fire[-1] == end_of_jan - 1000 and plans.next is not None and plans.next > dec


def test_an_interval_too_large_for_a_float_is_a_schedule_error() -> None:
    """Found trying it as a new user: every(seconds=10**400) raised a bare OverflowError."""
    from redbeat_safe.schedules import ScheduleError

    for kwargs in ({"seconds": 10**400}, {"days": 10**309}):
        with pytest.raises(ScheduleError, match="longer than a thousand years"):
            every(**kwargs)
    with pytest.raises(ScheduleError, match="longer than a thousand years"):
        every(10**400)


@pytest.mark.parametrize("zone", ["localtime", "posixrules", "Factory", "posix/Europe/Berlin", "right/Europe/Berlin"])
def test_zone_names_that_are_not_iana_zones_are_refused(zone: str) -> None:
    """`localtime` is each host's /etc/localtime: two beats would compute different ticks."""
    from redbeat_safe.schedules import ScheduleError, zone_name

    with pytest.raises(ScheduleError, match="not an IANA zone"):
        pattern("0 * * * *", tz=zone)
    with pytest.raises(ScheduleError, match="not an IANA zone"):
        zone_name(zone)
    assert zone_name("Europe/Berlin") == "Europe/Berlin"


@pytest.mark.parametrize(("zone", "interval"), [
    ("Europe/Berlin", timedelta(days=1)), ("America/New_York", timedelta(days=1)),
    ("Asia/Kolkata", timedelta(hours=1)), ("Europe/Berlin", timedelta(hours=1)), ("Australia/Lord_Howe", timedelta(hours=1)),
])
def test_relative_one_hour_or_one_day_fires_on_celerys_local_boundaries(zone: str, interval: timedelta) -> None:
    """Celery's own arithmetic is the oracle: for a year of instants, the next run Celery
    computes for `schedule(interval, relative=True)` is ours, except on the days the zone
    changes its offset (where Celery's day arithmetic lands on 23:00 or 01:00)."""
    from zoneinfo import ZoneInfo

    from celery.utils.time import remaining

    z = ZoneInfo(zone)
    ours = from_celery(schedule(interval, relative=True)).with_zone(zone)  # type: ignore[attr-defined]
    assert ours == from_celery(interval, relative=True).with_zone(zone)  # type: ignore[attr-defined]
    at, step = datetime(2026, 1, 1, tzinfo=UTC), timedelta(minutes=37) if interval < timedelta(days=1) else timedelta(hours=5, minutes=11)
    compared, differ = 0, []
    while at < datetime(2027, 1, 1, tzinfo=UTC):
        local = at.astimezone(z)
        theirs = int((local + remaining(local, interval, local, relative=True)).timestamp() * 1000)
        mine = ours.next_after(int(at.timestamp() * 1000))
        compared += 1
        if theirs != mine:
            differ.append(local)
        at += step
    assert compared > 1500
    offsets_change = {d.date() for d in differ if (d - timedelta(days=1)).utcoffset() != (d + timedelta(days=1)).utcoffset()}
    assert {d.date() for d in differ} <= offsets_change, differ
    assert len(differ) <= 4


def test_relative_other_intervals_stay_on_utc_multiples() -> None:
    assert from_celery(timedelta(hours=2), relative=True) == every(hours=2, align=True)
    assert from_celery(timedelta(minutes=15), relative=True) == every(minutes=15, align=True)
    assert from_celery(timedelta(hours=1), relative=False) == every(hours=1)


@pytest.mark.parametrize(("expr", "said"), [
    ("*/61 * * * *", "step /61 in the minute field (*/61) matches only 0: write 0 if that is what you mean"),
    ("*/60 * * * *", "step /60 in the minute field (*/60) matches only 0"),
    ("0 */24 * * *", "step /24 in the hour field (*/24) matches only 0"),
    ("0-30/45 * * * *", "step /45 in the minute field (0-30/45) matches only 0"),
    ("*/90 * * * * *", "step /90 in the second field (*/90) matches only 0"),
    ("@reboot", "'@reboot' has no time to compute"),
    ("H * * * *", "'H' (a hashed value, Jenkins syntax) is not supported"),
    ("0 H(0-5) * * *", "'H' (a hashed value, Jenkins syntax) is not supported"),
])
def test_patterns_that_are_surely_mistakes_are_refused_clearly(expr: str, said: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(said)):
        pattern(expr, tz="UTC")


def _utc_ticks(p: pattern, n: int) -> list[str]:
    t = p.first_after(int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000))
    assert t is not None
    return [datetime.fromtimestamp(x / 1000, UTC).strftime("%a %Y-%m-%d %H:%M") for x in p.ticks_from(t, t + 400 * 86_400_000, n)]


def test_day_fields_follow_vixie_cron() -> None:
    """Vixie cron and cronie OR the day fields only when neither starts with '*'."""
    assert _utc_ticks(pattern("0 0 */2 * 1", tz="UTC"), 3) == ["Mon 2026-12-07 00:00", "Mon 2026-12-21 00:00", "Mon 2027-01-11 00:00"]
    assert _utc_ticks(pattern("0 0 13 * 5", tz="UTC"), 3) == ["Fri 2026-12-04 00:00", "Fri 2026-12-11 00:00", "Sun 2026-12-13 00:00"]
    assert _utc_ticks(pattern("0 0 1,15 * *", tz="UTC"), 2) == ["Tue 2026-12-15 00:00", "Fri 2027-01-01 00:00"]


def test_reversed_ranges_wrap_around_whatever_croniter_is_installed() -> None:
    """croniter 2.0.6 (our lowest bound) refuses `22-2`, later versions wrap it: we spell
    it out before croniter sees it, so every installation reads it the same way (the
    lowest-versions CI step found the difference)."""
    p = pattern("0 22-2 * * *", tz="UTC")
    assert _utc_ticks(p, 5) == [
        "Tue 2026-12-01 01:00", "Tue 2026-12-01 02:00", "Tue 2026-12-01 22:00", "Tue 2026-12-01 23:00", "Wed 2026-12-02 00:00"]
    assert p.to_json()["expr"] == "0 22-2 * * *"  # stored and shown as written
    assert [t[:3] for t in _utc_ticks(pattern("0 0 * * 5-1", tz="UTC"), 4)] == ["Fri", "Sat", "Sun", "Mon"]
    assert _utc_ticks(pattern("0 0 30-2 * *", tz="UTC"), 4) == [
        "Wed 2026-12-02 00:00", "Wed 2026-12-30 00:00", "Thu 2026-12-31 00:00", "Fri 2027-01-01 00:00"]


def test_interval_parts_must_not_be_negative_and_align_must_be_a_bool() -> None:
    with pytest.raises(ScheduleError, match=re.escape("interval parts must not be negative (got -1)")):
        every(seconds=70, minutes=-1)
    with pytest.raises(ScheduleError, match=re.escape("align must be True or False, not 'no'")):
        every(10, align="no")  # type: ignore[arg-type]
    assert every(10, align=False).align is False
