"""Liveness that means something: a beat that dies stops counting within its liveness
window (10 s + 2 loop intervals by the Redis clock, 12 s by default), `status` says by
its exit status whether all is well, and a beat inside a worker whose configuration is
refused does not go quiet. Real Redis, real `celery beat` and `celery worker -B`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import BeatGroup, cli, make_app
from harness import RedisServer, wait_for
from redbeat_safe import Schedules
from redbeat_safe.engine import LIVENESS_BASE_MS
from redbeat_safe.store import Keys

SCHEDULE = {"e1": {"every": 1}}
DEFAULT_LIVE_MS = LIVENESS_BASE_MS + 2 * 1000  # the default loop interval is 1 s


def test_a_killed_beat_stops_counting_within_its_liveness_window(beats: BeatGroup, redis_server: RedisServer) -> None:
    """SIGKILL leaves the registration in Redis (nobody deregisters); the beat is shown
    dead once its last heartbeat is older than 12 s, long before the registration
    itself expires (40 s), and `health` fails from then on."""
    api = Schedules(make_app(redis_server, beats.prefix))
    a, b = beats.start(SCHEDULE, "a"), beats.start(SCHEDULE, "b")
    a.wait_log("registered 1 static entries")
    b.wait_log("registered 1 static entries")
    wait_for(lambda: sum(i.alive for i in api.instances()) == 2, 15, what="two live beats")
    live = [i for i in api.instances() if i.alive]
    assert all(i.heartbeat_age_ms is not None and 0 <= i.heartbeat_age_ms <= 2_000 for i in live), live
    a.kill()
    b.kill()
    seen: list[tuple[int, bool]] = []  # (heartbeat age by the Redis clock, alive) at each look

    def both_dead() -> bool:
        rows = api.instances()
        seen.extend((i.heartbeat_age_ms or 0, i.alive) for i in rows)
        return len(rows) == 2 and not any(i.alive for i in rows)

    wait_for(both_dead, 40, interval=0.2, what="the killed beats to be shown dead")
    alive_ages = [age for age, alive in seen if alive]
    dead_ages = [age for age, alive in seen if not alive]
    assert max(alive_ages) <= DEFAULT_LIVE_MS and min(dead_ages) > DEFAULT_LIVE_MS, (max(alive_ages), min(dead_ages))
    assert min(dead_ages) <= DEFAULT_LIVE_MS + 1_500  # noticed at the first look after the window
    _, rows = api.store.instances()
    assert all(deadline > api.store.now() for _, deadline, _, _ in rows)  # still registered: the window is what counts
    done = cli(beats, "health")
    assert done.returncode == 1 and done.stdout.strip() == "beats: 0 alive, at least 1 wanted", done.stdout
    done = cli(beats, "instances")
    assert done.returncode == 0 and done.stdout.startswith("no beat alive") and "stopped heartbeating, not counted" in done.stdout, done.stdout


def test_the_liveness_window_follows_the_loop_interval(beats: BeatGroup, redis_server: RedisServer) -> None:
    """With beat_max_loop_interval=5 the window is 10 s + 2 x 5 s, written by the beat."""
    beats.start(SCHEDULE, "slow", BEAT_MAX_INTERVAL="5").wait_log("registered 1 static entries")
    raw = redis_server.client().hgetall(Keys(beats.prefix).instinfo)
    assert [json.loads(v)["live"] for v in raw.values()] == [LIVENESS_BASE_MS + 10_000]


def test_instances_shows_each_beat_with_its_heartbeat_age(beats: BeatGroup) -> None:
    beats.start(SCHEDULE, "a").wait_log("registered 1 static entries")
    done = cli(beats, "instances")
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()[:2]
    assert header.split() == ["INSTANCE", "HOST", "PID", "VERSION", "HEARTBEAT", "TICKS", "SENT", "STATIC", "STARTED"]
    assert row.split()[4].endswith("s") and row.split()[5] == "ago", row
    data = json.loads(cli(beats, "instances", "--json").stdout)
    assert len(data) == 1 and data[0]["alive"] and 0 <= data[0]["heartbeat_age_ms"] < 5_000


def test_status_exit_status_says_whether_all_is_well(beats: BeatGroup, redis_server: RedisServer) -> None:
    done = cli(beats, "status")
    assert done.returncode == 1 and "no beat alive" in done.stdout, done.stdout
    assert done.stdout.rstrip().endswith("beats: 0 alive, at least 1 wanted"), done.stdout
    beats.start(SCHEDULE, "a").wait_log("registered 1 static entries")
    done = cli(beats, "status")
    assert done.returncode == 0 and done.stdout.rstrip().endswith("all well"), done.stdout
    assert json.loads(cli(beats, "status", "--json").stdout)["problems"] == []
    redis_server.client().hset(Keys(beats.prefix).defs, "e1", b"{not json")  # damaged by hand
    wait_for(lambda: cli(beats, "status").returncode == 1, 20, what="status to report the damaged entry")
    data = json.loads(cli(beats, "status", "--json").stdout)
    assert data["problems"] == ["damaged: 1 entry set aside (see `list`)"], data["problems"]


def _worker(beats: BeatGroup, tmp_path: Path, schedule: dict[str, object], name: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = dict(os.environ)
    env.update(beats.env(schedule))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parent.parent)])
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "beatapp", "worker", "-B", "--scheduler", "redbeat_safe.Scheduler",
         "-Q", f"elsewhere-{beats.prefix}", "--pool", "solo", "-n", f"{name}@%h", "--loglevel", "INFO",
         "--schedule", str(tmp_path / f"beat-{name}")],
        cwd=tmp_path, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return proc, log


def test_a_worker_whose_embedded_beat_is_refused_keeps_saying_so(beats: BeatGroup, tmp_path: Path) -> None:
    """`worker -B` with a bad beat_schedule: before, the embedded beat died with
    ImproperlyConfigured while the worker logged `ready` and ran on with no scheduler.
    Now the beat stays, schedules nothing, logs CRITICAL at every loop, and `health`
    fails naming the reason; nothing is written for the bad schedule."""
    bad = {"good": {"every": 1}, "bad": {"every": 1, "args": "not-a-list"}}
    proc, log = _worker(beats, tmp_path, bad, "w-bad")
    try:
        wait_for(lambda: log.read_text(errors="replace").count("schedules nothing") >= 3, 60, what="CRITICAL lines at every loop")
        text = log.read_text(errors="replace")
        assert "CRITICAL" in text and "args must be a list or tuple, not str" in text, text[-3000:]
        assert proc.poll() is None  # the worker runs on: its tasks are still served
        done = cli(beats, "health", "--json")
        data = json.loads(done.stdout)
        assert done.returncode == 1, data
        assert any(f.startswith("refused: beat ") and "args must be a list or tuple" in f for f in data["failures"]), data
        assert len(data["refused_beats"]) == 1, data["refused_beats"]
        assert beats.broker.messages() == []  # nothing dispatched, not even the good entry
        assert Schedules(make_app(beats.server, beats.prefix)).list() == []  # nothing written
        status = cli(beats, "status")
        assert status.returncode == 1 and "refused: beat" in status.stdout, status.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_standalone_beat_with_a_bad_schedule_still_exits(beats: BeatGroup) -> None:
    """Outside a worker, refusing to start is the loud answer: the process exits non-zero."""
    beat = beats.start({"bad": {"every": 1, "args": "not-a-list"}}, "standalone")
    wait_for(lambda: beat.proc is not None and beat.proc.poll() is not None, 30, what="the beat to exit")
    assert beat.proc is not None and beat.proc.returncode != 0
    assert "args must be a list or tuple, not str" in beat.output()


def test_status_says_when_a_beat_started_not_when_it_registered_again(beats: BeatGroup, redis_server: RedisServer) -> None:
    """Redis restarted empty (here: FLUSHALL, which leaves the same nothing): the beat
    registers again; `instances`/`status` still show when the process started."""
    api = Schedules(make_app(redis_server, beats.prefix))
    a = beats.start(SCHEDULE, "a")
    a.wait_log("registered 1 static entries")
    wait_for(lambda: [i for i in api.instances() if i.alive], 15, what="the beat to heartbeat")
    (before,) = [i for i in api.instances() if i.alive]
    assert before.started is not None
    time.sleep(1.5)
    redis_server.client().flushall()
    wait_for(lambda: "registering again" in a.output(), 30, what="the beat to register again")
    wait_for(lambda: [i for i in api.instances() if i.alive], 15, what="the beat to heartbeat again")
    (after,) = [i for i in api.instances() if i.alive]
    assert after.id == before.id and after.started == before.started, (before.started, after.started)
    shown = json.loads(cli(beats, "status", "--json").stdout)
    assert [i["started"] for i in shown["instances"]] == [before.started.isoformat()]


def test_a_beat_refuses_keys_of_a_layout_it_does_not_know_and_writes_nothing(beats: BeatGroup, redis_server: RedisServer) -> None:
    """A store written by a future version (layout "2" in {p}:meta): a standalone beat
    exits non-zero saying so and leaves the keys as they were; a store from before the
    layout was recorded (meta with an epoch only) is taken as layout 1 and used."""
    client, k = redis_server.client(), Keys(beats.prefix)
    client.hset(k.meta, mapping={"epoch": "e-future", "layout": "2"})
    before = {key: client.dump(key) for key in client.keys("{" + beats.prefix + "}*")}
    beat = beats.start(SCHEDULE, "old")
    wait_for(lambda: beat.proc is not None and beat.proc.poll() is not None, 30, what="the beat to exit")
    assert beat.proc is not None and beat.proc.returncode == 2
    assert "use key layout '2', and this version (" in beat.output() and "docs/upgrading.md" in beat.output(), beat.output()[-2000:]
    assert "Traceback" not in beat.output(), beat.output()[-2000:]  # before: 755 lines, the traceback twice
    assert {key: client.dump(key) for key in client.keys("{" + beats.prefix + "}*")} == before  # nothing written

    client.delete(k.meta)
    client.hset(k.meta, "epoch", "e-old")  # what a version before the layout field wrote
    a = beats.start(SCHEDULE, "a")
    a.wait_log("registered 1 static entries")
    assert client.hgetall(k.meta) == {b"epoch": b"e-old", b"layout": b"1"}
