"""The two schedulers the demo can run, behind one small interface.

Each target knows how to tell that an instance is up, how to change an entry
live through its own API, and where its store says an entry's next tick is
(the anchor of the expected ticks after a change).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from datetime import timedelta
from importlib import metadata
from typing import Any

import redis
from celery import Celery

from demo_procs import Proc
from redbeat_safe import Schedules, every
from redbeat_safe.config import Settings
from redbeat_safe.definitions import from_beat_entry
from redbeat_safe.schedules import Schedule

#: The version the product brief measures against.
REDBEAT_REQUIREMENT = "celery-redbeat==2.4.2"


def make_app(env: dict[str, str]) -> Celery:
    """A Celery app in the driver configured exactly like the demo's processes."""
    os.environ.update(env)
    module = importlib.reload(importlib.import_module("democonfig"))
    app = Celery("demo-driver", set_as_current=False)
    app.config_from_object(module)
    return app


class Target:
    name = ""
    scheduler = ""  #: the -S / --scheduler value
    exact = True  #: messages carry their nominal tick
    drain = 6.0  #: seconds to wait after the timeline for the last ticks to be run

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.client = redis.Redis.from_url(str(app.conf.broker_url), socket_timeout=10)

    @property
    def label(self) -> str:
        return self.name

    def now_ms(self) -> int:
        sec, usec = self.client.time()
        return int(sec) * 1000 + int(usec) // 1000

    def statics(self) -> dict[str, Schedule]:
        tz = str(self.app.conf.timezone or "UTC")
        return {name: from_beat_entry(name, spec, tz).schedule for name, spec in (self.app.conf.beat_schedule or {}).items()}

    def beat_ready(self, proc: Proc, leader: bool) -> bool:
        raise NotImplementedError

    def upsert(self, name: str, task: str, seconds: float, kwargs: dict[str, Any]) -> int:
        """Create or re-time an entry; returns the next tick the store then holds (ms)."""
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError

    def next_tick(self, name: str) -> int:
        raise NotImplementedError

    def close(self) -> None:
        self.client.close()


class SafeTarget(Target):
    name = "redbeat_safe"
    scheduler = "redbeat_safe.Scheduler"

    def __init__(self, app: Celery) -> None:
        super().__init__(app)
        self.schedules = Schedules(app)
        # a tick claimed by the killed instance is re-published after the lease
        self.drain = Settings.from_app(app).lease_ms / 1000 + 3

    def beat_ready(self, proc: Proc, leader: bool) -> bool:
        return "redbeat_safe: instance" in proc.output()

    def upsert(self, name: str, task: str, seconds: float, kwargs: dict[str, Any]) -> int:
        self.schedules.upsert(name, task, every(seconds=seconds), kwargs=kwargs)
        return self.next_tick(name)

    def remove(self, name: str) -> None:
        self.schedules.remove(name)

    def next_tick(self, name: str) -> int:
        entry = self.schedules.get(name)
        assert entry is not None and entry.next_tick is not None, name
        return int(round(entry.next_tick.timestamp() * 1000))

    def close(self) -> None:
        self.schedules.close()
        super().close()


def ensure_redbeat() -> str:
    """Install celery-redbeat into this venv on first use (never a dependency of the package)."""
    try:
        importlib.import_module("redbeat")
    except ImportError:
        print(f"demo: installing {REDBEAT_REQUIREMENT} into {sys.prefix} for the comparison", flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", REDBEAT_REQUIREMENT],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip could not install {REDBEAT_REQUIREMENT}:\n{done.stdout}{done.stderr}") from None
        importlib.invalidate_caches()
    return metadata.version("celery-redbeat")


class RedbeatTarget(Target):
    """celery-redbeat: one leader holds a lock, the others wait for it to expire."""

    name = "celery-redbeat"
    scheduler = "redbeat.RedBeatScheduler"
    exact = False

    def __init__(self, app: Celery) -> None:
        super().__init__(app)
        from redbeat.schedulers import RedBeatSchedulerEntry, ensure_conf

        self.Entry = RedBeatSchedulerEntry
        self.conf = ensure_conf(app)
        self.version = metadata.version("celery-redbeat")

    @property
    def label(self) -> str:
        return f"celery-redbeat {self.version}"

    def beat_ready(self, proc: Proc, leader: bool) -> bool:
        # the leader says so once it holds the lock; the others block waiting for it
        return ("beat: Acquired lock" if leader else "beat: Starting...") in proc.output()

    def upsert(self, name: str, task: str, seconds: float, kwargs: dict[str, Any]) -> int:
        from celery.schedules import schedule

        key = self.Entry.generate_key(self.app, name)
        run_every = schedule(timedelta(seconds=seconds), app=self.app)
        try:
            entry = self.Entry.from_key(key, app=self.app)  # keeps its last run: redbeat's way to re-time
            entry.schedule = run_every
        except KeyError:
            entry = self.Entry(name, task, run_every, kwargs=kwargs, options={"headers": {"demo_entry": name}}, app=self.app)
        entry.save()
        return self.next_tick(name)

    def remove(self, name: str) -> None:
        self.Entry.from_key(self.Entry.generate_key(self.app, name), app=self.app).delete()

    def next_tick(self, name: str) -> int:
        score = self.client.zscore(self.conf.schedule_key, self.Entry.generate_key(self.app, name))
        assert score is not None, name
        return int(round(float(score) * 1000))


def target_for(kind: str, app: Celery) -> Target:
    return RedbeatTarget(app) if kind == "redbeat" else SafeTarget(app)
