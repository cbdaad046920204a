"""The catch-up model (docs/guarantees.md, "Misfire (catch-up) policies"), checked
against a brute-force reference, then end to end through the engine.

A due tick no older than the grace is on time and always published. Older
ticks were missed: ``all`` publishes the latest ``catchup_max`` of them,
``skip`` none, ``coalesce`` one (the latest) only when no on-time tick runs
anyway. ``beat_cron_starting_deadline`` first drops pattern ticks older than
the deadline. Dropped ticks are logged.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faults import T0, Fleet, run_until_idle
from harness import RedisServer
from redbeat_safe import every, pattern, registry
from redbeat_safe.catchup import MAX_TICKS_PER_CLAIM, plan
from redbeat_safe.definitions import build
from redbeat_safe.schedules import Schedule


def reference(schedule: Schedule, due: int, now: int, runs: int, policy: str, grace: int, deadline: int | None,
              max_catchup: int) -> list[int]:
    """Every tick the model publishes, by enumeration."""
    ticks: list[int] = []
    t: int | None = due
    while t is not None and t <= now:
        ticks.append(t)
        t = schedule.next_after(t)
    if schedule.end_ms is not None:
        ticks = [t for t in ticks if t <= schedule.end_ms]
    if deadline is not None:
        ticks = [t for t in ticks if t >= now - deadline]
    on_time = [t for t in ticks if t >= now - grace]
    missed = [t for t in ticks if t < now - grace]
    if policy == "all":
        chosen = (missed[-max_catchup:] if max_catchup else []) + on_time
    elif policy == "skip":
        chosen = on_time
    else:
        chosen = on_time or missed[-1:]
    if schedule.limit is not None:
        chosen = chosen[: max(0, schedule.limit - runs)]
    return chosen


def drive(schedule: Schedule, due: int, now: int, runs: int, policy: str, grace: int, deadline: int | None,
          max_catchup: int) -> tuple[list[int], int | None, int, bool]:
    """Consecutive claims at one instant, as a beat makes them: (published, next tick, dropped, counted exactly)."""
    fired: list[int] = []
    dropped, exact = 0, True
    current: int | None = due
    for _ in range(10_000):
        if current is None or current > now:
            break
        p = plan(schedule, current, now, runs + len(fired), policy=policy, grace_ms=grace, deadline_ms=deadline, max_catchup=max_catchup)
        assert len(p.fire) <= MAX_TICKS_PER_CLAIM and p.fire == sorted(p.fire) and (not fired or not p.fire or p.fire[0] > fired[-1])
        assert p.next is None or p.next > current
        fired += p.fire
        dropped += p.dropped
        exact = exact and p.counted_all
        current = p.next
    return fired, current, dropped, exact


SCHEDULES = st.one_of(
    st.sampled_from([10, 50, 250, 1000, 7000, 60_000]).map(lambda ms: every(milliseconds=ms)),
    st.sampled_from(["*/1 * * * * *", "*/7 * * * * *", "*/2 * * * *"]).map(lambda e: pattern(e, tz="UTC")),
)


@settings(max_examples=400, deadline=None)
@given(schedule=SCHEDULES, start=st.integers(0, 10_000), down=st.integers(0, 400_000), grace=st.integers(0, 15_000),
       policy=st.sampled_from(["coalesce", "skip", "all"]), max_catchup=st.sampled_from([0, 1, 3, 100, 1000]),
       deadline=st.one_of(st.none(), st.integers(0, 120_000)), limit=st.one_of(st.none(), st.integers(1, 500)),
       runs=st.integers(0, 3))
def test_consecutive_claims_publish_exactly_what_the_model_says(
    schedule: Schedule, start: int, down: int, grace: int, policy: str, max_catchup: int, deadline: int | None,
    limit: int | None, runs: int,
) -> None:
    if limit is not None:
        schedule = type(schedule).from_json({**schedule.to_json(), "limit": limit + runs})  # type: ignore[attr-defined]
    due = schedule.first_after(T0 + start)
    assert due is not None
    now = due + down
    expected = reference(schedule, due, now, runs, policy, grace, deadline, max_catchup)
    fired, nxt, dropped, exact = drive(schedule, due, now, runs, policy, grace, deadline, max_catchup)
    assert fired == expected
    everything = reference(schedule, due, now, 0, "all", 10**12, None, 10**9)
    if schedule.limit is None:
        assert dropped == len(everything) - len(fired) if exact else dropped <= len(everything) - len(fired)
        assert exact or schedule.kind == "pattern"  # every counts by arithmetic
        assert nxt == schedule.next_after(everything[-1])
    elif len(fired) + runs >= schedule.limit:
        assert nxt is None


def _fleet(redis_server: RedisServer, prefix: str, policy: str) -> Fleet:
    return Fleet(redis_server.client(), prefix, lease_ms=10_000, catchup=policy, catchup_max=100)


@pytest.mark.parametrize("policy, expected", [("all", 100 + 221), ("skip", 221), ("coalesce", 221)])
def test_after_downtime_every_on_time_tick_is_published_whatever_the_policy(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture, policy: str, expected: int
) -> None:
    """every 50 ms, no beat for 30 s, grace = lease 10 s + loop 1 s: 221 ticks on time, 379 missed."""
    fleet = _fleet(redis_server, prefix, policy)
    registry.upsert(fleet.store(), [build("e", "t", every(0.05), default_tz="UTC")], "api")
    beat = fleet.engine("beat")
    beat.register()
    fleet.clock.advance(30_000)
    with caplog.at_level(logging.INFO, logger="redbeat_safe"):
        run_until_idle(beat)
    ticks = fleet.ticks("e")
    assert len(ticks) == expected, (policy, len(ticks))
    assert ticks[-221:] == list(range(T0 + 19_000, T0 + 30_001, 50))
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and str(600 - expected) in dropped[0], dropped


def test_coalesce_runs_the_latest_missed_tick_once_when_none_is_on_time(redis_server: RedisServer, prefix: str) -> None:
    fleet = _fleet(redis_server, prefix, "coalesce")
    registry.upsert(fleet.store(), [build("e", "t", every(60), default_tz="UTC")], "api")
    beat = fleet.engine("beat")
    beat.register()
    fleet.clock.advance(5 * 60_000 + 30_000)
    run_until_idle(beat)
    assert fleet.ticks("e") == [T0 + 5 * 60_000]
