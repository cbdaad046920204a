"""A Sentinel failover under two real beats, measured from the broker's side.

Used by tests/test_sentinel.py (a short run) and by ``python -m bench.failover``
(the figures in docs/redis-topologies.md). Scenarios:

* ``kill``: SIGKILL the primary while beats dispatch;
* ``lag``: first cut the replication link (a black-holed proxy, as in a network
  partition), let the primary accept ``lag`` seconds of claims its replica never
  sees, then SIGKILL it: the promoted replica has lost those writes.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from harness import Beat, Message, RedisServer, decode, wait_for
from redbeat_safe import every
from redbeat_safe.schedules import Schedule
from topology import Proxy, SentinelSet


class Recorder:
    """Polls the broker queue and notes when each message first appeared (kombu LPUSHes)."""

    def __init__(self, broker: RedisServer, queue: str, db: int = 1) -> None:
        self.client = redis.Redis(port=broker.port, db=db, socket_timeout=10)
        self.queue = queue
        self.seen: list[tuple[float, Message]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Recorder:
        self._thread.start()
        return self

    def _poll(self) -> None:
        # newest first: everything but the len(seen) oldest at the tail, in one command
        fresh = self.client.lrange(self.queue, 0, -(len(self.seen) + 1))
        now = time.time()
        for raw in reversed(fresh):
            self.seen.append((now, decode(raw)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            time.sleep(0.05)

    def stop(self) -> list[tuple[float, Message]]:
        self._stop.set()
        self._thread.join(5)
        self._poll()
        self.client.close()
        return self.seen


@dataclass
class Figures:
    scenario: str
    wait_replicas: int
    replicas: int
    lease_s: float
    entries: int
    down_after_s: float  #: sentinel down-after-milliseconds (Redis' default is 30 s)
    catchup: str  #: redbeat_safe_catchup
    published: int = 0
    failover_s: float | None = None  #: kill -> the sentinels name the new primary
    resume_s: float | None = None  #: kill -> the first tick due after the kill is on the broker
    max_late_s: float = 0.0  #: worst (seen - nominal tick) of any message
    same_id_repeats: int = 0  #: extra copies of a (entry, tick), same task id
    new_id_duplicates: int = 0  #: (entry, tick) published under two task ids (must be 0)
    missed: int = 0  #: ticks between an entry's first and last that never came
    outage_lines: int = 0  #: "Redis unavailable" lines over both beats
    held_lines: int = 0  #: "holding claimed ticks back" lines (wait_replicas)
    crashed: int = 0  #: beats not running at the end (must be 0)
    notes: list[str] = field(default_factory=list)

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def tally(fig: Figures, seen: list[tuple[float, Message]], schedules: dict[str, Schedule], kill_at: float) -> None:
    msgs = [m for _, m in seen]
    fig.published = len(msgs)
    counts = Counter((m.entry, m.tick) for m in msgs)
    fig.same_id_repeats = sum(c - 1 for c in counts.values())
    repeats = Counter(round(t / 1000 - kill_at, 2) for (_, t), c in counts.items() for _ in range(c - 1))
    fig.notes += [f"{n} repeated tick(s) due at kill{at:+.2f}s" for at, n in sorted(repeats.items())]
    ids: dict[tuple[str, int], set[str]] = {}
    for m in msgs:
        ids.setdefault((m.entry, m.tick), set()).add(m.task_id)
    fig.new_id_duplicates = sum(1 for v in ids.values() if len(v) > 1)
    missed: list[float] = []
    for name, sched in schedules.items():
        ticks = sorted({m.tick for m in msgs if m.entry == name})
        for a, b in zip(ticks, ticks[1:], strict=False):
            t = sched.next_after(a)
            while t is not None and t < b and len(missed) < 100_000:
                missed.append(t / 1000 - kill_at)
                t = sched.next_after(t)
    fig.missed = len(missed)
    if missed:
        fig.notes.append(f"{len(missed)} missed tick(s) due between kill{min(missed):+.2f}s and kill{max(missed):+.2f}s")
    fig.max_late_s = round(max((at - m.tick / 1000 for at, m in seen), default=0.0), 2)
    after = [at for at, m in seen if m.tick / 1000 >= kill_at]
    fig.resume_s = round(min(after) - kill_at, 2) if after else None


def run(workdir: Path, *, scenario: str = "kill", wait_replicas: int = 0, lease: float = 10.0, entries: int = 10,
        before: float = 5.0, after: float = 15.0, lag: float = 2.0, replicas: int = 2, down_after_ms: int = 1000,
        catchup: str = "coalesce", broker: RedisServer | None = None, prefix: str = "fo") -> Figures:
    """One failover with two beats; every process is started and stopped here."""
    assert scenario in ("kill", "lag")
    stops: list[Any] = []
    fig = Figures(scenario, wait_replicas, replicas, lease, entries, down_after_ms / 1000, catchup)
    try:
        if broker is None:
            broker = RedisServer(workdir / "broker").start()
            stops.append(broker.stop)
        fast = ["--repl-diskless-sync-delay", "0"]  # replicas sync at once, not after Redis' 5 s wait for company
        primary = RedisServer(workdir / "primary", args=fast).start()
        stops.append(primary.stop)
        proxies, replica_set = [], []
        for i in range(replicas):  # in "lag", each replicates through a proxy that can be cut
            proxy = Proxy(primary.port).start()
            stops.append(proxy.stop)
            upstream = proxy.port if scenario == "lag" else primary.port
            replica = RedisServer(workdir / f"replica{i}", args=[*fast, "--replicaof", "127.0.0.1", str(upstream)]).start()
            stops.append(replica.stop)
            proxies.append(proxy)
            replica_set.append(replica)
        for r in replica_set:
            wait_for(lambda r=r: r.client().info("replication").get("master_link_status") == "up", 30, what="the replicas to sync")
        sentinels = SentinelSet(workdir / "sentinels", primary, down_after_ms=down_after_ms).start(replicas=replicas)
        stops.append(sentinels.stop)

        queue = f"q-{prefix}"
        schedule = {f"e{i}": {"every": 1} for i in range(entries)}
        env = {
            "BEAT_BROKER_URL": f"redis://127.0.0.1:{broker.port}/1",
            "BEAT_REDIS_URL": sentinels.url,
            "BEAT_REDIS_OPTIONS": json.dumps({"service_name": sentinels.name}),
            "BEAT_PREFIX": prefix,
            "BEAT_QUEUE": queue,
            "BEAT_SCHEDULE": json.dumps(schedule),
            "BEAT_LEASE": str(lease),
            "BEAT_CATCHUP": catchup,
            "BEAT_WAIT_REPLICAS": str(wait_replicas),
            "BEAT_WAIT_TIMEOUT": str(min(1.0, lease / 4)),
        }
        beats = [Beat(workdir, env, f"fo{i}").start() for i in range(2)]
        for b in beats:
            stops.append(b.stop)
        recorder = Recorder(broker, queue).start()
        for b in beats:
            b.wait_log("registered", 60)
        time.sleep(before)
        if scenario == "lag":
            for proxy in proxies:
                proxy.cut()
            time.sleep(lag)
        kill_at = time.time()
        primary.stop(signal.SIGKILL)
        old = primary.port
        new = wait_for(lambda: next((p for p in sentinels.master_ports() if p != old), None), 60, interval=0.05, what="a new primary")
        fig.failover_s = round(time.time() - kill_at, 2)
        assert new in [r.port for r in replica_set]
        time.sleep(after)
        fig.crashed = sum(1 for b in beats if b.proc is None or b.proc.poll() is not None)
        for b in beats:
            b.stop()
        seen = recorder.stop()
        tally(fig, seen, {f"e{i}": every(1) for i in range(entries)}, kill_at)
        logs = "".join(b.output() for b in beats)
        fig.outage_lines = logs.count("Redis unavailable")
        fig.held_lines = logs.count("holding claimed ticks back")
        if "Traceback" in logs:
            fig.notes.append("a beat logged a traceback")
        return fig
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception as exc:  # keep stopping the rest
                fig.notes.append(f"stop failed: {exc}")
