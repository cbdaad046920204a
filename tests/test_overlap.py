"""Overlap policies, decided in the claim on the running marker (in-process engines on a
real Redis and a server clock the test sets; the worker side is store.run_event, what
redbeat_safe.runs calls): skip, buffer_one, replace, a marker whose lease runs out, and
no policy applied while no worker keeps the ledger."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from faults import T0, Fleet, run_until_idle
from harness import RedisServer
from redbeat_safe import every, registry
from redbeat_safe.definitions import build
from redbeat_safe.dispatch import jitter_offset, task_id_for
from redbeat_safe.schedules import ms_to_datetime
from redbeat_safe.store import RedisStore

RUN_LEASE = 5_000


def _fleet(redis_server: RedisServer, prefix: str, overlap: str, **extra: object) -> tuple[Fleet, RedisStore]:
    fleet = Fleet(redis_server.client(), prefix, lease_ms=10_000)
    fleet.settings = fleet.settings.__class__(**{**fleet.settings.__dict__, "run_lease_ms": RUN_LEASE, "queue_lease_ms": 60_000})
    entry = build("e", "t", every(1, start=ms_to_datetime(T0 + 1000), overlap=overlap, **extra), default_tz="UTC")  # type: ignore[arg-type]
    store = fleet.store()
    registry.upsert(store, [entry], "api")
    store.run_event("", 0, "", "alive", "worker-1", 1, 3_600_000)  # a worker keeps the ledger
    return fleet, store


def _step(fleet: Fleet, engine: object, ms: int = 1000) -> None:
    fleet.clock.advance(ms)
    run_until_idle(engine)  # type: ignore[arg-type]


def _first_published(redis_server: RedisServer, prefix: str, overlap: str) -> tuple[Fleet, RedisStore, Any, int]:
    """One engine, registered, that has just published the entry's first tick (T0+1000)."""
    fleet, store = _fleet(redis_server, prefix, overlap)
    a = fleet.engine("a")
    a.register()
    fleet.clock.set(T0)
    _step(fleet, a)
    return fleet, store, a, T0 + 1000


def _runs(store: RedisStore) -> dict[int, str]:
    return {t: f"{r.get('state')}:{r.get('reason', '')}" for t, r in store.runs("e")}


def test_skip_publishes_nothing_while_the_previous_run_is_queued_or_running(redis_server: RedisServer, prefix: str) -> None:
    fleet, store = _fleet(redis_server, prefix, "skip")
    a = fleet.engine("a")
    a.register()
    fleet.clock.set(T0)
    _step(fleet, a)  # T0+1000: published, the marker says queued
    assert fleet.ticks("e") == [T0 + 1000]
    _step(fleet, a)  # queued still (no worker has started it): skipped
    first = T0 + 1000
    store.run_event("e", first, task_id_for(prefix, "e", first), "started", "w", 1, RUN_LEASE)
    _step(fleet, a)  # running: skipped
    store.run_event("e", first, task_id_for(prefix, "e", first), "succeeded", "w", 1, RUN_LEASE)
    _step(fleet, a)  # ended: this one goes out
    assert fleet.ticks("e") == [T0 + 1000, T0 + 4000]
    runs = _runs(store)
    assert runs[T0 + 2000] == runs[T0 + 3000] == "skipped:overlap" and runs[T0 + 1000] == "succeeded:"
    assert int(fleet.client.hget(fleet.keys.runstats, "skipped.overlap:e")) == 2
    assert int(fleet.client.hget(fleet.keys.runstats, "succeeded:e")) == 1


def test_two_beats_never_both_let_a_tick_through(redis_server: RedisServer, prefix: str) -> None:
    """Both plan the same due tick before either claims; the claim decides on the marker."""
    fleet, store = _fleet(redis_server, prefix, "skip")
    a, b = fleet.engine("a"), fleet.engine("b")
    a.register()
    b.register()
    for _ in range(6):
        fleet.clock.advance(1000)
        pa, pb = a.prepare(), b.prepare()
        a.finish(pa)
        b.finish(pb)
    assert len(fleet.sent) == 1, "a second run went out while the first was queued"


def test_buffer_one_keeps_one_tick_and_releases_it_when_the_run_ends(redis_server: RedisServer, prefix: str) -> None:
    fleet, store, a, first = _first_published(redis_server, prefix, "buffer_one")
    store.run_event("e", first, task_id_for(prefix, "e", first), "started", "w", 1, RUN_LEASE)
    _step(fleet, a)  # T0+2000: buffered
    _step(fleet, a)  # T0+3000: skipped, one is buffered already
    assert fleet.ticks("e") == [first]
    runs = _runs(store)
    assert runs[T0 + 2000] == "queued:buffered" and runs[T0 + 3000] == "skipped:overlap"
    store.run_event("e", first, task_id_for(prefix, "e", first), "succeeded", "w", 1, RUN_LEASE)
    run_until_idle(a)  # the end released the buffered tick to the reaper: it goes out now, with its own id
    assert fleet.ticks("e") == [first, T0 + 2000]
    assert [s.task_id for s in fleet.sent][-1] == task_id_for(prefix, "e", T0 + 2000)
    _step(fleet, a)  # T0+4000: the released tick counts as queued, so this one waits in the buffer
    assert fleet.ticks("e") == [first, T0 + 2000]


def test_a_run_longer_than_the_ledger_keeps_still_ends_once_and_frees_its_entry(redis_server: RedisServer,
                                                                               prefix: str) -> None:
    """buffer_one, a run that outlasts 100 ticks (the ledger keeps the latest 100, so its
    own record is trimmed): its end still clears the marker, releases the buffered tick
    and counts once; the same end sent again counts nothing more."""
    fleet, store, a, first = _first_published(redis_server, prefix, "buffer_one")
    tid = task_id_for(prefix, "e", first)
    store.run_event("e", first, tid, "started", "w", 1, 3_600_000)
    for _ in range(110):  # skipped ticks fill the ledger: the run's own record is trimmed away
        _step(fleet, a)
    assert first not in dict(store.runs("e", 1000))
    assert fleet.ticks("e") == [first]
    assert store.run_event("e", first, tid, "succeeded", "w", 1, RUN_LEASE) is True
    run_until_idle(a)
    assert fleet.ticks("e") == [first, T0 + 2000]  # the buffered tick went out when the run ended
    assert store.run_event("e", first, tid, "succeeded", "w", 1, RUN_LEASE) is False  # a retry: nothing more
    assert int(fleet.client.hget(fleet.keys.runstats, "succeeded:e")) == 1
    assert fleet.client.hget(fleet.keys.lastok, "e") is not None


def test_a_tick_that_expires_by_the_default_frees_its_entry_after_that_expiry(redis_server: RedisServer, prefix: str) -> None:
    """overlap=skip, no worker ever starts the tick, and its message expires after 2 s by
    `redbeat_safe_expires_after` (not its own expires_after): the entry counts as busy for
    that expiry plus the run lease, not for the hour-long queue lease."""
    fleet, store = _fleet(redis_server, prefix, "skip")
    fleet.settings = fleet.settings.__class__(**{**fleet.settings.__dict__, "expires_after": 2000})
    a = fleet.engine("a")
    a.register()
    fleet.clock.set(T0)
    for _ in range(12):
        _step(fleet, a)
    # published at T0+1000, held for 2 s + the 5 s run lease, then free: T0+8000 goes out (before the fix: none for 1 h)
    assert fleet.ticks("e")[:2] == [T0 + 1000, T0 + 8000], fleet.ticks("e")


def test_replace_publishes_the_new_tick_and_revokes_the_running_one(redis_server: RedisServer, prefix: str) -> None:
    fleet, store = _fleet(redis_server, prefix, "replace", terminate=True)
    a = fleet.engine("a")
    revoked: list[tuple[str, bool]] = []
    a.revoke = lambda task_id, terminate: revoked.append((task_id, terminate))
    a.register()
    fleet.clock.set(T0)
    _step(fleet, a)
    first = T0 + 1000
    store.run_event("e", first, "running-id", "started", "w", 1, RUN_LEASE)
    _step(fleet, a)
    assert fleet.ticks("e") == [first, T0 + 2000]
    assert revoked == [("running-id", True)]
    _step(fleet, a)  # the queued T0+2000 (never started) is revoked by its own id
    assert revoked[-1] == (task_id_for(prefix, "e", T0 + 2000), True)


def test_a_marker_whose_lease_runs_out_frees_the_entry(redis_server: RedisServer, prefix: str) -> None:
    """A worker SIGKILLed mid-run stops refreshing: one lease later the entry goes on."""
    fleet, store, a, first = _first_published(redis_server, prefix, "skip")
    store.run_event("e", first, task_id_for(prefix, "e", first), "started", "w", 1, RUN_LEASE)  # then the worker dies
    for _ in range(4):
        _step(fleet, a)
    assert fleet.ticks("e") == [first]  # within the lease: still running, as far as anyone knows
    for _ in range(3):
        _step(fleet, a)
    assert len(fleet.ticks("e")) == 2 and fleet.ticks("e")[1] <= first + RUN_LEASE + 1000, fleet.ticks("e")


def test_without_a_worker_keeping_the_ledger_the_policy_is_not_applied(redis_server: RedisServer, prefix: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    fleet, store = _fleet(redis_server, prefix, "skip")
    fleet.client.delete(fleet.keys.ledgers)
    a = fleet.engine("a")
    a.register()
    fleet.clock.set(T0)
    with caplog.at_level(logging.WARNING, logger="redbeat_safe"):
        for _ in range(3):
            _step(fleet, a)
    assert fleet.ticks("e") == [T0 + 1000, T0 + 2000, T0 + 3000]  # allow: nothing would ever clear a marker
    assert sum("needs the run ledger" in r.getMessage() for r in caplog.records) == 1


def test_a_removed_entry_leaves_no_ledger_marker_or_buffered_tick(redis_server: RedisServer, prefix: str) -> None:
    fleet, store = _fleet(redis_server, prefix, "buffer_one")
    a = fleet.engine("a")
    a.register()
    fleet.clock.set(T0)
    _step(fleet, a)
    store.run_event("e", T0 + 1000, "x", "started", "w", 1, RUN_LEASE)
    _step(fleet, a)
    assert fleet.client.hexists(fleet.keys.buffered, "e")
    store.remove(["e"])
    k = fleet.keys
    assert not fleet.client.exists(k.runs("e")) and not fleet.client.hexists(k.running, "e")
    assert not fleet.client.hexists(k.buffered, "e") and fleet.client.zscore(k.runlease, "e") is None
    assert not [m for m in fleet.client.hkeys(k.flight) if m.endswith(b":e") and not fleet.client.zscore(k.inflight, m)]
    assert store.run_event("e", T0 + 1000, "x", "succeeded", "w", 1, RUN_LEASE) is False  # no ledger comes back


def test_an_event_recorded_twice_counts_once(redis_server: RedisServer, prefix: str) -> None:
    fleet, store = _fleet(redis_server, prefix, "allow")
    for _ in range(2):  # a lost reply, a retry
        store.run_event("e", T0 + 1000, "x", "failed", "w", 1, RUN_LEASE, "ValueError")
    assert int(fleet.client.hget(fleet.keys.runstats, "failed:e")) == 1
    assert store.run_event("e", T0 + 1000, "x", "started", "w", 1, RUN_LEASE) is False  # never backwards


def test_a_batch_of_events_records_what_the_same_events_one_by_one_record_and_twice_changes_nothing(
        redis_server: RedisServer, prefix: str) -> None:
    """A worker's batch goes out as a few script runs of many events each: in order, the
    same records as one call per event; sent again whole (a lost reply), nothing moves."""
    ticks = [T0 + 1000 * i for i in range(1, 300)]  # more than one script run's worth (RUN_BATCH)
    events: list[tuple[object, ...]] = []
    for i, t in enumerate(ticks):
        tid = task_id_for(prefix, "e", t)
        events += [("e", t, tid, "received", "w", 1, RUN_LEASE, "", t + 1), ("e", t, tid, "started", "w", 1, RUN_LEASE, "", t + 2),
                   ("e", t, tid, "failed" if i % 3 == 0 else "succeeded", "w", 1, RUN_LEASE, "ValueError" if i % 3 == 0 else "",
                    t + 5)]
    records = []
    for one_by_one in (True, False):
        fleet, store = _fleet(redis_server, f"{prefix}{int(one_by_one)}", "allow")
        if one_by_one:
            replies = [int(store.run_event(*e)) for e in events]  # type: ignore[arg-type]
        else:
            replies = store.run_events(events)
            assert store.run_events(events) == [0] * len(events)  # the whole batch again: already recorded
        assert replies == [1] * len(events)
        records.append(store.runs("e", limit=1000))
        stats = {k.decode(): int(v) for k, v in fleet.client.hgetall(fleet.keys.runstats).items()}
        assert stats == {"failed:e": 100, "succeeded:e": 199}
    assert records[0] == records[1] and len(records[0]) == 100  # kept: the latest HISTORY_LENGTH ticks
    assert records[1][0][1]["ms"] == 3 and records[1][0][1]["state"] == "succeeded"


def test_jitter_is_the_same_on_every_beat_and_spread_below_its_bound() -> None:
    offsets = [jitter_offset("p", f"e{i}", 1_800_000_000_000, 2000) for i in range(2000)]
    assert offsets == [jitter_offset("p", f"e{i}", 1_800_000_000_000, 2000) for i in range(2000)]
    assert 0 <= min(offsets) < 50 and 1950 < max(offsets) < 2000
    assert 400 < sum(o < 1000 for o in offsets) / 2 < 600  # about half in each half
