"""The chaos run: real beats behind controllable proxies, a real Redis with AOF, a
recorder of every published message, and faults drawn from a seed."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from celery import Celery

from faults import DAMAGE
from harness import Beat, RedisServer, decode, faketime_library
from redbeat_safe import Schedules, every, pattern
from redbeat_safe.api import EntryDamaged, EntryNotFound
from redbeat_safe.store import Keys, RedisStore

from .checker import Fault, Record, TriggerCall, Verdict, check
from .proxy import Proxy

STATIC = {
    "s1": ({"every": 1}, every(1)),
    "s2": ({"every": 2}, every(2)),
    "s07": ({"every": 0.7}, every(0.7)),
    "p1": ({"pattern": "*/1 * * * * *"}, pattern("*/1 * * * * *", tz="UTC")),
    "p3": ({"pattern": "*/3 * * * * *", "tz": "Europe/Berlin"}, pattern("*/3 * * * * *", tz="Europe/Berlin")),
}
CHURNED = [f"churn{i}" for i in range(4)]
#: API entries whose records the "damage" fault edits by hand, and repairs a few seconds later
VICTIMS = ["victim0", "victim1"]
#: an API entry that is paused and resumed by the operator throughout the run
TOGGLED = "toggled"
#: triggered by the operator; its schedule never comes due in a run, so every message of it is a trigger
TRIGGERED = "triggered"
BEAT_FAULTS = ("kill_restart", "stop_cont", "net_cut", "latency", "skewed_restart", "reply_lost")
REDIS_FAULTS = ("redis_restart", "script_flush", "client_kill", "damage")
#: the share of the operator's script replies its proxy loses, all run long
OPERATOR_LOST_REPLIES = 0.15


def ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Config:
    seconds: float = 90
    seed: int = 1
    beats: int = 3
    lease: float = 5.0


class Chaos:
    def __init__(self, cfg: Config, workdir: Path, say: Callable[[str], None] = print) -> None:
        self.cfg, self.workdir, self.say = cfg, workdir, say
        self.rng = random.Random(cfg.seed)
        self.prefix = f"chaos{cfg.seed}"
        self.queue = f"chaos-{cfg.seed}"
        self.store = RedisServer(workdir / "store", appendonly=True)
        self.broker = RedisServer(workdir / "broker", appendonly=False)
        self.proxies: list[Proxy] = []
        self.beats: list[Beat | None] = []
        self.down_until: list[float] = []
        self.pending: list[tuple[float, Callable[[], None]]] = []
        self.faults: list[Fault] = []
        self.records: list[Record] = []
        self.triggers: list[TriggerCall] = []
        self.op_proxy: Proxy | None = None
        self._stop = threading.Event()
        self._calm = threading.Event()  #: faults and operator changes are over
        self._todo = list(BEAT_FAULTS + REDIS_FAULTS)
        self.rng.shuffle(self._todo)
        self._redis_busy_until = 0.0

    # -- the cast -----------------------------------------------------------
    def _env(self, i: int) -> dict[str, str]:
        return {
            "BEAT_BROKER_URL": self.broker.url,
            "BEAT_REDIS_URL": f"redis://127.0.0.1:{self.proxies[i].port}/0",
            "BEAT_PREFIX": self.prefix,
            "BEAT_QUEUE": self.queue,
            "BEAT_SCHEDULE": json.dumps({n: spec for n, (spec, _) in STATIC.items()}),
            "BEAT_LEASE": str(self.cfg.lease),
            "BEAT_REDIS_OPTIONS": json.dumps({"socket_timeout": 2, "socket_connect_timeout": 2}),
        }

    def _start_beat(self, i: int, skew: str | None = None) -> None:
        beat = Beat(self.workdir, self._env(i), f"b{i}{'-skewed' if skew else ''}", faketime=skew)
        self.beats[i] = beat.start()

    def _app(self, url: str | None = None) -> Celery:
        app = Celery("chaos", set_as_current=False)
        app.conf.update(broker_url=self.broker.url, redbeat_safe_redis_url=url or self.store.url, redbeat_safe_key_prefix=self.prefix,
                        redbeat_safe_redis_options={"socket_timeout": 2}, redbeat_safe_lease=self.cfg.lease, task_default_queue=self.queue)
        return app

    def _record(self) -> None:
        client = redis.Redis(port=self.broker.port, socket_timeout=5)
        while not self._stop.is_set():
            try:
                item = client.blpop([self.queue], timeout=1)
            except redis.RedisError:
                time.sleep(0.2)
                continue
            if item:
                m = decode(item[1])
                self.records.append(Record(m.entry, m.tick, m.task_id, ms(), str(m.headers.get("redbeat_safe_instance", "?"))))

    def _churn(self) -> None:
        """Concurrent upserts, changes and removals of API entries throughout the run."""
        rng = random.Random(self.cfg.seed + 1)
        api = Schedules(self._app())
        while not self._stop.is_set():
            name = rng.choice(CHURNED)
            try:
                if rng.random() < 0.25:
                    api.remove(name)
                else:
                    api.upsert(name, "beatapp.record", every(rng.choice([0.5, 1, 1.5])), args=[rng.randint(0, 2)])
            except redis.RedisError:
                pass  # the store is being restarted; try again
            self._stop.wait(rng.uniform(0.1, 0.8))

    def _operate(self) -> None:
        """An operator behind a proxy that loses replies: triggers (retried with the same
        request id until they return), pauses and resumes, throughout the run."""
        rng = random.Random(self.cfg.seed + 2)
        assert self.op_proxy is not None
        api = Schedules(self._app(self.op_proxy.url))
        while not self._calm.is_set():
            try:
                if rng.random() < 0.6:
                    self._trigger(api)
                else:
                    api.pause(TOGGLED) if rng.random() < 0.5 else api.resume(TOGGLED)
            except (redis.RedisError, OSError, EntryNotFound, EntryDamaged):
                pass  # a lost reply beyond redis-py's retries, or the store restarting
            self._stop.wait(rng.uniform(0.2, 1.0))

    def _trigger(self, api: Schedules) -> None:
        call = TriggerCall(uuid.uuid4().hex, ms())
        self.triggers.append(call)
        while not self._stop.is_set():
            try:
                call.task_id = api.trigger(TRIGGERED, request_id=call.request_id)
                call.returned_ms = ms()
                return
            except Exception as exc:  # the caller saw an error: it retries the same request
                call.errors.append(type(exc).__name__)
                self._stop.wait(0.3)

    # -- faults -------------------------------------------------------------
    def _up(self, now: float) -> list[int]:
        return [i for i in range(self.cfg.beats) if self.down_until[i] <= now]

    def _fault(self, now: float) -> None:
        kinds = list(BEAT_FAULTS) + (list(REDIS_FAULTS) if now >= self._redis_busy_until else [])
        if any(a for _, a in self.pending if getattr(a, "repairs", False)):
            kinds = [k for k in kinds if k != "damage"]  # one damaged victim at a time
        if not faketime_library():
            kinds.remove("skewed_restart")
        todo = [k for k in self._todo if k in kinds]
        kind = todo[0] if todo else self.rng.choice(kinds)  # every kind once first, then at random
        if kind in BEAT_FAULTS:
            up = self._up(now)
            if len(up) < 2 and kind not in ("latency", "reply_lost"):
                return  # keep at least one beat connected: then no tick may be missed
            self._beat_fault(kind, self.rng.choice(up) if up else 0, now)
        else:
            self._redis_fault(kind, now)
        if kind in self._todo:
            self._todo.remove(kind)

    def _beat_fault(self, kind: str, i: int, now: float) -> None:
        beat = self.beats[i]
        lease = self.cfg.lease
        if kind == "kill_restart":
            d = self.rng.uniform(1, 4)
            assert beat is not None
            beat.kill()
            self.pending.append((now + d, lambda: self._start_beat(i)))
        elif kind == "skewed_restart":
            d = 1.0
            assert beat is not None
            beat.kill()
            skew = self.rng.choice(["+60s", "-60s"])
            self.pending.append((now + d, lambda: self._start_beat(i, skew)))
            kind = f"skewed_restart ({skew})"
        elif kind == "stop_cont":
            d = lease + self.rng.uniform(1, 3)
            assert beat is not None
            beat.signal(signal.SIGSTOP)
            self.pending.append((now + d, lambda: beat.signal(signal.SIGCONT)))
        elif kind == "net_cut":
            d = self.rng.uniform(2, 8)
            self.proxies[i].cut(d)
        elif kind == "reply_lost":
            # the proxy forwards each command, but loses a third of the script replies and drops
            # the connection: redis-py resends, so Redis runs those scripts twice
            d = self.rng.uniform(3, 8)
            self.proxies[i].lose_replies_randomly(0.33, d)
        else:  # latency
            d = self.rng.uniform(3, 6)
            self.proxies[i].slow(0.5, d)
        if kind not in ("latency", "reply_lost"):
            self.down_until[i] = now + d + 2  # restarting takes a moment
        start = ms()
        self.faults.append(Fault(kind.split(" ")[0], start, start + int(d * 1000), f"b{i}"))
        self.say(f"  +{now - self.t0:5.1f}s  {kind} on b{i} for {d:.1f}s")

    def _redis_fault(self, kind: str, now: float) -> None:
        start = ms()
        admin = self.store.client()
        detail = ""
        if kind == "redis_restart":
            self.store.restart()
        elif kind == "script_flush":
            admin.script_flush()
        elif kind == "damage":
            victim, how = self.rng.choice(VICTIMS), self.rng.choice(sorted(DAMAGE))
            DAMAGE[how](admin, Keys(self.prefix), victim)
            detail = f" {victim}: {how}, repaired in 3 s"

            def repair() -> None:
                Schedules(self._app()).upsert(victim, "beatapp.record", every(1))

            repair.repairs = True  # type: ignore[attr-defined]
            self.pending.append((now + 3, repair))
        else:
            admin.client_kill_filter(_type="normal", skipme=True)
        admin.close()
        if kind != "damage":
            self._redis_busy_until = time.monotonic() + 5
        self.faults.append(Fault(kind, start, ms() + (3000 if kind == "damage" else 0), detail.strip()))
        self.say(f"  +{now - self.t0:5.1f}s  {kind}{detail}")

    # -- the run --------------------------------------------------------------
    def run(self) -> Verdict:
        cfg = self.cfg
        self.store.start()
        self.broker.start()
        self.proxies = [Proxy(self.store.port, seed=cfg.seed + i) for i in range(cfg.beats)]
        self.op_proxy = Proxy(self.store.port, seed=cfg.seed + 100)
        self.op_proxy.lose_replies_randomly(OPERATOR_LOST_REPLIES, 10**9)
        self.beats = [None] * cfg.beats
        self.down_until = [0.0] * cfg.beats
        threads = [threading.Thread(target=self._record, daemon=True)]
        try:
            for i in range(cfg.beats):
                self._start_beat(i)
            for b in self.beats:
                assert b is not None
                b.wait_log("registered", timeout=60)
            keys, admin = Keys(self.prefix), self.store.client()
            static = {n: (s, int(admin.zscore(keys.due, n) or 0)) for n, (_, s) in STATIC.items()}
            admin.close()
            api = Schedules(self._app())
            for name in [*VICTIMS, TOGGLED]:
                api.upsert(name, "beatapp.record", every(1))
            api.upsert(TRIGGERED, "beatapp.record", every(3600))
            threads.append(threading.Thread(target=self._churn, daemon=True))
            threads.append(threading.Thread(target=self._operate, daemon=True))
            for t in threads:
                t.start()
            self.t0 = time.monotonic()
            settle = cfg.lease + 4
            calm_at = self.t0 + cfg.seconds - settle
            next_fault = self.t0 + 2
            self.say(f"chaos: {cfg.beats} beats, seed {cfg.seed}, {cfg.seconds:.0f}s (faults until the last {settle:.0f}s)")
            while (now := time.monotonic()) < self.t0 + cfg.seconds:
                for when, action in [p for p in self.pending if p[0] <= now]:
                    self.pending.remove((when, action))
                    action()
                if now >= next_fault and now < calm_at:
                    self._fault(now)
                    next_fault = now + self.rng.uniform(1.5, 5)
                time.sleep(0.05)
            self._calm.set()
            for _, action in self.pending:  # put everything back before the end
                action()
            self.pending.clear()
            end = ms()
            time.sleep(cfg.lease + 2)  # whatever was claimed at the end gets published
            self._stop.set()
            final = self._final_state()
        finally:
            self._stop.set()
            for b in self.beats:
                if b is not None:
                    b.stop()
            for t in threads:
                t.join(10)
            for p in [*self.proxies, *([self.op_proxy] if self.op_proxy else [])]:
                p.close()
            self.store.stop()
            self.broker.stop()
        lost = sum(p.replies_lost for p in self.proxies) + (self.op_proxy.replies_lost if self.op_proxy else 0)
        return check(self.records, self.prefix, static, self.faults, end, int(cfg.lease * 1000), 1000, final,
                     triggers=self.triggers, triggered=TRIGGERED, replies_lost=lost)

    def _final_state(self) -> dict[str, tuple[bool, int | None]]:
        client = self.store.client()
        store = RedisStore(client, self.prefix)
        out: dict[str, tuple[bool, int | None]] = {}
        _, rows = store.read(store.names())
        for row in rows:
            st = row.state
            out[row.name] = (st is not None and st.enabled and not st.done, row.score)
        client.close()
        return out


def run(cfg: Config, workdir: Path, say: Callable[[str], None] = print) -> Verdict:
    return Chaos(cfg, workdir, say).run()
