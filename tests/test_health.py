"""`celery schedules health`: exit 0 exactly when Redis answers, enough beats are alive
and nothing is late; one line per failed check otherwise. Real Redis, real beats, the
real command."""

from __future__ import annotations

import json
import socket
import time

from conftest import BeatGroup, cli, make_app
from harness import RedisServer, free_port
from redbeat_safe import Schedules, every
from redbeat_safe.store import Keys

SCHEDULE = {"e1": {"every": 1}}


def test_health_with_a_beat_alive_is_ok_and_without_one_fails(beats: BeatGroup) -> None:
    done = cli(beats, "health")
    assert done.returncode == 1 and done.stdout.strip() == "beats: 0 alive, at least 1 wanted", (done.stdout, done.stderr)
    a = beats.start(SCHEDULE, "a")
    a.wait_log("registered 1 static entries")
    done = cli(beats, "health")
    assert done.returncode == 0 and done.stdout.strip() == "ok: 1 beat(s) alive, nothing late", (done.stdout, done.stderr)
    done = cli(beats, "health", "--min-beats", "2", "--json")
    assert done.returncode == 1
    data = json.loads(done.stdout)
    assert data["ok"] is False and data["beats_alive"] == 1 and data["failures"] == ["beats: 1 alive, at least 2 wanted"]
    here = socket.gethostname()  # the beat's host, as `instances` shows it: a per-pod probe counts only its own
    assert cli(beats, "health", "--on-host", here).returncode == 0
    other = cli(beats, "health", "--on-host", "some-other-pod")
    assert other.returncode == 1 and other.stdout.strip() == "beats: 0 alive on host 'some-other-pod', at least 1 wanted"
    beats.stop_all()  # a clean stop deregisters
    assert cli(beats, "health").returncode == 1


def test_health_fails_on_a_late_entry_and_on_a_tick_nobody_reaps(beats: BeatGroup, redis_server: RedisServer) -> None:
    api = Schedules(make_app(redis_server, beats.prefix))
    api.upsert("slow", "beatapp.record", every(60))
    assert cli(beats, "health", "--min-beats", "0").returncode == 0
    client, k = redis_server.client(), Keys(beats.prefix)
    now = int(time.time() * 1000)
    client.zadd(k.due, {"slow": now - 45_000})  # its next tick 45 s ago, and no beat to send it
    done = cli(beats, "health", "--min-beats", "0")
    assert done.returncode == 1, done.stdout
    assert done.stdout.startswith("late: 1 entry more than 30s behind (most: 'slow', 4"), done.stdout
    assert cli(beats, "health", "--min-beats", "0", "--max-late", "1m").returncode == 0  # a looser threshold
    client.zadd(k.due, {"slow": now + 60_000})
    client.zadd(k.inflight, {f"{now - 90_000}:slow": now - 80_000, "junk": now - 80_000})
    done = cli(beats, "health", "--min-beats", "0", "--json")
    data = json.loads(done.stdout)
    assert done.returncode == 1 and len(data["failures"]) == 1 and data["failures"][0].startswith("in flight: 2 tick(s)"), data
    assert {s["name"] for s in data["stuck_in_flight"]} == {"slow", None}


def test_health_fails_with_one_line_when_redis_does_not_answer(beats: BeatGroup) -> None:
    down = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    done = cli(beats, "health", env={"BEAT_REDIS_URL": down})
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("redis: Redis unavailable (ConnectionError"), lines
    assert "s3cret-pw" not in done.stdout + done.stderr and "Traceback" not in done.stderr
