"""The run ledger and the run options end to end: real `celery beat` processes, real
`celery worker` processes (prefork, solo, threads) with `imports = ["redbeat_safe.runs"]`,
a real Redis broker. The tasks write their own start and end to Redis (tests/beatapp.py
`sleepy`), and the overlap checks are made against those records as well as the
ledger's."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from typing import Any

import pytest
from prometheus_client import generate_latest

from conftest import BeatGroup, cli, make_app
from harness import RedisServer, wait_for
from redbeat_safe import Schedules
from redbeat_safe.dispatch import task_id_for
from redbeat_safe.metrics import cluster_registry

LEDGER = {"BEAT_LEDGER": "1"}


def _own_runs(group: BeatGroup, entry: str) -> list[dict[str, Any]]:
    """The task's own records: one per run, start and (if it ended) end, wall clock."""
    raw = group.server.client().lrange(f"{{{group.prefix}}}:test:runs", 0, -1)
    runs: dict[str, dict[str, Any]] = {}
    for r in map(json.loads, raw):
        if r["entry"] == entry:
            runs.setdefault(r["id"], {}).update(r)
    return sorted(runs.values(), key=lambda r: r["start"])


def _never_two_at_once(runs: list[dict[str, Any]]) -> None:
    ended = [r for r in runs if "end" in r]
    for a, b in zip(ended, ended[1:], strict=False):
        assert b["start"] >= a["end"] - 0.01, f"two runs at once: {a} and {b}"


def _published(s: Schedules, entry: str) -> list[int]:
    """Ticks published, from the entry's history (the workers consumed the queue): each
    once, with its derived task id."""
    history = s.history(entry, 100)
    counts = Counter(d.tick_ms for d in history)
    assert set(counts.values()) <= {1}, f"published twice: {[t for t, n in counts.items() if n > 1]}"
    assert all(d.task_id == task_id_for(s.settings.key_prefix, entry, d.tick_ms) for d in history)
    return sorted(counts)


@pytest.mark.parametrize("pool", ["prefork", pytest.param("solo", marks=pytest.mark.slow), pytest.param("threads", marks=pytest.mark.slow)])
def test_the_ledger_records_what_became_of_each_tick(beats: BeatGroup, redis_server: RedisServer, pool: str) -> None:
    schedule = {"ok": {"every": 1, "task": "beatapp.sleepy", "kwargs": {"seconds": 0.2}}, "bad": {"every": 1, "task": "beatapp.boom"}}
    worker = beats.worker(schedule, "w", pool=pool, concurrency=2, **LEDGER)
    beat = beats.start(schedule, "a", **LEDGER)
    s = Schedules(make_app(redis_server, beats.prefix))
    wait_for(lambda: len([d for d in s.history("ok", 20) if d.outcome == "succeeded"]) >= 3
             and len([d for d in s.history("bad", 20) if d.outcome == "failed"]) >= 3, 40, what="outcomes in the ledger")
    beats.stop_all()
    ok = [d for d in s.history("ok", 20) if d.outcome == "succeeded"]
    assert all(d.duration_ms is not None and 150 <= d.duration_ms < 5000 for d in ok), [d.duration_ms for d in ok]
    assert all(d.worker and ":" in d.worker for d in ok)
    bad = [d for d in s.history("bad", 20) if d.outcome == "failed"]
    assert all(d.exception == "ValueError" for d in bad)
    why = cli(beats, "why", "bad", "-n", "3")
    assert why.returncode == 0 and why.stdout.count("failed (ValueError)") >= 2, why.stdout
    assert "published by " in why.stdout and "+" in why.stdout
    stats = {k.decode(): int(v) for k, v in redis_server.client().hgetall(f"{{{beats.prefix}}}:runstats").items()}
    assert stats.get("failed:bad", 0) >= 3 and stats.get("succeeded:ok", 0) >= 3, stats
    assert "Traceback" not in beat.output() and "redbeat_safe.runs: could not record" not in worker.output()
    scrape = generate_latest(cluster_registry(s.store)).decode()  # the metrics carry it too
    failed = re.search(r'redbeat_safe_runs_total\{entry="bad",outcome="failed"\} (\d+)', scrape)
    assert failed and int(failed.group(1)) >= 3, scrape[-2000:]
    age = re.search(r'redbeat_safe_entry_last_success_age_seconds\{entry="ok"\} ([0-9.e+-]+)', scrape)
    assert age and float(age.group(1)) < 30


def test_a_store_that_cannot_be_reached_never_fails_a_task(beats: BeatGroup, redis_server: RedisServer) -> None:
    """The workers' ledger points at a Redis that is down: every task still runs and
    succeeds, the failure is logged once (not per task), and the tasks never wait for it."""
    schedule = {"ok": {"every": 0.5}}
    worker = beats.worker(schedule, "w", concurrency=1, BEAT_LEDGER="1", BEAT_REDIS_URL="redis://127.0.0.1:1/0")
    beats.start(schedule, "a")
    wait_for(lambda: worker.output().count("succeeded in") >= 8, 40, what="tasks run while the ledger's Redis is down")
    beats.stop_all()
    out = worker.output()
    assert "raised unexpected" not in out, out[-3000:]
    said = re.findall(r"(\w+Process|ForkPoolWorker-\d+)\] redbeat_safe\.runs: could not record", out)
    # once per process that writes (the main process notes `received`, the pool child the rest), not once per task
    assert said and len(said) == len(set(said)) <= 2, out[-3000:]


@pytest.mark.slow
def test_skip_never_runs_two_at_once_with_two_beats_and_two_workers(beats: BeatGroup, redis_server: RedisServer) -> None:
    """The issue's scenario: a task of 2.5 s every 1 s, overlap=skip, two beats, two
    prefork workers: never two runs at once, each skipped tick recorded, nothing twice."""
    schedule = {"slow": {"every": 1, "task": "beatapp.sleepy", "kwargs": {"seconds": 2.5}, "overlap": "skip"}}
    beats.worker(schedule, "w1", **LEDGER)
    beats.worker(schedule, "w2", **LEDGER)
    time.sleep(3)  # the workers say they keep the ledger before the beats plan
    beats.start(schedule, "a", **LEDGER)
    beats.start(schedule, "b", **LEDGER)
    s = Schedules(make_app(redis_server, beats.prefix))
    time.sleep(16)
    beats.stop_all()
    runs = _own_runs(beats, "slow")
    assert len([r for r in runs if "end" in r]) >= 4, runs
    _never_two_at_once(runs)
    published = _published(s, "slow")
    ledger = dict(s.store.runs("slow", 100))
    skipped = sorted(t for t, r in ledger.items() if r.get("state") == "skipped" and r.get("reason") == "overlap")
    assert len(skipped) >= 6, ledger
    assert not set(skipped) & set(published)
    ticks = sorted(set(published) | set(skipped))
    assert [b - a for a, b in zip(ticks, ticks[1:], strict=False)] == [1000] * (len(ticks) - 1), "a tick neither ran nor was skipped"
    t0 = min(published + skipped)
    timeline = [f"{(t - t0) / 1000:5.1f} s  {'published' if t in published else 'skipped (overlap)'}" for t in ticks]
    timeline += [f"run of tick {(r['tick'] - t0) / 1000:4.1f} s in pid {r['pid']}: {r['start'] - t0 / 1000:5.2f} s → {r['end'] - t0 / 1000:5.2f} s"
                 for r in runs if "end" in r]
    print(f"\n{len(published)} runs, {len(skipped)} ticks skipped (overlap); ticks and runs from the first tick:\n" + "\n".join(timeline)
          + "\nwhy:\n" + "\n".join(r.detail for r in s.why("slow", 6)))


@pytest.mark.slow
def test_a_run_longer_than_the_run_lease_keeps_its_entry_busy_in_a_fresh_pool_child(beats: BeatGroup,
                                                                                    redis_server: RedisServer) -> None:
    """The first task of a forked pool child (its `received` was noted by the parent) is
    refreshed like any other: a run of 7 s under a run lease of 2 s never lets a second
    run of the entry start (found by review: the child forgot it on its first note)."""
    conf = {**LEDGER, "BEAT_EXTRA_CONF": json.dumps({"redbeat_safe_run_lease": 2})}
    schedule = {"long": {"every": 1, "task": "beatapp.sleepy", "kwargs": {"seconds": 7}, "overlap": "skip"}}
    beats.worker(schedule, "w1", concurrency=2, **conf)
    time.sleep(2)
    beats.start(schedule, "a", **conf)
    wait_for(lambda: [r for r in _own_runs(beats, "long") if "end" in r], 30, what="the first run to end")
    time.sleep(1)
    beats.stop_all()
    runs = _own_runs(beats, "long")
    _never_two_at_once(runs)
    assert len(runs) <= 2, runs  # the first, and at most the one let through when it ended


@pytest.mark.slow
def test_skip_with_the_worker_killed_mid_run_resumes_within_the_run_lease(beats: BeatGroup, redis_server: RedisServer) -> None:
    lease = 3
    conf = {**LEDGER, "BEAT_EXTRA_CONF": json.dumps({"redbeat_safe_run_lease": lease})}
    schedule = {"long": {"every": 1, "task": "beatapp.sleepy", "kwargs": {"seconds": 60}, "overlap": "skip"}}
    w1 = beats.worker(schedule, "w1", **conf)
    time.sleep(2)
    beats.start(schedule, "a", **conf)
    wait_for(lambda: _own_runs(beats, "long"), 20, what="the first run to start")
    time.sleep(2)  # running; the ticks meanwhile are skipped
    killed = time.time()
    w1.kill()  # SIGKILL, pool included: its marker is no longer refreshed
    beats.worker(schedule, "w2", **conf)
    wait_for(lambda: len(_own_runs(beats, "long")) >= 2, 30, what="the entry to resume after the worker died")
    resumed = _own_runs(beats, "long")[1]["start"]
    beats.stop_all()
    # the bound of docs/runs.md: one lease after the last refresh (at most a third of a lease before the
    # kill), plus the loop interval and the new worker's start
    assert resumed - killed <= lease + 1 + 8, resumed - killed
    print(f"\nworker killed; the entry ran again {resumed - killed:.1f} s later (run lease {lease} s)")


@pytest.mark.slow
def test_buffer_one_runs_back_to_back(beats: BeatGroup, redis_server: RedisServer) -> None:
    schedule = {"buf": {"every": 1, "task": "beatapp.sleepy", "kwargs": {"seconds": 2}, "overlap": "buffer_one"}}
    beats.worker(schedule, "w1", concurrency=2, **LEDGER)
    time.sleep(2)
    beats.start(schedule, "a", **LEDGER)
    time.sleep(12)
    beats.stop_all()
    runs = [r for r in _own_runs(beats, "buf") if "end" in r]
    assert len(runs) >= 3, runs
    _never_two_at_once(runs)
    gaps = [b["start"] - a["end"] for a, b in zip(runs, runs[1:], strict=False)]
    assert max(gaps) < 1.5, f"a buffered tick waited after the run before it ended: {gaps}"
    s = Schedules(make_app(redis_server, beats.prefix))
    _published(s, "buf")
    ledger = s.store.runs("buf", 100)
    assert any(r.get("reason") == "overlap" for _, r in ledger)


@pytest.mark.slow
def test_replace_revokes_the_running_task_for_the_new_tick(beats: BeatGroup, redis_server: RedisServer) -> None:
    schedule = {"rep": {"every": 2, "task": "beatapp.sleepy", "kwargs": {"seconds": 30}, "overlap": "replace", "terminate": True}}
    beats.worker(schedule, "w1", concurrency=2, **LEDGER)
    time.sleep(2)
    beats.start(schedule, "a", **LEDGER)
    s = Schedules(make_app(redis_server, beats.prefix))
    wait_for(lambda: len([d for d in s.history("rep", 20) if d.outcome in ("revoked", "failed")]) >= 2, 40,
             what="replaced runs reported")
    beats.stop_all()
    runs = _own_runs(beats, "rep")
    assert runs and not any("end" in r for r in runs), "a replaced run was not terminated"
    history = s.history("rep", 20)
    assert [d.outcome for d in history[1:3]] and all(d.outcome in ("revoked", "failed") for d in history[1:3]), history


@pytest.mark.slow
def test_stale_ticks_expire_and_fresh_ones_run_after_the_workers_return(beats: BeatGroup, redis_server: RedisServer) -> None:
    schedule = {"exp": {"every": 1, "task": "beatapp.sleepy", "kwargs": {"seconds": 0.05}, "expires_after": 2}}
    beats.start(schedule, "a", **LEDGER)
    time.sleep(8)  # no worker: eight ticks wait in the queue
    beats.worker(schedule, "w1", concurrency=2, **LEDGER)
    s = Schedules(make_app(redis_server, beats.prefix))
    wait_for(lambda: len([d for d in s.history("exp", 30) if d.outcome == "succeeded"]) >= 3, 30, what="fresh ticks to run")
    beats.stop_all()
    history = s.history("exp", 30)
    expired = [d for d in history if d.outcome == "expired"]
    ran = [d for d in history if d.outcome == "succeeded"]
    assert len(expired) >= 4, [(d.tick_ms, d.outcome) for d in history]
    assert min(d.tick_ms for d in ran) > max(d.tick_ms for d in expired) - 3000  # the old ones were dropped, not run late
    assert all(r["start"] * 1000 - r["tick"] < 2500 for r in _own_runs(beats, "exp")), "a tick ran after its expiry"


@pytest.mark.slow
def test_jitter_spreads_a_burst_and_keeps_ticks_and_ids(beats: BeatGroup, redis_server: RedisServer) -> None:
    """1,000 entries due at the same instant with jitter=2s, two beats: published over about
    2 s, each once, with the nominal tick and the derived task id."""
    n = 1000
    schedule = {f"j{i:03d}": {"pattern": "*/5 * * * * *", "jitter": 2} for i in range(n)}
    beats.start(schedule, "a", BEAT_STAMP="1")
    beats.start(schedule, "b", BEAT_STAMP="1")
    s = Schedules(make_app(redis_server, beats.prefix))
    wait_for(lambda: all(s.history(f"j{i:03d}", 5) for i in (0, n // 2, n - 1)), 30, what="the first burst")
    time.sleep(4)
    beats.stop_all()
    late = [m.headers["test_pub_ms"] - m.tick for m in beats.broker.messages()]
    assert min(late) < 600 and max(late) > 1500 and max(late) < 3000, (min(late), max(late))
    assert sum(x < 1000 for x in late) / len(late) > 0.25 and sum(x >= 1000 for x in late) / len(late) > 0.25, sorted(late)[::20]
    for name, msgs in beats.broker.by_entry().items():
        assert len({m.task_id for m in msgs}) == len(msgs), name
        assert all(m.tick % 5000 == 0 for m in msgs), name
