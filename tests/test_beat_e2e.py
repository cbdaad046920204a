"""End to end: real `celery beat` processes, a real redis-server, messages read off the broker."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import BeatGroup, make_app
from harness import RedisServer, faketime_library, wait_for
from history import assert_exactly_once, check
from redbeat_safe import Schedules, every, pattern
from redbeat_safe.dispatch import task_id_for
from redbeat_safe.schedules import iso
from redbeat_safe.store import Keys


def ms() -> int:
    return int(time.time() * 1000)


FOUR = {
    "every1": {"every": 1},
    "every2": {"every": 2},
    "secs": {"pattern": "*/1 * * * * *"},
    "berlin": {"pattern": "*/2 * * * * *", "tz": "Europe/Berlin"},
}
FOUR_SCHEDULES = {
    "every1": every(1),
    "every2": every(2),
    "secs": pattern("*/1 * * * * *", tz="UTC"),
    "berlin": pattern("*/2 * * * * *", tz="Europe/Berlin"),
}


@pytest.mark.slow
def test_three_beats_kill_stop_and_late_start_every_tick_exactly_once(beats: BeatGroup) -> None:
    lease = {"BEAT_LEASE": "3"}
    a = beats.start(FOUR, "a", **lease)
    b = beats.start(FOUR, "b", **lease)
    a.wait_log("registered 4 static entries")
    time.sleep(6)
    c = beats.start(FOUR, "c", **lease)  # started late
    time.sleep(3)
    a.kill()  # SIGKILL: no cleanup at all
    time.sleep(3)
    b.signal(signal.SIGSTOP)  # longer than the lease
    time.sleep(6)
    b.signal(signal.SIGCONT)
    time.sleep(8)
    stopped = ms()
    assert b.stop() == 0 and c.stop() == 0
    reports = check(beats.broker.messages(), beats.prefix, FOUR_SCHEDULES)
    assert_exactly_once(reports, min_ticks=10)
    for name, rep in reports.items():
        # ticks up to the end: the last one is within one interval (+ slack) of the stop
        step = 2000 if name in ("every2", "berlin") else 1000
        assert rep.ticks[-1] >= stopped - step - 1500, (name, stopped - rep.ticks[-1])
    assert "Traceback" not in b.output() + c.output()


def _hammer(url: str, prefix: str, seconds: float, churn: bool) -> None:
    from celery import Celery

    app = Celery("hammer", set_as_current=False)
    app.conf.update(redbeat_safe_redis_url=url, redbeat_safe_key_prefix=prefix, broker_url=url)
    s = Schedules(app)
    end = time.monotonic() + seconds
    flip = False
    while time.monotonic() < end:
        s.upsert("hot", "beatapp.record", every(1))
        if churn:
            if flip:
                s.remove("churn")
            else:
                s.upsert("churn", "beatapp.record", every(1))
            flip = not flip
    if churn:
        s.upsert("churn", "beatapp.record", every(1))


@pytest.mark.slow
def test_bullmq_scenario_concurrent_upserts_never_stall_or_duplicate(beats: BeatGroup, redis_server: RedisServer) -> None:
    """8 processes upsert the same every-1 s entry in a tight loop while 2 beats run (bullmq #3262)."""
    beats.start({}, "a")
    beats.start({}, "b")
    ctx = multiprocessing.get_context("spawn")
    churn_seconds = 12.0
    procs = [ctx.Process(target=_hammer, args=(redis_server.url, beats.prefix, churn_seconds, i == 0)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    churn_stopped = ms()
    time.sleep(6)
    stopped = ms()
    beats.stop_all()
    messages = beats.broker.messages()
    reports = check(messages, beats.prefix, {"hot": every(1), "churn": every(1)})
    hot = reports["hot"]
    assert hot.same_id_repeats == 0 and not hot.gaps
    assert len(hot.ticks) >= churn_seconds + 4 and hot.ticks[-1] >= stopped - 2500
    # the churned entry: every re-add anchors afresh, so only check after the churn
    after = [t for t in reports["churn"].ticks if t > churn_stopped + 1000]
    assert len(after) >= 3, reports["churn"].ticks[-5:]
    assert all(b - a == 1000 for a, b in zip(after, after[1:], strict=False))
    assert reports["churn"].same_id_repeats == 0


def test_ten_beats_started_at_once_write_each_entry_once(beats: BeatGroup, redis_server: RedisServer) -> None:
    group = [beats.start(FOUR, f"n{i}") for i in range(10)]
    for b in group:
        b.wait_log("registered 4 static entries", timeout=60)
    client = redis_server.client()
    k = Keys(beats.prefix)
    states = {n.decode(): json.loads(v) for n, v in client.hgetall(k.state).items()}
    assert sorted(states) == sorted(FOUR)
    for name, st in states.items():
        assert st["ver"] == 1, (name, st)  # written once, by whichever beat came first
    outcomes = "".join(b.output() for b in group)
    assert outcomes.count("(4 created)") == 1 and outcomes.count("(4 unchanged)") == 9
    time.sleep(5)
    beats.stop_all()
    assert_exactly_once(check(beats.broker.messages(), beats.prefix, FOUR_SCHEDULES), min_ticks=2)


def test_killed_between_claim_and_publish_the_tick_is_republished_with_the_same_id(beats: BeatGroup, tmp_path: Path) -> None:
    marker = tmp_path / "claimed.json"
    lease = {"BEAT_LEASE": "2", "BEAT_CRASH_MARKER": str(marker)}
    crasher = beats.start({"e": {"every": 1}}, "crasher", scheduler="beatapp.CrashingScheduler", **lease)
    wait_for(marker.exists, 30, what="the crashing beat to claim a tick")
    assert crasher.proc is not None and crasher.proc.wait(10) == -signal.SIGKILL
    ((name, ticks),) = json.loads(marker.read_text())
    assert beats.broker.messages() == []  # it died before publishing
    rescuer = beats.start({"e": {"every": 1}}, "rescuer", **lease)
    wait_for(lambda: any(m.tick == ticks[0] for m in beats.broker.messages()), 30, what="the claimed tick to be re-published")
    time.sleep(3)
    beats.stop_all()
    messages = beats.broker.messages()
    lost = [m for m in messages if m.tick == ticks[0]]
    assert len(lost) == 1 and lost[0].task_id == task_id_for(beats.prefix, name, ticks[0])
    # the line names the tick as the broker and the worker see it: ISO time and task id
    assert f"re-publishing e tick {ticks[0]} ({iso(ticks[0])}, task id {lost[0].task_id})" in rescuer.output()
    assert_exactly_once(check(messages, beats.prefix, {"e": every(1)}), min_ticks=3)


def test_redis_restart_with_aof_beats_reconnect_without_duplicates(own_redis: RedisServer, beats_factory: Callable[..., BeatGroup]) -> None:
    group = beats_factory(own_redis, "restart")
    schedule = {"every1": {"every": 1}, "secs": {"pattern": "*/1 * * * * *"}}
    a = group.start(schedule, "a", BEAT_LEASE="3")
    b = group.start(schedule, "b", BEAT_LEASE="3")
    a.wait_log("registered 2 static entries")
    time.sleep(4)
    run_id = own_redis.client().info("server")["run_id"]
    own_redis.restart()
    assert own_redis.client().info("server")["run_id"] != run_id
    time.sleep(8)
    assert a.proc is not None and a.proc.poll() is None and b.proc is not None and b.proc.poll() is None
    group.stop_all()
    reports = check(group.broker.messages(), "restart", {"every1": every(1), "secs": pattern("*/1 * * * * *", tz="UTC")})
    assert_exactly_once(reports, min_ticks=10)
    # redis-py may retry the reconnect itself, so an outage line is optional
    assert "Traceback" not in a.output() + b.output()


def test_redis_outage_is_logged_once_and_nothing_is_lost(own_redis: RedisServer, redis_server: RedisServer, beats: BeatGroup) -> None:
    """Store Redis down for 5 s (the broker stays up): one log line, no crash, no gap, no duplicate."""
    env = {"BEAT_REDIS_URL": own_redis.url}
    a = beats.start({"e": {"every": 1}}, "a", **env)
    a.wait_log("registered 1 static entries")
    time.sleep(3)
    own_redis.stop()
    time.sleep(5)
    own_redis.start()
    time.sleep(5)
    assert a.proc is not None and a.proc.poll() is None
    assert a.stop() == 0
    out = a.output()
    assert out.count("Redis unavailable") == 1 and out.count("Redis reachable again") == 1
    assert "Traceback" not in out
    assert_exactly_once(check(beats.broker.messages(), beats.prefix, {"e": every(1)}), min_ticks=10)


@pytest.mark.parametrize("skew", ["+30s", "-30s"])
def test_a_beat_with_a_skewed_clock_fires_on_the_server_clock(beats: BeatGroup, skew: str) -> None:
    lib = faketime_library()
    assert lib, "libfaketime is missing: `apt-get install -y faketime` (bash .ci/run does this)"
    probe = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"],
        env={"LD_PRELOAD": lib, "FAKETIME": skew},
        capture_output=True, text=True, check=True,
    )
    offset = float(probe.stdout) - time.time()
    assert abs(offset - int(skew[:-1])) < 5, f"faketime did not skew the clock ({offset:.1f}s)"
    schedule = {"e2": {"every": 2}, "p2": {"pattern": "*/2 * * * * *"}}
    beat = beats.start(schedule, "skewed", faketime=skew)
    first_seen: dict[str, int] = {}
    end = time.monotonic() + 10
    while time.monotonic() < end:
        for m in beats.broker.messages():
            first_seen.setdefault(m.task_id, ms())
        time.sleep(0.02)
    beat.stop()
    messages = beats.broker.messages()
    assert len(messages) >= 6
    for m in messages:
        seen = first_seen.get(m.task_id, ms())
        assert seen >= m.tick - 30, f"{m.entry} tick {m.tick} was published {m.tick - seen} ms early"
        assert seen - m.tick < 1500, f"{m.entry} tick {m.tick} was published {seen - m.tick} ms late"
    assert_exactly_once(check(messages, beats.prefix, {"e2": every(2), "p2": pattern("*/2 * * * * *", tz="UTC")}), min_ticks=3)


def test_corrupt_records_are_skipped_and_logged_once_while_the_rest_fire(beats: BeatGroup, redis_server: RedisServer) -> None:
    a = beats.start({"a": {"every": 1}, "b": {"every": 1}}, "a")
    a.wait_log("registered 2 static entries")
    time.sleep(2)
    client = redis_server.client()
    k = Keys(beats.prefix)
    planted = ms()
    client.hset(k.state, "a", "{not json")
    client.hset(k.defs, "ghost", '{"task": "x", "sched')  # truncated JSON
    client.hset(k.state, "ghost", json.dumps({"ver": 1, "dh": "0", "sh": "0", "runs": 0, "last": -1, "hold": -1, "enabled": True}))
    client.zadd(k.due, {"ghost": planted})
    client.hset(k.defs, "alien", json.dumps({"task": "x", "schedule": {"kind": "lunar"}, "args": [], "kwargs": {}, "options": {}}))
    client.hset(k.state, "alien", json.dumps({"ver": 1, "dh": "1", "sh": "1", "runs": 0, "last": -1, "hold": -1, "enabled": True}))
    client.zadd(k.due, {"alien": planted})
    time.sleep(4)
    out = a.output()
    for name in ("a", "ghost", "alien"):
        assert out.count(f"entry '{name}': set aside") == 1, name
    # repairing the corrupt one by upserting it again brings it back
    Schedules(make_app(redis_server, beats.prefix)).upsert("a", "beatapp.record", every(1))
    repaired = ms()
    time.sleep(3)
    a.stop()
    messages = beats.broker.messages()
    reports = check(messages, beats.prefix, {"b": every(1)})
    assert_exactly_once(reports, min_ticks=7)
    assert reports["b"].ticks[-1] > planted + 3000
    a_ticks = sorted(m.tick for m in messages if m.entry == "a")
    assert not [t for t in a_ticks if planted + 1000 < t < repaired]
    assert [t for t in a_ticks if t > repaired]


def test_sigterm_exits_cleanly_and_deregisters(beats: BeatGroup, redis_server: RedisServer) -> None:
    a = beats.start({"e": {"every": 1}}, "a")
    a.wait_log("registered 1 static entries")
    time.sleep(2)
    a.signal(signal.SIGTERM)
    assert a.proc is not None and a.proc.wait(15) == 0
    assert "Traceback" not in a.output()
    assert redis_server.client().zcard(Keys(beats.prefix).instances) == 0


def test_sigterm_in_the_middle_of_busy_passes_never_crashes(beats: BeatGroup, redis_server: RedisServer) -> None:
    """The handler runs close() wherever it interrupts tick(): mid Redis reply, mid publish."""
    busy = {f"e{i}": {"every": 1} for i in range(300)}
    group = [beats.start(busy, f"busy{i}") for i in range(3)]
    for b in group:
        b.wait_log("registered 300 static entries", timeout=60)
    time.sleep(2)
    for i, b in enumerate(group):
        time.sleep(0.137 * (i + 1))  # land at different points of a pass
        b.signal(signal.SIGTERM)
    for b in group:
        assert b.proc is not None and b.proc.wait(20) == 0, b.output()[-2000:]
        assert "Traceback" not in b.output()
    assert redis_server.client().zcard(Keys(beats.prefix).instances) == 0


@pytest.mark.slow
def test_rolling_sigterm_restarts_under_load_publish_every_tick_exactly_once(beats: BeatGroup) -> None:
    """A graceful stop lands mid-pass, mid-publish: the tick being published must be
    acknowledged, not handed back for another beat to publish again."""
    n = 300
    busy = {f"e{i}": {"every": 1} for i in range(n)}
    group = [beats.start(busy, f"roll{i}") for i in range(2)]
    for b in group:
        b.wait_log(f"registered {n} static entries", timeout=60)
    time.sleep(2)
    for round_ in range(8):
        i = round_ % 2
        time.sleep(0.6 + 0.113 * round_)  # land at different points of a pass
        group[i].signal(signal.SIGTERM)
        assert group[i].proc is not None and group[i].proc.wait(20) == 0, group[i].output()[-2000:]
        group[i] = beats.start(busy, f"roll{i}-{round_}")
        group[i].wait_log(f"registered {n} static entries", timeout=60)
    time.sleep(3)
    beats.stop_all()
    reports = check(beats.broker.messages(), beats.prefix, {name: every(1) for name in busy})
    repeats = {name: r.same_id_repeats for name, r in reports.items() if r.same_id_repeats}
    gaps = {name: r.gaps for name, r in reports.items() if r.gaps}
    assert not repeats and not gaps, (repeats, gaps)
    assert min(len(r.ticks) for r in reports.values()) >= 10


def test_scheduler_alias_from_the_entry_point(beats: BeatGroup) -> None:
    a = beats.start({"e": {"every": 1}}, "alias", scheduler="redbeat_safe")
    a.wait_log("registered 1 static entries")
    wait_for(lambda: len(beats.broker.messages()) >= 2, 15, what="two dispatches")
    a.stop()
    assert "redbeat_safe.scheduler.Scheduler" in a.output()


def test_celery_worker_dash_b_on_two_workers_dispatches_once(beats: BeatGroup, tmp_path: Path) -> None:
    import os

    env = dict(os.environ)
    env.update(beats.env({"e": {"every": 1}, "p": {"pattern": "*/1 * * * * *"}}))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parent.parent)])
    workers: list[subprocess.Popen[bytes]] = []
    logs = []
    for i in range(2):
        log = open(tmp_path / f"worker{i}.log", "wb")
        logs.append(log)
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "beatapp", "worker", "-B", "--scheduler", "redbeat_safe.Scheduler",
             "-Q", f"elsewhere-{beats.prefix}", "--pool", "solo", "-n", f"w{i}@%h", "--loglevel", "INFO",
             "--schedule", str(tmp_path / f"beat-w{i}")],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))
    try:
        wait_for(lambda: len(beats.broker.messages()) >= 16, 60, what="dispatches from the embedded beats")
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
        for log in logs:
            log.close()
    outputs = "".join((tmp_path / f"worker{i}.log").read_text() for i in range(2))
    assert outputs.count("registered 2 static entries") == 2
    assert_exactly_once(check(beats.broker.messages(), beats.prefix, {"e": every(1), "p": pattern("*/1 * * * * *", tz="UTC")}), min_ticks=5)


def test_messages_carry_identity_headers_args_and_options(beats: BeatGroup, redis_server: RedisServer) -> None:
    app = make_app(redis_server, beats.prefix)
    Schedules(app).upsert(
        "report", "beatapp.record", every(1), args=[1, "two"], kwargs={"k": [3]},
        options={"headers": {"tenant": "acme"}, "priority": 5, "expires": 60},
    )
    beats.start({}, "a")
    wait_for(lambda: beats.broker.messages(), 15, what="a dispatch")
    beats.stop_all()
    m = beats.broker.messages()[0]
    assert m.entry == "report" and m.args == [1, "two"] and m.kwargs == {"k": [3]}
    assert m.headers["tenant"] == "acme" and m.headers["redbeat_safe_tick_ms"] == m.tick
    assert m.headers["expires"] is not None and m.properties["priority"] == 5
    assert m.task_id == task_id_for(beats.prefix, "report", m.tick)


@pytest.mark.parametrize("policy", ["coalesce", "skip"])
def test_after_downtime_the_phase_is_kept_and_missed_ticks_follow_the_policy(beats: BeatGroup, policy: str) -> None:
    """All beats down for longer than the grace window (lease 2 s + loop 1 s), then back."""
    env = {"BEAT_LEASE": "2", "BEAT_CATCHUP": policy}
    a = beats.start({"e": {"every": 1}}, "a", **env)
    a.wait_log("registered 1 static entries")
    time.sleep(3)
    a.stop()
    stopped = ms()
    time.sleep(6)
    restarted = ms()
    b = beats.start({"e": {"every": 1}}, "b", **env)
    b.wait_log("registered 1 static entries")
    time.sleep(3)
    b.stop()
    ticks = sorted(m.tick for m in beats.broker.messages())
    assert len(ticks) == len(set(ticks))
    assert all((t - ticks[0]) % 1000 == 0 for t in ticks), "the phase moved"
    during = [t for t in ticks if stopped + 1000 < t < restarted]
    # ticks older than the grace window were missed and dropped (coalesce: the on-time ticks
    # that follow are the one run they collapse into); later ones were merely late
    grace = 3000
    assert during and all(t >= restarted - grace - 1500 for t in during), (stopped, restarted, ticks)
    assert len(during) < (restarted - stopped) // 1000 - 1
    assert [t for t in ticks if t >= restarted], "it kept firing after the restart"
    assert f"while no beat ran; policy {policy} published 0 of them and dropped" in b.output()


def test_an_idle_beat_makes_about_one_redis_call_per_second(own_redis: RedisServer, beats_factory: Callable[..., BeatGroup]) -> None:
    group = beats_factory(own_redis, "idle")
    a = group.start({"hourly": {"every": 3600}}, "a")
    a.wait_log("registered 1 static entries")
    time.sleep(1)

    def calls() -> int:
        stats = own_redis.client().info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_eval"))

    before = calls()
    time.sleep(6)
    idle = calls() - before
    a.stop()
    assert 3 <= idle <= 9, f"{idle} script calls in 6 s of idling"


def test_the_queue_option_routes_the_message(beats: BeatGroup, redis_server: RedisServer) -> None:
    from harness import Broker

    Schedules(make_app(redis_server, beats.prefix)).upsert("routed", "beatapp.record", every(1), options={"queue": f"reports-{beats.prefix}"})
    beats.start({}, "a")
    reports = Broker(redis_server, f"reports-{beats.prefix}")
    wait_for(lambda: len(reports.messages()) >= 2, 15, what="messages in the reports queue")
    beats.stop_all()
    assert beats.broker.messages() == [] and {m.entry for m in reports.messages()} == {"routed"}
