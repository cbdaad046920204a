"""Test support for the fault-model tests: engines on a server clock the test
controls, a store whose chosen calls reach Redis twice (a reply lost after the
script ran, then redis-py's retry), and records damaged by hand."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from redbeat_safe.config import Settings
from redbeat_safe.definitions import EntryDef
from redbeat_safe.dispatch import task_id_for
from redbeat_safe.engine import Engine
from redbeat_safe.store import Keys, RedisStore

T0 = 1_800_000_000_000


class Clock:
    """The Redis server's "now" as the scripts see it, set by the test (see store.py)."""

    def __init__(self, client: redis.Redis, prefix: str, start: int = T0) -> None:
        self.client, self.key = client, f"{{{prefix}}}:testclock"
        self.set(start)

    def set(self, ms: int) -> None:
        self.now = ms
        self.client.set(self.key, ms)

    def advance(self, ms: int) -> None:
        self.set(self.now + ms)


class DoubleSend(RedisStore):
    """A store whose armed script calls run twice with the same arguments, the
    caller seeing only the second answer: what a reply lost after the script ran,
    followed by redis-py's retry, does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.armed: dict[str, int] = {}
        self.doubled: list[str] = []

    @property  # type: ignore[override]
    def pipelining(self) -> bool:
        """A call armed to reach Redis twice goes through ``_call``: sent ahead, it would not."""
        return not any(self.armed.values())

    def arm(self, name: str, times: int = 1) -> None:
        self.armed[name] = self.armed.get(name, 0) + times

    def _call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if self.armed.get(name):
            self.armed[name] -= 1
            self.doubled.append(name)
            super()._call(name, keys, args)  # its reply never arrives
        return super()._call(name, keys, args)


@dataclass
class Sent:
    entry: str
    tick: int
    task_id: str
    instance: str


@dataclass
class Fleet:
    """In-process engines of one app on a test clock, publishing into one list."""

    client: redis.Redis
    prefix: str
    lease_ms: int = 3000
    catchup: str = "coalesce"
    catchup_max: int = 100
    max_interval: float = 1.0
    sent: list[Sent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.clock = Clock(self.client, self.prefix)
        self.keys = Keys(self.prefix)
        self.settings = Settings(redis_url="redis://unused", key_prefix=self.prefix, lease_ms=self.lease_ms,
                                 catchup=self.catchup, catchup_max=self.catchup_max)

    def store(self, cls: type[RedisStore] = RedisStore) -> Any:
        return cls(self.client, self.prefix, test_clock_key=self.clock.key)

    def engine(self, name: str = "", store: RedisStore | None = None,
               publish: Callable[[EntryDef, str, int], None] | None = None) -> Engine:
        instance = name or f"i-{uuid.uuid4().hex[:6]}"

        def record(entry: EntryDef, entry_name: str, tick: int) -> None:
            self.sent.append(Sent(entry_name, tick, task_id_for(self.prefix, entry_name, tick), instance))

        return Engine(store or self.store(), self.settings, publish or record, self.max_interval, instance_id=instance)

    def ticks(self, entry: str) -> list[int]:
        return [s.tick for s in self.sent if s.entry == entry]


def run_until_idle(engine: Engine, limit: int = 50) -> int:
    """Passes until the engine would sleep; returns how many it took."""
    for n in range(1, limit + 1):
        if not engine.registered:
            engine.register()
        if engine.run_once() > 0:
            return n
    return limit


#: Damage an operator's hand (or a bug elsewhere) can do to one entry's records.
DAMAGE: dict[str, Callable[[redis.Redis, Keys, str], Any]] = {
    "definition deleted": lambda c, k, n: c.hdel(k.defs, n),
    "definition garbled": lambda c, k, n: c.hset(k.defs, n, b'{"task": "x", "sched'),
    "definition changed by hand": lambda c, k, n: c.hset(k.defs, n, json.dumps(
        {"task": "other.task", "schedule": {"kind": "every", "interval_ms": 1000}, "args": [], "kwargs": {}, "options": {}})),
    "state: ver 1.5": lambda c, k, n: _edit_state(c, k, n, ver=1.5),
    "state: ver 1e20": lambda c, k, n: _edit_state(c, k, n, ver=1e20),
    "state: runs is text": lambda c, k, n: _edit_state(c, k, n, runs="x"),
    "state: last is text": lambda c, k, n: _edit_state(c, k, n, last="soon"),
    "state: enabled is 1": lambda c, k, n: _edit_state(c, k, n, enabled=1),
    "state: not JSON": lambda c, k, n: c.hset(k.state, n, b"{not json"),
    "state deleted": lambda c, k, n: c.hdel(k.state, n),
    "next tick not whole": lambda c, k, n: c.zadd(k.due, {n: float(c.zscore(k.due, n) or T0) + 0.5}),
}


def _edit_state(client: redis.Redis, keys: Keys, name: str, **changes: Any) -> None:
    raw = client.hget(keys.state, name)
    try:
        st = json.loads(raw) if raw else {}
    except ValueError:
        st = {}
    st.update(changes)
    client.hset(keys.state, name, json.dumps(st))
