"""Pattern arithmetic across daylight-saving changes (pure logic, no Redis)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from redbeat_safe import pattern

BERLIN = ZoneInfo("Europe/Berlin")
UTC = timezone.utc


def fires(expr: str, start: datetime, end: datetime, tz: str = "Europe/Berlin") -> list[str]:
    """Local wall times (with UTC offset) at which the pattern fires in [start, end)."""
    p = pattern(expr, tz=tz)
    out = []
    t = int(start.timestamp() * 1000) - 1
    while True:
        t = p.next_after(t)
        assert t is not None
        when = datetime.fromtimestamp(t / 1000, UTC).astimezone(ZoneInfo(tz))
        if when >= end:
            return out
        out.append(when.strftime("%H:%M%z"))


SPRING = (datetime(2026, 3, 29, 0, 0, tzinfo=BERLIN), datetime(2026, 3, 29, 5, 0, tzinfo=BERLIN))
FALL = (datetime(2026, 10, 25, 0, 0, tzinfo=BERLIN), datetime(2026, 10, 25, 5, 0, tzinfo=BERLIN))


def test_spring_forward_every_20_minutes_skips_the_missing_hour_without_burst() -> None:
    assert fires("*/20 * * * *", *SPRING) == [
        "00:00+0100", "00:20+0100", "00:40+0100", "01:00+0100", "01:20+0100", "01:40+0100",
        # 02:00-02:59 does not exist: its matches collapse onto 03:00 CEST, once
        "03:00+0200", "03:20+0200", "03:40+0200", "04:00+0200", "04:20+0200", "04:40+0200",
    ]


def test_spring_forward_hourly() -> None:
    assert fires("0 * * * *", *SPRING) == ["00:00+0100", "01:00+0100", "03:00+0200", "04:00+0200"]


def test_spring_forward_daily_0230_still_runs_that_day_once() -> None:
    days = (datetime(2026, 3, 27, 12, tzinfo=BERLIN), datetime(2026, 3, 30, 12, tzinfo=BERLIN))
    p = pattern("30 2 * * *", tz="Europe/Berlin")
    got = []
    t = int(days[0].timestamp() * 1000)
    while (t := p.next_after(t)) is not None and t < days[1].timestamp() * 1000:  # type: ignore[operator]
        got.append(datetime.fromtimestamp(t / 1000, UTC).astimezone(BERLIN).strftime("%m-%d %H:%M%z"))
    assert got == ["03-28 02:30+0100", "03-29 03:00+0200", "03-30 02:30+0200"]


def test_fall_back_every_20_minutes_keeps_firing_through_the_repeated_hour() -> None:
    assert fires("*/20 * * * *", *FALL) == [
        "00:00+0200", "00:20+0200", "00:40+0200", "01:00+0200", "01:20+0200", "01:40+0200",
        "02:00+0200", "02:20+0200", "02:40+0200",
        "02:00+0100", "02:20+0100", "02:40+0100",  # the repeated hour (Celery 5.7 skips it: #10107)
        "03:00+0100", "03:20+0100", "03:40+0100", "04:00+0100", "04:20+0100", "04:40+0100",
    ]


def test_fall_back_hourly_fires_in_both_passes() -> None:
    assert fires("0 * * * *", *FALL) == ["00:00+0200", "01:00+0200", "02:00+0200", "02:00+0100", "03:00+0100", "04:00+0100"]


def test_fall_back_daily_0230_fires_once() -> None:
    days = (datetime(2026, 10, 24, 12, tzinfo=BERLIN), datetime(2026, 10, 26, 12, tzinfo=BERLIN))
    p = pattern("30 2 * * *", tz="Europe/Berlin")
    got = []
    t = int(days[0].timestamp() * 1000)
    while (t := p.next_after(t)) is not None and t < days[1].timestamp() * 1000:  # type: ignore[operator]
        got.append(datetime.fromtimestamp(t / 1000, UTC).astimezone(BERLIN).strftime("%m-%d %H:%M%z"))
    assert got == ["10-25 02:30+0200", "10-26 02:30+0100"]


def test_real_time_spacing_is_uniform_for_every_20_minutes_across_both_changes() -> None:
    for start, end in (SPRING, FALL):
        p = pattern("*/20 * * * *", tz="Europe/Berlin")
        t = int(start.timestamp() * 1000)
        gaps = set()
        while (n := p.next_after(t)) is not None and n < end.timestamp() * 1000:
            gaps.add(n - t)
            t = n
        assert gaps == {20 * 60 * 1000}


def test_seconds_field_comes_first() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert fires("*/15 * * * * *", start, start + timedelta(minutes=1), tz="UTC") == ["00:00+0000"] * 4
    p = pattern("30 0 12 * * *", tz="UTC")  # 12:00:30 every day
    t = p.next_after(int(start.timestamp() * 1000))
    assert t == int(datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC).timestamp() * 1000)


# -- a reference model, checked against the implementation -----------------

def matcher(expr: str):  # type: ignore[no-untyped-def]
    """A plain 5-field cron matcher (classic OR of day-of-month and day-of-week)."""
    fields = croniter.expand(expr)[0]
    full = [range(60), range(24), range(1, 32), range(1, 13), range(7)]
    sets = [set(full[i]) if f == ["*"] else {int(v) % 7 if i == 4 else int(v) for v in f} for i, f in enumerate(fields)]
    dom_any, dow_any = fields[2] == ["*"], fields[4] == ["*"]

    def match(w: datetime) -> bool:
        if w.minute not in sets[0] or w.hour not in sets[1] or w.month not in sets[3]:
            return False
        dom, dow = w.day in sets[2], (w.weekday() + 1) % 7 in sets[4]
        if dom_any or dow_any:
            return dom and dow
        return dom or dow

    return match


def reference(expr: str, zone: str, start: datetime, minutes: int) -> list[int]:
    """Brute force over every UTC minute: the documented rules, written independently."""
    z = ZoneInfo(zone)
    hours = croniter.expand(expr)[0][1]
    wildcard = hours == ["*"]
    match = matcher(expr)
    out: set[int] = set()
    gap_hit: dict[int, bool] = {}
    for i in range(minutes):
        u = start + timedelta(minutes=i)
        local = u.astimezone(z)
        wall = local.replace(tzinfo=None)
        ambiguous = wall.replace(tzinfo=z, fold=0).utcoffset() != wall.replace(tzinfo=z, fold=1).utcoffset()
        if match(wall) and (local.fold == 0 or not ambiguous or wildcard):
            out.add(int(u.timestamp() * 1000))
        # a wall minute skipped by a spring-forward gap: fires at the gap's end
        prev = (u - timedelta(minutes=1)).astimezone(z)
        jump = local.utcoffset() - prev.utcoffset()  # type: ignore[operator]
        if jump > timedelta(0):
            w = prev.replace(tzinfo=None) + timedelta(minutes=1)
            while w < wall:
                if match(w):
                    gap_hit[int(u.timestamp() * 1000)] = True
                w += timedelta(minutes=1)
    out.update(gap_hit)
    return sorted(out)


exprs = st.sampled_from([
    "*/20 * * * *", "0 * * * *", "30 2 * * *", "*/7 * * * *", "15,45 1-3 * * *", "0 */2 * * *",
    "5 2 * * *", "*/30 2 * * *", "0 0 * * *", "59 * * * *", "0,30 2,3 * * *", "*/15 1,2 * * *",
])
zones = st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Europe/London", "America/Santiago", "UTC"])
transitions = st.sampled_from([
    datetime(2026, 3, 28, 12, tzinfo=UTC), datetime(2026, 10, 24, 12, tzinfo=UTC),
    datetime(2026, 3, 7, 12, tzinfo=UTC), datetime(2026, 10, 31, 12, tzinfo=UTC),
    datetime(2026, 4, 4, 0, tzinfo=UTC), datetime(2026, 9, 5, 0, tzinfo=UTC),
])


@settings(max_examples=60, deadline=None)
@given(expr=exprs, zone=zones, start=transitions)
def test_matches_the_brute_force_reference_around_transitions(expr: str, zone: str, start: datetime) -> None:
    minutes = 2 * 24 * 60
    want = reference(expr, zone, start, minutes)
    p = pattern(expr, tz=zone)
    got = []
    t = int(start.timestamp() * 1000) - 1
    end = start.timestamp() * 1000 + minutes * 60000
    while (t := p.next_after(t)) is not None and t < end:  # type: ignore[assignment]
        got.append(t)
    assert got == want


@settings(max_examples=200, deadline=None)
@given(expr=exprs, zone=zones, offset=st.integers(0, 400 * 86400 * 1000))
def test_next_is_strictly_increasing_and_whole_seconds(expr: str, zone: str, offset: int) -> None:
    p = pattern(expr, tz=zone)
    t = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000) + offset
    for _ in range(5):
        n = p.next_after(t)
        assert n is not None and n > t and n % 1000 == 0
        t = n


@pytest.mark.parametrize("expr", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 6,9,11 *"])
def test_patterns_that_never_match_are_refused(expr: str) -> None:
    with pytest.raises(ValueError, match="never matches"):
        pattern(expr, tz="UTC")
