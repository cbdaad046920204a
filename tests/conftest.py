from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from harness import ROOT, Beat, Broker, RedisServer, Worker


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the tests that do not need to restart it."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test alone (it may kill or restart it)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def make_app(server: RedisServer, prefix: str, **conf: Any) -> Celery:
    app = Celery("tests", set_as_current=False)
    app.conf.update(
        broker_url=f"redis://127.0.0.1:{server.port}/1",
        redbeat_safe_redis_url=server.url,
        redbeat_safe_key_prefix=prefix,
        task_default_queue=f"q-{prefix}",
        result_backend=None,
    )
    app.conf.update(conf)
    return app


@pytest.fixture
def app(redis_server: RedisServer, prefix: str) -> Celery:
    return make_app(redis_server, prefix)


class BeatGroup:
    """Starts beats of one app (same prefix, same queue) and stops them all at the end."""

    def __init__(self, server: RedisServer, prefix: str, workdir: Path) -> None:
        self.server, self.prefix, self.workdir = server, prefix, workdir
        self.queue = f"q-{prefix}"
        self.broker = Broker(server, self.queue)
        self.beats: list[Beat] = []
        self.workers: list[Worker] = []

    def env(self, schedule: dict[str, Any], **extra: str) -> dict[str, str]:
        env = {
            "BEAT_BROKER_URL": self.broker.url,
            "BEAT_REDIS_URL": self.server.url,
            "BEAT_PREFIX": self.prefix,
            "BEAT_QUEUE": self.queue,
            "BEAT_SCHEDULE": json.dumps(schedule),
        }
        env.update(extra)
        return env

    def start(self, schedule: dict[str, Any], name: str | None = None, scheduler: str = "redbeat_safe.Scheduler",
              faketime: str | None = None, **extra: str) -> Beat:
        beat = Beat(self.workdir, self.env(schedule, **extra), name or f"b{len(self.beats)}", scheduler=scheduler, faketime=faketime)
        self.beats.append(beat.start())
        return beat

    def worker(self, schedule: dict[str, Any], name: str, pool: str = "prefork", concurrency: int = 1, **extra: str) -> Worker:
        """A real `celery worker` on the group's queue, configured like its beats (same app)."""
        w = Worker(self.workdir, self.env(schedule, **extra), name, pool=pool, concurrency=concurrency)
        self.workers.append(w.start())
        return w

    def stop_all(self) -> None:
        for b in self.beats:
            b.stop()
        for w in self.workers:
            w.stop()


@pytest.fixture
def beats(redis_server: RedisServer, prefix: str, tmp_path: Path) -> Iterator[BeatGroup]:
    group = BeatGroup(redis_server, prefix, tmp_path)
    yield group
    group.stop_all()


@pytest.fixture
def beats_factory(tmp_path: Path) -> Iterator[Callable[[RedisServer, str], BeatGroup]]:
    groups: list[BeatGroup] = []

    def make(server: RedisServer, prefix: str) -> BeatGroup:
        g = BeatGroup(server, prefix, tmp_path)
        groups.append(g)
        return g

    yield make
    for g in groups:
        g.stop_all()


def cli(group: BeatGroup, *args: str, prefix: str | None = None, stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`celery -A beatapp schedules ARGS` as a real subprocess, configured like the group's
    beats (``env``: overrides, e.g. BEAT_REDIS_URL)."""
    overrides = env or {}
    env = dict(os.environ)
    env.update(group.env({}))
    env.update(overrides)
    if prefix:
        env["BEAT_PREFIX"] = prefix
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "celery", "-A", "beatapp", "schedules", *args],
                          env=env, capture_output=True, text=True, timeout=60, input=stdin, cwd=group.workdir)
