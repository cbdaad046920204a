"""The Redis store: key layout, the Lua scripts, and typed calls around them.

All keys of one app share the Redis Cluster hash tag ``{<prefix>}`` and every
key a script touches is passed in ``KEYS``, so on a Cluster every call goes to
the one node that owns the tag's slot. Scripts are loaded once and called by
SHA; redis-py reloads one the server has forgotten (restart, SCRIPT FLUSH,
failover to a replica that never saw it).

With ``wait_replicas`` the writes that gate a publish (claim, and the peek that
re-leases expired ticks) are followed by ``WAIT n timeout`` in the same
pipeline, so on the same connection: the caller learns whether n replicas have
them, i.e. whether they survive a failover to one of those replicas.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.cluster import RedisCluster
from redis.exceptions import MovedError, NoScriptError

from .connection import Client

_SCRIPT_NAMES = ("snapshot", "upsert", "remove", "peek", "claim", "ack", "trigger", "register", "prune")
#: Dispatches remembered per entry (its history list is trimmed to this).
HISTORY_LENGTH = 100


_SERVER_CLOCK = """  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"""


def _load_scripts(clock_key: str | None = None) -> dict[str, str]:
    folder = resources.files(__package__).joinpath("lua")
    common = folder.joinpath("_common.lua").read_text()
    if clock_key is not None:  # test-only: "now" is whatever the tests wrote into this key
        assert _SERVER_CLOCK in common
        common = common.replace(_SERVER_CLOCK, f"  return tonumber(redis.call('GET', {json.dumps(clock_key)}))")
    return {name: common + "\n" + folder.joinpath(f"{name}.lua").read_text() for name in _SCRIPT_NAMES}


_SOURCES = _load_scripts()


class Keys:
    """Names of every key of one app (see docs/redis-layout.md)."""

    def __init__(self, prefix: str) -> None:
        tag = "{" + prefix + "}"
        self.prefix = prefix
        self.due = f"{tag}:due"  # zset: entry -> next tick (ms); enabled entries with a future tick
        self.defs = f"{tag}:defs"  # hash: entry -> definition JSON
        self.state = f"{tag}:state"  # hash: entry -> state JSON (version, runs, last tick, ...)
        self.static = f"{tag}:static"  # set: entries registered from a beat_schedule
        self.inflight = f"{tag}:inflight"  # zset: "<tick>:<entry>" -> lease deadline (ms)
        self.flight = f"{tag}:flight"  # hash: "<tick>:<entry>" -> definition JSON it was claimed under
        self.instances = f"{tag}:instances"  # zset: instance id -> heartbeat deadline (ms)
        self.instinfo = f"{tag}:instinfo"  # hash: instance id -> JSON (host, pid, static names)
        self.inststats = f"{tag}:inststats"  # hash: instance id -> ticks it published
        self.meta = f"{tag}:meta"  # hash: epoch (changes if Redis lost the data)
        self._history = f"{tag}:history:"

    def history(self, name: str) -> str:
        """list: the entry's latest dispatches, newest first (JSON records)."""
        return self._history + name


def _s(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value in (b"", "", None, False) else int(float(_s(value)))


@dataclass
class Due:
    name: str
    score: bytes  #: the score exactly as Redis printed it (the claim compares it)
    state: bytes | None

    @property
    def tick(self) -> int:
        return int(float(self.score))


@dataclass
class Reaped:
    member: str
    definition: bytes | None

    @property
    def tick(self) -> int:
        return int(self.member.split(":", 1)[0])

    @property
    def name(self) -> str:
        return self.member.split(":", 1)[1]


@dataclass
class Peek:
    now: int
    epoch: str
    instances_expired: bool
    registered: bool
    next_tick: int | None
    next_lease: int | None
    due: list[Due]
    reaped: list[Reaped]
    confirmed: bool | None = True  #: the re-leases of ``reaped`` reached wait_replicas replicas (None: not asked)


@dataclass
class ClaimItem:
    name: str
    score: bytes
    version: int | None  #: None when the state record is unreadable (parking only)
    ticks: list[int]
    next: int | None  #: None ends the entry
    park: bool = False


@dataclass
class UpsertItem:
    name: str
    expected_version: int | str | None  #: None: must not exist yet; "!": its state is corrupt
    definition: str
    definition_hash: str
    schedule_hash: str
    source: str
    next: int | str | None  #: ms, "keep", or None (no future tick)
    enabled: bool
    runs: int | None = None  #: when creating: runs already made elsewhere (import)
    last: int | None = None  #: when creating: the last tick already run elsewhere (import)


@dataclass
class Ack:
    """A published tick: its in-flight member, its task id and how it came to be sent."""

    member: str
    task_id: str
    kind: str = "s"  #: "s" scheduled, "r" re-published by the reaper, "t" triggered


def member(name: str, tick: int) -> str:
    return f"{tick}:{name}"


def _flat(acks: Sequence[Ack]) -> list[str]:
    return [x for a in acks for x in (a.member, a.task_id, a.kind)]


class RedisStore:
    """Typed access to one app's keys; no policy, no Celery."""

    def __init__(
        self, client: Client, prefix: str, wait_replicas: int = 0, wait_timeout_ms: int = 1000, *, test_clock_key: str | None = None
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        sources = _SOURCES if test_clock_key is None else _load_scripts(test_clock_key)
        self._scripts = {name: client.register_script(src) for name, src in sources.items()}

    def _call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._scripts[name](keys=list(keys), args=list(args))

    def _durable(self, name: str, keys: Sequence[str], args: Sequence[Any], wait: bool = True) -> tuple[Any, bool | None]:
        """Run a script, then WAIT on the same connection.

        Returns the result and whether enough replicas have it: True without
        wait_replicas, None when not asked to wait.
        """
        if not self.wait_replicas or not wait:
            return self._call(name, keys, args), None if self.wait_replicas else True
        script = self._scripts[name]
        for _attempt in range(3):
            node = self._node()
            pipe = node.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            result, acked = pipe.execute(raise_on_error=False)
            if isinstance(result, NoScriptError):
                node.script_load(script.script)  # nothing ran: load it and go again
                continue
            if isinstance(result, MovedError) and isinstance(self.client, RedisCluster):
                self.client.nodes_manager.initialize()  # the slot moved; nothing ran
                continue
            if isinstance(result, Exception):
                raise result  # ASK/TRYAGAIN mid-migration: nothing ran; the caller retries
            if isinstance(acked, Exception):
                raise acked
            return result, int(acked) >= self.wait_replicas
        raise MovedError(f"{self.keys.due} kept moving")

    def _node(self) -> Any:
        """The client whose single connection the script and its WAIT share."""
        if isinstance(self.client, RedisCluster):
            return self.client.get_redis_connection(self.client.get_node_from_key(self.keys.due))  # type: ignore[no-untyped-call]
        return self.client

    # -- definitions ------------------------------------------------------
    def snapshot(self, names: Sequence[str]) -> tuple[int, dict[str, tuple[bytes | None, bytes | None]]]:
        """Server time and (state, score) of each name."""
        k = self.keys
        raw = self._call("snapshot", [k.due, k.state], names)
        out = {}
        for i, name in enumerate(names):
            out[name] = (raw[1 + 2 * i] or None, raw[2 + 2 * i] or None)
        return int(raw[0]), out

    def upsert(self, items: Sequence[UpsertItem]) -> list[bool]:
        k = self.keys
        args: list[Any] = [len(items)]
        for it in items:
            nxt = "" if it.next is None else str(it.next)
            expected = "-" if it.expected_version is None else str(it.expected_version)
            args += [it.name, expected, it.definition, it.definition_hash, it.schedule_hash, it.source, nxt, "1" if it.enabled else "0",
                     "" if it.runs is None else it.runs, "" if it.last is None else it.last]
        result = self._call("upsert", [k.due, k.defs, k.state, k.static], args)
        return [_s(r) == "ok" for r in result]

    def remove(self, names: Sequence[str]) -> int:
        k = self.keys
        return int(self._call("remove", [k.due, k.defs, k.state, k.static, *(k.history(n) for n in names)], names))

    def definitions(self, names: Sequence[str]) -> list[bytes | None]:
        if not names:
            return []
        values: list[Any] = self.client.hmget(self.keys.defs, list(names))
        return values

    def read_all(self) -> tuple[dict[str, bytes], dict[str, bytes], dict[str, int]]:
        """Every definition, state and next tick (for listing; not on the hot path)."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(k.defs)
        pipe.hgetall(k.state)
        pipe.zrange(k.due, 0, -1, withscores=True)
        defs, states, due = pipe.execute()
        return (
            {_s(n): v for n, v in defs.items()},
            {_s(n): v for n, v in states.items()},
            {_s(n): int(s) for n, s in due},
        )

    def read_one(self, name: str) -> tuple[bytes | None, bytes | None, int | None]:
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(k.defs, name)
        pipe.hget(k.state, name)
        pipe.zscore(k.due, name)
        d, s, score = pipe.execute()
        return d, s, None if score is None else int(score)

    # -- the beat loop ----------------------------------------------------
    def peek(
        self,
        instance: str,
        heartbeat_ms: int,
        lease_ms: int,
        max_due: int,
        max_reap: int,
        acks: Sequence[Ack] = (),
        confirm: bool = False,
    ) -> Peek:
        """With ``confirm`` (a lease may have expired), WAIT for the re-leases of reaped ticks."""
        k = self.keys
        keys = [k.due, k.state, k.inflight, k.flight, k.instances, k.meta, k.instinfo, k.inststats, *self._history_keys(acks)]
        args: list[Any] = [instance, heartbeat_ms, lease_ms, max_due, max_reap, random.random(), HISTORY_LENGTH, len(acks), *_flat(acks)]
        raw, confirmed = self._durable("peek", keys, args, confirm)
        pos = 7
        due = []
        for _ in range(int(raw[6])):
            due.append(Due(_s(raw[pos]), raw[pos + 1], raw[pos + 2] or None))
            pos += 3
        reaped = []
        for _ in range(int(raw[pos])):
            reaped.append(Reaped(_s(raw[pos + 1]), raw[pos + 2] or None))
            pos += 2
        return Peek(
            now=int(raw[0]),
            epoch=_s(raw[1]),
            instances_expired=bool(int(raw[2])),
            registered=bool(int(raw[3])),
            next_tick=_opt_int(raw[4]),
            next_lease=_opt_int(raw[5]),
            due=due,
            reaped=reaped,
            confirmed=confirmed,
        )

    def _history_keys(self, acks: Sequence[Ack]) -> list[str]:
        return [self.keys.history(a.member.split(":", 1)[1]) for a in acks]

    def claim(self, items: Sequence[ClaimItem], lease_ms: int) -> tuple[int, list[bool], bool]:
        """Server time, which entries were won, and whether the claims reached wait_replicas replicas."""
        k = self.keys
        args: list[Any] = [lease_ms, len(items)]
        for it in items:
            nxt = "park" if it.park else ("" if it.next is None else str(it.next))
            ver = "" if it.version is None else str(it.version)
            args += [it.name, it.score, ver, nxt, len(it.ticks), *it.ticks]
        raw, confirmed = self._durable("claim", [k.due, k.state, k.defs, k.inflight, k.flight], args)
        return int(raw[0]), [bool(int(x)) for x in raw[1:]], bool(confirmed)

    def ack(self, acks: Sequence[Ack], instance: str = "") -> None:
        """Forget published ticks and append them to their entries' histories."""
        if acks:
            k = self.keys
            keys = [k.inflight, k.flight, k.inststats, *self._history_keys(acks)]
            self._durable("ack", keys, ["ack", instance, HISTORY_LENGTH, len(acks), *_flat(acks)])

    def release(self, members: Sequence[str]) -> None:
        """Make unpublished claims due for reaping now (a clean shutdown)."""
        if members:
            k = self.keys
            self._call("ack", [k.inflight, k.flight, k.inststats], ["release", "", HISTORY_LENGTH, len(members), *members])

    def trigger(self, name: str, version: int, step_ms: int, anchor_ms: int, lease_ms: int) -> int | None:
        """Claim an unscheduled run of ``name`` now; None if the entry changed meanwhile."""
        k = self.keys
        tick = self._call("trigger", [k.due, k.state, k.defs, k.inflight, k.flight], [name, version, step_ms, anchor_ms, lease_ms])
        return None if tick is None else int(tick)

    def history(self, name: str, limit: int) -> list[bytes]:
        rows: list[Any] = self.client.lrange(self.keys.history(name), 0, max(0, limit - 1))
        return rows

    # -- instances --------------------------------------------------------
    def register(self, instance: str, heartbeat_ms: int, info_json: str, epoch: str) -> tuple[int, str]:
        k = self.keys
        now, stored = self._call("register", [k.instances, k.instinfo, k.meta], [instance, heartbeat_ms, info_json, epoch])
        return int(now), _s(stored)

    def prune(self, leaving: str = "") -> list[str]:
        k = self.keys
        removed = [_s(n) for n in self._call("prune", [k.instances, k.instinfo, k.static, k.due, k.defs, k.state], [leaving])]
        if removed:  # their names were only known inside the script
            self.client.delete(*(k.history(n) for n in removed))
        return removed

    def instances(self) -> tuple[int, list[tuple[str, int, bytes | None, int]]]:
        """Server time and each registered instance: (id, heartbeat deadline, info JSON, ticks published)."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(k.instances, 0, -1, withscores=True)
        pipe.hgetall(k.instinfo)
        pipe.hgetall(k.inststats)
        results: list[Any] = pipe.execute()
        (sec, usec), members, raw_infos, raw_stats = results
        infos = {_s(i): v for i, v in raw_infos.items()}
        stats = {_s(i): int(v) for i, v in raw_stats.items()}
        rows = [(_s(i), int(score), infos.get(_s(i)), stats.get(_s(i), 0)) for i, score in members]
        return int(sec) * 1000 + int(usec) // 1000, rows

    def inflight(self) -> list[tuple[str, int]]:
        """Every claimed, unacknowledged tick with its lease deadline."""
        rows: list[Any] = self.client.zrange(self.keys.inflight, 0, -1, withscores=True)
        return [(_s(m), int(score)) for m, score in rows]

    def due_between(self, low_ms: int, high_ms: int) -> list[tuple[str, int]]:
        rows: list[Any] = self.client.zrangebyscore(self.keys.due, low_ms, high_ms, withscores=True)
        return [(_s(n), int(s)) for n, s in rows]
