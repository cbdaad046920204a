"""The Redis store: key layout, the Lua scripts, and typed calls around them.

All keys of one app share the Redis Cluster hash tag ``{<prefix>}`` and every
key a script touches is passed in ``KEYS``, so on a Cluster every call goes to
the one node that owns the tag's slot. Scripts are loaded once and called by
SHA; redis-py reloads one the server has forgotten (restart, SCRIPT FLUSH,
failover to a replica that never saw it).

Any call may reach Redis twice: redis-py sends a command again when the
connection dropped before the reply came, although the script had run. So
every script that writes gets a key of its own for this call (``reply``): its
first run records its answer there, a second run returns that answer and
writes nothing (see each script's header). State records are parsed only by
the scripts (``load_state`` in _common.lua); Python receives the checked
fields, so the two sides can never read a record differently.

With ``wait_replicas`` the writes that gate a publish (claim, and the peek that
re-leases expired ticks) are followed by ``WAIT n timeout`` in the same
pipeline, so on the same connection: the caller learns whether n replicas have
them, i.e. whether they survive a failover to one of those replicas.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Generic, TypeVar

from redis.cluster import RedisCluster
from redis.exceptions import MovedError, NoScriptError, ResponseError

from .connection import Client
from .schedules import MAX_TICK_MS

#: The key layout this version reads and writes (docs/redis-layout.md), kept in
#: ``{p}:meta`` by the first beat to register. A beat refuses keys of another layout
#: instead of misreading them; a version that changes the layout bumps it.
LAYOUT = "1"
#: Instances that did their part within this window split a burst between them
#: (peek.lua); one that stalled or died leaves the split after it, and a part due
#: longer than this is shared out again from the oldest entry. A beat uses at most
#: half its lease (Engine.split_ms), so a stalled beat's part is taken over well
#: within the misfire grace (lease + loop interval).
SPLIT_WINDOW_MS = 5_000

_SCRIPT_NAMES = ("snapshot", "upsert", "remove", "peek", "claim", "ack", "trigger", "register", "prune", "run", "sweep")
#: Dispatches remembered per entry (its history list is trimmed to this).
HISTORY_LENGTH = 100
#: How long a script's answer is kept for a second run of the same call: far
#: longer than redis-py's retries of one command (a few seconds).
REPLY_TTL_MS = 60_000
#: How long a trigger request id is remembered: a caller retrying the same
#: request within this time gets the same run, never a second one.
REQUEST_TTL_MS = 24 * 3600 * 1000
#: Events of the run ledger per run.lua call (a worker's batch is split into calls of
#: this many, pipelined: each call holds Redis for well under a millisecond).
RUN_BATCH = 200
#: The keys every run.lua call names first (store.Keys attributes), in its order.
_RUN_SHARED = ("running", "runlease", "buffered", "inflight", "holder", "wake", "runstats", "lastok", "state", "ledgers")
#: Names read per snapshot call when listing every entry.
READ_CHUNK = 500

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


_SUMMARY_STATES = {b"e": "enabled", b"p": "paused", b"f": "finished", b"d": "damaged",
                   "e": "enabled", "p": "paused", "f": "finished", "d": "damaged"}  # bytes, or text with decode_responses


class Keys:
    """Names of every key of one app (see docs/redis-layout.md)."""

    def __init__(self, prefix: str) -> None:
        tag = "{" + prefix + "}"
        self.prefix = prefix
        self.due = f"{tag}:due"  # zset: entry -> next tick (ms); enabled entries with a future tick
        self.defs = f"{tag}:defs"  # hash: entry -> definition JSON
        self.state = f"{tag}:state"  # hash: entry -> state JSON (version, runs, last tick, ...)
        self.static = f"{tag}:static"  # set: entries registered from a beat_schedule
        self.aside = f"{tag}:aside"  # hash: entry -> why a beat set it aside (JSON), until it is upserted or removed
        self.inflight = f"{tag}:inflight"  # zset: "<tick>:<entry>" -> lease deadline (ms)
        self.flight = f"{tag}:flight"  # hash: "<tick>:<entry>" -> definition JSON it was claimed under
        self.holder = f"{tag}:holder"  # hash: "<tick>:<entry>" -> the instance (or API caller) holding its lease
        self.instances = f"{tag}:instances"  # zset: instance id -> heartbeat deadline (ms)
        self.instinfo = f"{tag}:instinfo"  # hash: instance id -> JSON (host, pid, static names)
        self.inststats = f"{tag}:inststats"  # hash: instance id -> ticks it published
        self.meta = f"{tag}:meta"  # hash: epoch (changes if Redis lost the data), layout
        self.counters = f"{tag}:counters"  # hash: kind (s, r, t, x, skip) -> how many, cluster-wide, for the metrics
        self.refusals = f"{tag}:refusals"  # hash, expiring: embedded beat id -> JSON (why it schedules nothing)
        self.seen = f"{tag}:seen"  # zset: instance id -> when it last did its part (peek found none, or a claim): who splits a burst
        self.wake = f"{tag}:wake"  # stream: one record per change that may make something due sooner (beats wait on it)
        self.running = f"{tag}:running"  # hash: entry -> its run's marker (JSON: tick, state, id, deadline); overlap policies
        self.runlease = f"{tag}:runlease"  # zset: entry -> its marker's deadline (ms), to find expired ones
        self.buffered = f"{tag}:buffered"  # hash: entry -> "<tick>:<entry>|<hold ms>", the one tick buffer_one keeps
        self.runstats = f"{tag}:runstats"  # hash: "<outcome>:<entry>" -> count (succeeded, failed, ..., skipped.<why>)
        self.lastok = f"{tag}:lastok"  # hash: entry -> when its last run succeeded (ms)
        self.finished = f"{tag}:finished"  # zset: finished entry -> when it finished (ms): removed after the retention
        self.ledgers = f"{tag}:ledgers"  # zset: worker process with the run ledger -> until when it is known alive (ms)
        self._runs = f"{tag}:runs:"
        self._history = f"{tag}:history:"
        self._reply = f"{tag}:reply:"
        self._request = f"{tag}:request:"

    def history(self, name: str) -> str:
        """list: the entry's latest dispatches, newest first (JSON records)."""
        return self._history + name

    def runs(self, name: str) -> str:
        """zset: the entry's run ledger, score the tick, member its record (JSON)."""
        return self._runs + name

    def reply(self, call_id: str) -> str:
        """string, expiring: one script call's answer, for a second run of the same call."""
        return self._reply + call_id

    def request(self, name: str, request_id: str) -> str:
        """string, expiring: the tick a trigger request claimed."""
        return f"{self._request}{name}:{request_id}"


def _s(value: Any) -> str:
    """Text from Redis. Bytes that are not UTF-8 (a name planted by hand) become lone
    surrogates, which ``_b`` turns back into the same bytes: such an entry can still
    be set aside, listed and removed."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _b(value: Any) -> Any:
    """What to send Redis for a key or an argument: text exactly as it was read."""
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def _opt_int(value: Any) -> int | None:
    """A tick a script returned ('' for none); anything else that is not whole ms is none too."""
    return None if value in (b"", "", None, False) else whole_ms(value)


def _count(value: Any) -> int:
    """A counter as stored (planted records may hold anything): 0 unless a whole number >= 0."""
    try:
        n = int(_s(value))
    except (TypeError, ValueError):
        return 0
    return n if n >= 0 else 0


def _deadline(score: float) -> int:
    """A sorted-set score as ms; one planted beyond any tick (inf) reads as the last one,
    one before any (-inf) as 0, so views can show it instead of failing."""
    if score != score:  # NaN cannot be a score, but stay total
        return 0
    return int(min(max(score, 0), MAX_TICK_MS))


def definition_hash(raw: bytes | str) -> str:
    """How the state names its definition: the first 16 hex digits of its SHA-1."""
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()[:16]


def whole_ms(raw: Any) -> int | None:
    """A score as Redis prints it, if it is a whole number of ms (else None: damaged)."""
    if raw is None or raw is False:
        return None
    try:
        value = float(_s(raw))
    except ValueError:
        return None
    return int(value) if value.is_integer() and 0 <= value <= MAX_TICK_MS + 999 else None


@dataclass(frozen=True)
class State:
    """An entry's state record, as ``load_state`` (in _common.lua) checked it."""

    version: int
    runs: int
    last: int | None  #: the latest claimed tick
    hold: int | None  #: while paused: the tick it would have had
    trigger: int | None  #: the latest triggered tick
    enabled: bool
    done: bool
    definition_hash: str
    schedule_hash: str
    source: str  #: "static" or "api"
    created_ms: int
    updated_ms: int

    @classmethod
    def from_fields(cls, f: Sequence[Any]) -> State:
        def tick(v: Any) -> int | None:
            return None if int(v) < 0 else int(v)

        return cls(int(f[0]), int(f[1]), tick(f[2]), tick(f[3]), tick(f[4]), bool(int(f[5])), bool(int(f[6])),
                   _s(f[7]), _s(f[8]), _s(f[9]), int(f[10]), int(f[11]))


@dataclass(frozen=True)
class Stored:
    """Everything stored for one entry name, checked, with what is wrong with it."""

    name: str
    state: State | None
    state_problem: str | None  #: a state record exists but is not valid
    score_raw: bytes | None  #: its next tick exactly as Redis prints it
    definition: bytes | None  #: the stored definition (only when read in full)
    stored_hash: str | None  #: the hash of the stored definition; None when there is none
    aside: str | None  #: why a beat set it aside

    @property
    def score(self) -> int | None:
        return whole_ms(self.score_raw)

    @property
    def exists(self) -> bool:
        return (self.state is not None or self.state_problem is not None or self.stored_hash is not None
                or self.score_raw is not None or self.aside is not None)

    @property
    def problem(self) -> str | None:
        """What is wrong with the records, or None when they are consistent."""
        if self.state_problem:
            return self.state_problem
        if self.state is None:
            if not self.exists:
                return None
            return f"set aside by a beat: {self.aside}" if self.aside else "its state record is missing"
        if self.stored_hash is None:
            return "its definition is missing"
        if self.stored_hash != self.state.definition_hash:
            return "its definition does not match its state (edited by hand?)"
        if self.score_raw is not None and self.score is None:
            return f"its next tick {_s(self.score_raw)!r} is not whole ms up to year 9999"
        if self.state.enabled and not self.state.done and self.score_raw is None:
            return f"set aside by a beat: {self.aside}" if self.aside else "set aside by a beat"
        return None


@dataclass
class Due:
    name: str
    score: bytes  #: the score exactly as Redis printed it (the claim compares it)
    version: int  #: -1 when the state or score is not valid (``problem`` says why)
    runs: int
    definition_hash: str  #: what the state names; the problem text when version is -1

    @property
    def tick(self) -> int:
        return int(float(self.score))

    @property
    def problem(self) -> str | None:
        return self.definition_hash if self.version < 0 else None


def split_member(member: str) -> tuple[int, str] | None:
    """(tick, entry) of an in-flight member "<tick>:<entry>"; None for anything else."""
    digits, sep, name = member.partition(":")
    if not sep or not name or not digits.isascii() or not digits.isdigit() or len(digits) > 15:
        return None
    return int(digits), name


@dataclass
class Reaped:
    member: str
    definition: bytes | None

    @property
    def parsed(self) -> tuple[int, str] | None:
        return split_member(self.member)


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
    due_total: int = 0  #: entries due in all: more than ``due`` when other instances have the rest of a burst
    wake_id: str = ""  #: the latest wake-up, read with the due list: wait for one after it
    woken: bool | None = None  #: the wait before this peek ended with a wake-up (None: it did not wait)
    wake_error: str | None = None  #: waiting for wake-ups failed, for a reason waiting again will not fix
    sharing: int = 1  #: instances the due list was split between (1: this one read it alone)
    ledgers: int = 0  #: worker processes that keep the run ledger (overlap policies need one)


class WakeUnavailable(Exception):
    """The server refused a wait for wake-ups (the wake key damaged, an ACL without
    XREAD): waiting again would fail the same way, so the beat sleeps instead."""


#: What claim answers per entry (ASIDE: it was set aside; ``Claimed.aside`` says why).
CLAIMED, CHANGED, NOT_DUE, ASIDE = 1, 0, -1, 2


@dataclass
class ClaimItem:
    name: str
    score: bytes
    version: int  #: -1 when the state was unreadable
    ticks: list[int]
    next: int | None  #: None ends the entry
    mode: str = ""  #: "" a claim; "check": set it aside if damaged; "park": set it aside for ``reason``
    reason: str = ""
    skipped: int = 0  #: missed ticks the misfire policy leaves out (counted once the claim succeeds)
    overlap: str = ""  #: "" (allow), "skip", "buffer" or "replace": decided in the claim on the running marker
    hold_ms: int = 0  #: with an overlap policy: how long a published tick counts as queued
    skip_why: str = ""  #: why ``skipped`` ticks were left out ("coalesced", "missed"): recorded in the run ledger
    skip_from: int = 0
    skip_to: int = 0


@dataclass
class Claimed:
    """claim's answer for one entry: CLAIMED, CHANGED, NOT_DUE or ASIDE."""

    code: int
    aside: str | None = None
    #: under an overlap policy: the ticks to publish (None: every planned tick)
    ticks: list[int] | None = None
    #: under overlap "replace": the run to revoke first, (tick, task id or "" for the tick's own)
    revoke: tuple[int, str] | None = None


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
    kind: str = "s"  #: "s" scheduled, "r" re-published by the reaper, "t" triggered, "x" not sent


@dataclass
class Triggered:
    """trigger's answer: the tick and what to do with it."""

    tick: int | None
    outcome: str  #: "claimed" (publish it), "sent", "taken" (a beat publishes it), "changed", or what is wrong


def member(name: str, tick: int) -> str:
    return f"{tick}:{name}"


def _flat(acks: Sequence[Ack]) -> list[str]:
    return [x for a in acks for x in (a.member, a.task_id, a.kind)]


def _stored(name: str, row: Sequence[Any], full: bool) -> Stored:
    state_raw, score, shown, aside_raw = (list(row) + [None] * 4)[:4]
    state = State.from_fields(state_raw) if isinstance(state_raw, list) else None
    problem = _s(state_raw) if isinstance(state_raw, bytes) else None
    aside = None
    if aside_raw:
        try:
            aside = str(json.loads(aside_raw).get("problem"))
        except (ValueError, AttributeError, UnicodeDecodeError):
            aside = _s(aside_raw)
    definition = shown if full and shown else None
    stored_hash = (definition_hash(shown) if full else _s(shown)) if shown else None
    return Stored(name, state, problem, score or None, definition, stored_hash, aside)


def _parse_peek(raw: Any, confirmed: bool | None, woken: bool | None, wake_error: str | None) -> Peek:
    pos = 7
    due = []
    for _ in range(int(raw[6])):
        due.append(Due(_s(raw[pos]), raw[pos + 1], int(raw[pos + 2]), int(raw[pos + 3]), _s(raw[pos + 4])))
        pos += 5
    reaped = []
    for _ in range(int(raw[pos])):
        reaped.append(Reaped(_s(raw[pos + 1]), raw[pos + 2] or None))
        pos += 2
    due_total = int(raw[pos + 1])
    wake = raw[pos + 2] if len(raw) > pos + 2 else b""
    sharing = int(raw[pos + 3]) if len(raw) > pos + 3 else 1
    ledgers = int(raw[pos + 4]) if len(raw) > pos + 4 else 0
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
        due_total=due_total,
        wake_id=_s(wake) if wake else "",
        woken=woken,
        wake_error=wake_error,
        sharing=sharing,
        ledgers=ledgers,
    )


def _claimed(x: Any) -> Claimed:
    if isinstance(x, int):
        return Claimed(x)
    if isinstance(x, list):  # {2, revoke tick, revoke id, tick, ...}: claimed under an overlap policy
        revoke = None if int(x[1]) < 0 else (int(x[1]), _s(x[2]))
        return Claimed(CLAIMED, ticks=[int(t) for t in x[3:]], revoke=revoke)
    return Claimed(ASIDE, _s(x))


def _parse_claim(reply: tuple[Any, bool | None]) -> tuple[int, list[Claimed], bool]:
    raw, confirmed = reply
    return int(raw[0]), [_claimed(x) for x in raw[1:]], bool(confirmed)


T = TypeVar("T")


class Deferred(Generic[T]):
    """A call whose answer is read later: over its own connection (``Pending``), or made
    synchronously when read (a store that does not pipeline, such as the tests' stores
    that lose replies on purpose): either way ``result()`` is the same answer."""

    def __init__(self, pending: Pending | None, call: Callable[[], tuple[Any, bool | None]],
                 parse: Callable[[tuple[Any, bool | None]], T]) -> None:
        self.sent_at = time.monotonic()
        self._pending, self._call, self._parse = pending, call, parse
        self._value: T | None = None
        self._done = False

    def ready(self) -> bool:
        return self._pending is None or self._pending.ready()

    def result(self) -> T:
        if not self._done:
            self._value = self._parse(self._pending.result() if self._pending is not None else self._call())
            self._done = True
        return self._value  # type: ignore[return-value]


class Pending:
    """One script call (with its WAIT) sent on a connection of its own, its reply read
    later: what lets a beat publish one batch while Redis claims the next.

    Reading it gives exactly what the same call made synchronously gives. A script
    the server has forgotten (NOSCRIPT: nothing ran) and a connection lost before
    the reply (the script may have run: its reply record answers a second run) are
    both handled by making the same call again synchronously."""

    def __init__(self, store: RedisStore, name: str, keys: Sequence[str], args: Sequence[Any], wait: bool) -> None:
        self.store, self.name, self.keys, self.args, self.wait = store, name, keys, args, wait
        self._conn: Any = None
        self._pool: Any = None
        self._answer: tuple[Any, bool | None] | None = None
        waiting = bool(store.wait_replicas and wait)
        try:
            node = store._node()
            self._pool = node.connection_pool
            self._conn = self._pool.get_connection()
            script = store._scripts[name]
            commands: list[tuple[Any, ...]] = [("EVALSHA", script.sha, len(keys), *map(_b, keys), *map(_b, args))]
            if waiting:
                commands.append(("WAIT", store.wait_replicas, store.wait_timeout_ms))
            self._conn.send_packed_command(self._conn.pack_commands(commands))
        except Exception:  # noqa: BLE001 - could not send: the synchronous call at result() says what is wrong
            self._drop()

    def ready(self) -> bool:
        """Whether the reply is here (reading it would not block)."""
        if self._answer is not None or self._conn is None:
            return True
        try:
            return bool(self._conn.can_read(timeout=0))
        except Exception:  # noqa: BLE001
            return True  # result() will find out

    def result(self) -> tuple[Any, bool | None]:
        if self._answer is None:
            self._answer = self._read()
        return self._answer

    def _read(self) -> tuple[Any, bool | None]:
        store = self.store
        if self._conn is not None:
            waiting = bool(store.wait_replicas and self.wait)
            try:
                raw = self._conn.read_response()
                acked: Any = self._conn.read_response() if waiting else None
            except NoScriptError:
                if waiting:
                    self._conn.read_response()
                self._release()
            except Exception:  # noqa: BLE001 - lost, or an error reply: the same call again, synchronously
                self._drop()
            else:
                self._release()
                if waiting:
                    return raw, int(acked) >= store.wait_replicas
                return raw, None if store.wait_replicas else True
        return store._durable(self.name, self.keys, self.args, self.wait)

    def _release(self) -> None:
        if self._conn is not None:
            self._pool.release(self._conn)
            self._conn = None

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.disconnect()
            finally:
                self._pool.release(self._conn)
                self._conn = None


class RedisStore:
    """Typed access to one app's keys; no policy, no Celery."""

    #: whether ``*_begin`` calls go out at once on a connection of their own (else they run when read)
    pipelining = True
    #: how long an entry's run ledger is kept after its last write (ms; the settings' redbeat_safe_run_retention)
    run_retention_ms = 7 * 86_400_000

    def __init__(
        self, client: Client, prefix: str, wait_replicas: int = 0, wait_timeout_ms: int = 1000, *, test_clock_key: str | None = None
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        sources = _SOURCES if test_clock_key is None else _load_scripts(test_clock_key)
        self._scripts = {name: client.register_script(src) for name, src in sources.items()}

    def _reply_key(self) -> str:
        return self.keys.reply(os.urandom(8).hex())

    def _call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._scripts[name](keys=[_b(k) for k in keys], args=[_b(a) for a in args])

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
            pipe.evalsha(script.sha, len(keys), *map(_b, keys), *map(_b, args))
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
    def snapshot(self, names: Sequence[str], full: bool = False) -> tuple[int, dict[str, Stored]]:
        """Server time and what is stored for each name (with the definition itself when ``full``)."""
        k = self.keys
        raw = self._call("snapshot", [k.due, k.state, k.defs, k.aside], ["full" if full else "hash", *names])
        return int(raw[0]), {name: _stored(name, row, full) for name, row in zip(names, raw[1:], strict=True)}

    def summary(self, names: Sequence[str]) -> tuple[int, list[tuple[str, str, int | None, int | None]]]:
        """Server time and, per name that has any record, (name, state, next tick, last
        tick): state is enabled, paused, finished or damaged, as ``Stored`` would say
        (one script call for up to SUMMARY_CHUNK names; the metrics read every entry)."""
        k = self.keys
        raw = self._call("snapshot", [k.due, k.state, k.defs, k.aside], ["summary", *names])
        out = []
        codes, scores, lasts = raw[1::3], raw[2::3], raw[3::3]
        for name, code, score, last in zip(names, codes, scores, lasts, strict=True):
            if code:
                state = _SUMMARY_STATES[code]
                out.append((name, state, whole_ms(score) if state == "enabled" else None, None if last is None else int(last)))
        return int(raw[0]), out

    def now(self) -> int:
        """The server's clock, in ms."""
        return self.snapshot([])[0]

    def all_keys(self) -> list[bytes]:
        """Every key of this prefix (``{prefix}:*``), for ``purge``: SCAN, so a large store
        does not block the server; on a Cluster redis-py scans every primary."""
        found: list[bytes] = list(self.client.scan_iter(match=f"{{{self.keys.prefix}}}:*", count=1000))
        return found

    def delete_keys(self, keys: Sequence[bytes]) -> int:
        """UNLINK in batches (freed in the background). Running it again deletes nothing
        more: a key already gone counts 0."""
        deleted = 0
        for start in range(0, len(keys), 500):
            deleted += int(self.client.unlink(*keys[start : start + 500]))
        return deleted

    def names(self) -> list[str]:
        """Every entry name that has any record (a damaged entry too)."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hkeys(k.defs)
        pipe.hkeys(k.state)
        pipe.zrange(k.due, 0, -1)
        pipe.hkeys(k.aside)
        found: set[str] = set()
        for part in pipe.execute():
            found.update(_s(n) for n in part)
        return sorted(found)

    def read(self, names: Iterable[str]) -> tuple[int, list[Stored]]:
        """Server time and each entry in full, in chunks (for listing; not on the hot path)."""
        names = list(names)
        now, out = self.now(), list[Stored]()
        for start in range(0, len(names), READ_CHUNK):
            now, rows = self.snapshot(names[start : start + READ_CHUNK], full=True)
            out.extend(rows.values())
        return now, out

    def upsert(self, items: Sequence[UpsertItem]) -> list[bool]:
        k = self.keys
        args: list[Any] = [REPLY_TTL_MS, len(items)]
        for it in items:
            nxt = "" if it.next is None else str(it.next)
            expected = "-" if it.expected_version is None else str(it.expected_version)
            args += [it.name, expected, it.definition, it.definition_hash, it.schedule_hash, it.source, nxt, "1" if it.enabled else "0",
                     "" if it.runs is None else it.runs, "" if it.last is None else it.last]
        result = [_s(r) for r in self._call("upsert", [self._reply_key(), k.due, k.defs, k.state, k.static, k.aside, k.wake, k.finished], args)]
        bad = [it.name for it, r in zip(items, result, strict=True) if r == "invalid"]
        if bad:
            raise ValueError(f"not a tick for {', '.join(map(repr, bad))}: nothing written for them")
        return [r == "ok" for r in result]

    def remove(self, names: Sequence[str]) -> int:
        k = self.keys
        keys = [self._reply_key(), k.due, k.defs, k.state, k.static, k.aside, k.running, k.runlease, k.buffered, k.flight,
                *(key for n in names for key in (k.history(n), k.runs(n)))]
        return int(self._call("remove", keys, [REPLY_TTL_MS, *names]))

    def static_names(self) -> set[str]:
        """The entries a ``beat_schedule`` declares (``{p}:static``)."""
        return {_s(n) for n in self.client.smembers(self.keys.static)}

    def sweep_finished(self, retention_ms: int, limit: int = 2000) -> list[str]:
        """Remove up to ``limit`` entries that finished more than ``retention_ms`` ago (an
        `at` that ran, an entry past its `end` or `limit`), with all their records. The
        script checks each again: one changed meanwhile (resumed, rescheduled) stays."""
        k = self.keys
        now = self.now()
        names = [_s(n) for n in self.client.zrangebyscore(k.finished, "-inf", now - retention_ms, start=0, num=limit)]
        if not names:
            return []
        keys = [self._reply_key(), k.finished, k.due, k.defs, k.state, k.static, k.aside, k.running, k.runlease, k.buffered, k.flight,
                *(key for n in names for key in (k.history(n), k.runs(n)))]
        return [_s(n) for n in self._call("sweep", keys, [REPLY_TTL_MS, retention_ms, *names])]

    def definitions(self, names: Sequence[str]) -> list[bytes | None]:
        if not names:
            return []
        values: list[Any] = self.client.hmget(self.keys.defs, [_b(n) for n in names])
        return values

    # -- the beat loop ----------------------------------------------------
    @property
    def block_cap_ms(self) -> int:
        """The longest one blocking wait may take: well inside the connection's
        socket_timeout, which would otherwise take a quiet wait for a dead server."""
        kwargs = getattr(getattr(self._node(), "connection_pool", None), "connection_kwargs", {})
        timeout = kwargs.get("socket_timeout")
        return 10_000 if not timeout else max(50, int(float(timeout) * 800))

    def wait_for_wake(self, wake_id: str, block_ms: int) -> bool:
        """Block until a wake-up after ``wake_id`` (True) or ``block_ms`` passed (False).
        Raises WakeUnavailable when the server refuses the wait (a damaged key, an ACL)."""
        try:
            return bool(self._node().xread({self.keys.wake: wake_id or "0-0"}, count=1, block=max(1, block_ms)))
        except ResponseError as exc:
            raise WakeUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def peek(
        self,
        instance: str,
        heartbeat_ms: int,
        lease_ms: int,
        max_due: int,
        max_reap: int,
        acks: Sequence[Ack] = (),
        confirm: bool = False,
        split_ms: int = SPLIT_WINDOW_MS,
        block_ms: int = 0,
        wake_id: str = "",
    ) -> Peek:
        """With ``confirm`` (a lease may have expired), WAIT for the re-leases of reaped ticks.

        With ``block_ms``, first wait up to that long for a wake-up after ``wake_id``,
        in the same round trip: the server runs the peek the moment the wait ends,
        so an idle beat costs one round trip per loop, and a change is seen at once.
        """
        keys, args = self._peek_call(instance, heartbeat_ms, lease_ms, max_due, max_reap, acks, split_ms)
        woken: bool | None = None
        wake_error: str | None = None
        if block_ms > 0:
            raw, confirmed, woken, wake_error = self._wait_and_peek(keys, args, confirm, block_ms, wake_id)
        else:
            raw, confirmed = self._durable("peek", keys, args, confirm)
        return _parse_peek(raw, confirmed, woken, wake_error)

    def peek_begin(self, instance: str, heartbeat_ms: int, lease_ms: int, max_due: int, max_reap: int, acks: Sequence[Ack] = (),
                   confirm: bool = False, split_ms: int = SPLIT_WINDOW_MS) -> Deferred[Peek]:
        """``peek``, sent now and read later (``Deferred.result``)."""
        keys, args = self._peek_call(instance, heartbeat_ms, lease_ms, max_due, max_reap, acks, split_ms)
        pending = Pending(self, "peek", keys, args, confirm) if self.pipelining else None
        return Deferred(pending, lambda: self._durable("peek", keys, args, confirm), lambda r: _parse_peek(r[0], r[1], None, None))

    def _peek_call(self, instance: str, heartbeat_ms: int, lease_ms: int, max_due: int, max_reap: int, acks: Sequence[Ack],
                   split_ms: int) -> tuple[list[str], list[Any]]:
        k = self.keys
        keys = [self._reply_key(), k.due, k.state, k.inflight, k.flight, k.holder, k.instances, k.meta, k.instinfo, k.inststats,
                k.counters, k.seen, k.wake, k.ledgers, k.running, k.runlease, k.buffered, *self._history_keys(acks)]
        args: list[Any] = [REPLY_TTL_MS, instance, heartbeat_ms, lease_ms, max_due, max_reap, split_ms, HISTORY_LENGTH,
                           len(acks), *_flat(acks)]
        return keys, args

    def _wait_and_peek(self, keys: Sequence[str], args: Sequence[Any], confirm: bool, block_ms: int,
                       wake_id: str) -> tuple[Any, bool | None, bool | None, str | None]:
        """XREAD BLOCK on the wake stream, then the peek (and its WAIT), pipelined on one
        connection. Redis runs a connection's commands in order, so the peek runs when the
        wait ends; a beat stopped during the wait closes the connection, and the peek
        queued behind it never runs. A peek that could not run (script cache flushed, slot
        moved) is run again the ordinary way: the wait is over by then."""
        script = self._scripts["peek"]
        waiting = bool(self.wait_replicas and confirm)
        pipe = self._node().pipeline(transaction=False)
        pipe.xread({self.keys.wake: wake_id or "0-0"}, count=1, block=max(1, block_ms))
        pipe.evalsha(script.sha, len(keys), *map(_b, keys), *map(_b, args))
        if waiting:
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        replies = pipe.execute(raise_on_error=False)
        woke, raw = replies[0], replies[1]
        wake_error = f"{type(woke).__name__}: {woke}" if isinstance(woke, Exception) else None
        woken = None if wake_error else bool(woke)
        if isinstance(raw, (NoScriptError, MovedError)):
            raw, confirmed = self._durable("peek", keys, args, confirm)
            return raw, confirmed, woken, wake_error
        if isinstance(raw, Exception):
            raise raw
        if waiting:
            acked = replies[2]
            if isinstance(acked, Exception):
                raise acked
            return raw, int(acked) >= self.wait_replicas, woken, wake_error
        return raw, None if self.wait_replicas else True, woken, wake_error

    def run_event(self, entry: str, tick: int, task_id: str, event: str, worker: str, pid: int, lease_ms: int, exc: str = "",
                  at_ms: int | None = None, started_ms: int | None = None) -> bool:
        """One event of a run (the worker's ledger, run.lua): True if it was recorded."""
        keys, args = self._run_call([(entry, tick, task_id, event, worker, pid, lease_ms, exc, at_ms, started_ms)])
        return bool(self._call("run", keys, args)[0])

    def run_events(self, events: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Several ``run_event`` calls (their arguments, in order) in one round trip, what a
        worker's ledger thread sends: ``RUN_BATCH`` events a script run (one run costs
        Redis and the worker far less than one per event), the runs pipelined. Per event
        1/0 as ``run_event``; where a run's reply is an error, that error stands for each
        of its events, returned, not raised."""
        script = self._scripts["run"]
        pipe = self._node().pipeline(transaction=False)
        calls = [self._run_call(events[i : i + RUN_BATCH]) for i in range(0, len(events), RUN_BATCH)]
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *map(_b, keys), *map(_b, args))
        replies: list[Any] = pipe.execute(raise_on_error=False)
        if any(isinstance(r, NoScriptError) for r in replies):  # nothing of those ran: load it, send them again
            self._node().script_load(script.script)
            for i, (keys, args) in enumerate(calls):
                if isinstance(replies[i], NoScriptError):
                    replies[i] = self._call("run", keys, args)
        out: list[Any] = []
        for (keys, _), reply in zip(calls, replies, strict=True):
            n = len(keys) - len(_RUN_SHARED)
            out.extend(reply if isinstance(reply, list) and len(reply) == n else [reply] * n)
        return out

    def _run_call(self, events: Sequence[tuple[Any, ...]]) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of one run.lua call for these events (each the arguments of
        ``run_event``: entry, tick, task id, event, worker, pid, lease ms[, exception
        type, at ms, started ms])."""
        k = self.keys
        keys = [getattr(k, name) for name in _RUN_SHARED]
        args: list[Any] = [HISTORY_LENGTH, self.run_retention_ms]
        for e in events:
            entry, tick, task_id, event, worker, pid, lease_ms, exc, at_ms, started_ms = (*e, "", None, None)[:10]
            keys.append(k.runs(entry))
            args += [entry, tick, task_id, event, worker, pid, lease_ms, exc, "" if at_ms is None else at_ms,
                     "" if started_ms is None else started_ms]
        return keys, args

    def runs(self, name: str, limit: int = HISTORY_LENGTH) -> list[tuple[int, dict[str, Any]]]:
        """The entry's run ledger, newest tick first: (tick, record)."""
        if limit <= 0:
            return []
        try:
            # ZRANGE from the end, not ZREVRANGE: the documented read-only ACL grants ZRANGE
            raw: list[Any] = self.client.zrange(self.keys.runs(name), -limit, -1, withscores=True)[::-1]
        except ResponseError:  # a key of another type (planted): no ledger to show
            return []
        out = []
        for member, score in raw:
            try:
                rec = json.loads(member)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict):
                out.append((int(score), rec))
        return out

    def run_stats(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """The ledger's totals for the metrics: {(outcome, entry): count} (outcomes
        succeeded, failed, retried, revoked, expired and skipped.<reason>) and {entry: when
        its last run succeeded, ms}. Fields planted by hand are skipped."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(k.runstats)
        pipe.hgetall(k.lastok)
        try:
            stats_raw, ok_raw = pipe.execute()
        except ResponseError:  # a key of another type (planted): no totals to show
            return {}, {}
        stats: dict[tuple[str, str], int] = {}
        for field, value in stats_raw.items():
            outcome, sep, name = _s(field).partition(":")
            if sep and name:
                stats[(outcome, name)] = _count(value)
        last_ok = {_s(n): v for n, raw in ok_raw.items() if (v := whole_ms(raw)) is not None}
        return stats, last_ok

    def _history_keys(self, acks: Sequence[Ack]) -> list[str]:
        return [self.keys.history(a.member.partition(":")[2]) for a in acks]

    def claim(self, items: Sequence[ClaimItem], lease_ms: int, instance: str = "") -> tuple[int, list[Claimed], bool]:
        """Server time, what became of each entry, and whether the claims reached wait_replicas replicas."""
        keys, args = self._claim_call(items, lease_ms, instance)
        return _parse_claim(self._durable("claim", keys, args))

    def claim_begin(self, items: Sequence[ClaimItem], lease_ms: int, instance: str = "") -> Deferred[tuple[int, list[Claimed], bool]]:
        """``claim``, sent now and read later (``Deferred.result``)."""
        keys, args = self._claim_call(items, lease_ms, instance)
        pending = Pending(self, "claim", keys, args, True) if self.pipelining else None
        return Deferred(pending, lambda: self._durable("claim", keys, args), _parse_claim)

    def _claim_call(self, items: Sequence[ClaimItem], lease_ms: int, instance: str) -> tuple[list[str], list[Any]]:
        k = self.keys
        args: list[Any] = [REPLY_TTL_MS, instance, lease_ms, len(items), HISTORY_LENGTH, self.run_retention_ms]
        for it in items:
            mode = it.mode or ("" if it.next is None else str(it.next))
            args += [it.name, it.score, it.version, mode, it.reason, it.skipped, it.overlap, it.hold_ms, it.skip_why, it.skip_from,
                     it.skip_to, len(it.ticks), *it.ticks]
        keys = [self._reply_key(), k.due, k.state, k.defs, k.inflight, k.flight, k.holder, k.aside, k.counters, k.seen,
                k.running, k.runlease, k.buffered, k.runstats, k.finished, *(k.runs(it.name) for it in items)]
        return keys, args

    def ack(self, acks: Sequence[Ack], instance: str = "") -> None:
        """Forget published ticks and append them to their entries' histories."""
        if acks:
            k = self.keys
            keys = [self._reply_key(), k.inflight, k.flight, k.holder, k.inststats, k.instances, k.state, k.counters, k.wake,
                    *self._history_keys(acks)]
            self._durable("ack", keys, [REPLY_TTL_MS, "ack", instance, HISTORY_LENGTH, len(acks), *_flat(acks)])

    def release(self, members: Sequence[str], instance: str) -> None:
        """Make the unpublished claims ``instance`` still holds due for reaping now (a clean shutdown)."""
        if members:
            k = self.keys
            keys = [self._reply_key(), k.inflight, k.flight, k.holder, k.inststats, k.instances, k.state, k.counters, k.wake]
            self._call("ack", keys, [REPLY_TTL_MS, "release", instance, HISTORY_LENGTH, len(members), *members])

    def trigger(self, name: str, request_id: str, caller: str, version: int, step_ms: int, anchor_ms: int, lease_ms: int) -> Triggered:
        """Claim an unscheduled run of ``name`` now, once per ``request_id``."""
        k = self.keys
        keys = [k.request(name, request_id), k.due, k.state, k.defs, k.inflight, k.flight, k.holder]
        raw = self._call("trigger", keys, [REQUEST_TTL_MS, caller, name, version, step_ms, anchor_ms, lease_ms, "claim"])
        tick, outcome = (list(raw) + [None, None])[:2]
        return Triggered(None if tick is None else int(tick), _s(outcome))

    def cancel_trigger(self, name: str, request_id: str, caller: str) -> None:
        """Withdraw a claimed trigger whose publish failed; a retry of the request publishes the same tick."""
        k = self.keys
        keys = [k.request(name, request_id), k.due, k.state, k.defs, k.inflight, k.flight, k.holder]
        self._call("trigger", keys, [REQUEST_TTL_MS, caller, name, 0, 1, 0, 0, "cancel"])

    def history(self, name: str, limit: int) -> list[bytes]:
        rows: list[Any] = self.client.lrange(_b(self.keys.history(name)), 0, max(0, limit - 1))
        return rows

    # -- instances --------------------------------------------------------
    def register(self, instance: str, heartbeat_ms: int, info_json: str, epoch: str) -> tuple[int, str, str]:
        """(server now, the store's epoch, the key layout the store uses)."""
        k = self.keys
        now, stored, layout = self._call("register", [k.instances, k.instinfo, k.meta], [instance, heartbeat_ms, info_json, epoch, LAYOUT])
        return int(now), _s(stored), _s(layout)

    def prune(self, leaving: str = "") -> list[str]:
        """Drop expired instances (and ``leaving``), then static entries no live instance declares."""
        k = self.keys
        now = self.now()  # a script, not TIME: a Cluster pipeline refuses keyless commands
        pipe = self.client.pipeline(transaction=False)
        pipe.zrange(k.instances, 0, -1, withscores=True)
        pipe.smembers(k.static)
        members, static = pipe.execute()
        live = [_s(i) for i, deadline in members if deadline > now and _s(i) != leaving]
        candidates: list[str] = []
        if live and static:
            declared: set[str] = set()
            for raw in self.client.hmget(k.instinfo, live):
                try:
                    names = json.loads(raw)["static"] if raw else None
                except (ValueError, TypeError, KeyError, UnicodeDecodeError):
                    names = None
                if not isinstance(names, list):
                    declared = {_s(n) for n in static}  # unreadable: remove nothing (the script agrees)
                    break
                declared.update(str(n) for n in names)
            candidates = sorted({_s(n) for n in static} - declared)
        keys = [self._reply_key(), k.instances, k.instinfo, k.inststats, k.static, k.due, k.defs, k.state, k.aside, k.seen,
                k.running, k.runlease, k.buffered, k.flight, *(key for n in candidates for key in (k.history(n), k.runs(n)))]
        return [_s(n) for n in self._call("prune", keys, [REPLY_TTL_MS, leaving, *candidates])]

    def instances(self) -> tuple[int, list[tuple[str, int, bytes | None, int]]]:
        """Server time and each registered instance: (id, heartbeat deadline, info JSON, ticks published)."""
        k = self.keys
        now = self.now()
        pipe = self.client.pipeline(transaction=False)
        pipe.zrange(k.instances, 0, -1, withscores=True)
        pipe.hgetall(k.instinfo)
        pipe.hgetall(k.inststats)
        results: list[Any] = pipe.execute()
        members, raw_infos, raw_stats = results
        infos = {_s(i): v for i, v in raw_infos.items()}
        stats = {_s(i): _count(v) for i, v in raw_stats.items()}
        rows = [(_s(i), _deadline(score), infos.get(_s(i)), stats.get(_s(i), 0)) for i, score in members]
        return now, rows

    def note_refusal(self, instance: str, record_json: str, ttl_ms: int) -> None:
        """Say that ``instance`` (an embedded beat) refuses to schedule, and why, for
        `health` to report. Plain HSET and PEXPIRE: a second run writes the same."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.refusals, instance, record_json)
        pipe.pexpire(self.keys.refusals, ttl_ms)
        pipe.execute()

    def counters(self) -> dict[str, int]:
        """Cluster-wide totals: dispatches by kind (s, r, t, x) and ticks skipped by the misfire policy (skip)."""
        try:
            rows: dict[Any, Any] = self.client.hgetall(self.keys.counters)
        except ResponseError:  # not a hash (damaged by hand): the next count starts it again
            return {}
        return {_s(k): _count(v) for k, v in rows.items()}

    def refusals(self) -> dict[str, bytes]:
        try:
            rows: dict[Any, Any] = self.client.hgetall(self.keys.refusals)
        except ResponseError:  # not a hash (damaged by hand): no refusal can be read from it
            return {}
        return {_s(k): v for k, v in rows.items()}

    def inflight(self) -> list[tuple[str, int]]:
        """Every claimed, unacknowledged tick with its lease deadline."""
        rows: list[Any] = self.client.zrange(self.keys.inflight, 0, -1, withscores=True)
        return [(_s(m), _deadline(score)) for m, score in rows]

    def due_between(self, low_ms: int, high_ms: int) -> list[tuple[str, int]]:
        rows: list[Any] = self.client.zrangebyscore(self.keys.due, low_ms, high_ms, withscores=True)
        return [(_s(n), _deadline(s)) for n, s in rows]
