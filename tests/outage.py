"""One beat loses its store Redis for a while and gets it back, measured from the broker.

Used by tests/test_resilience.py (short) and ``python -m bench.outage`` (30 s).
Modes: ``stop`` (the server is gone: connections refused) and ``freeze``
(SIGSTOP: connections hang, as with a dead host or a partition, until
socket_timeout).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from failover import Recorder
from harness import Beat, RedisServer


@dataclass
class OutageFigures:
    mode: str
    outage_s: float
    lease_s: float
    catchup: str
    alive: bool = False  #: the beat still runs at the end
    exit_code: int | None = None  #: after SIGTERM (0 expected)
    outage_lines: int = 0  #: "Redis unavailable" lines (1 expected)
    recovered_lines: int = 0  #: "Redis reachable again" lines (1 expected)
    tracebacks: int = 0
    resume_s: float | None = None  #: Redis back -> first message for a tick due after that
    gap_ticks: int = 0  #: ticks never published around the outage: the misfire policy (coalesce/skip drop, all keeps)
    late_ticks: int = 0  #: ticks published more than 2 s after they were due (caught up)
    same_id_repeats: int = 0
    missed_outside: int = 0  #: ticks missing outside the outage window (0 expected)

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def run(workdir: Path, *, mode: str = "stop", outage: float = 30.0, lease: float = 10.0, catchup: str = "coalesce",
        before: float = 3.0, after: float = 6.0, broker: RedisServer | None = None, prefix: str = "out",
        options: str = "{}") -> OutageFigures:
    assert mode in ("stop", "freeze")
    fig = OutageFigures(mode, outage, lease, catchup)
    own_broker = broker is None
    broker = broker or RedisServer(workdir / "broker").start()
    store = RedisServer(workdir / "store").start()
    queue = f"q-{prefix}"
    env = {
        "BEAT_BROKER_URL": f"redis://127.0.0.1:{broker.port}/1", "BEAT_REDIS_URL": store.url, "BEAT_PREFIX": prefix,
        "BEAT_QUEUE": queue, "BEAT_SCHEDULE": '{"e": {"every": 1}}', "BEAT_LEASE": str(lease), "BEAT_CATCHUP": catchup,
        "BEAT_REDIS_OPTIONS": options,
    }
    beat = Beat(workdir, env, "outage").start()
    recorder = Recorder(broker, queue).start()
    try:
        beat.wait_log("registered 1 static entries", 60)
        time.sleep(before)
        down = time.time()
        if mode == "stop":
            store.stop()
        else:
            assert store.proc is not None
            store.proc.send_signal(signal.SIGSTOP)
        time.sleep(outage)
        if mode == "stop":
            store.start()  # same port, same append-only file
        else:
            assert store.proc is not None
            store.proc.send_signal(signal.SIGCONT)
        back = time.time()
        time.sleep(after)
        fig.alive = beat.proc is not None and beat.proc.poll() is None
        fig.exit_code = beat.stop()
    finally:
        beat.stop()
        seen = recorder.stop()
        if store.proc is not None:
            store.proc.send_signal(signal.SIGCONT)
        store.stop()
        if own_broker:
            broker.stop()
    out = beat.output()
    fig.outage_lines = out.count("Redis unavailable")
    fig.recovered_lines = out.count("Redis reachable again")
    fig.tracebacks = out.count("Traceback")
    msgs = [m for _, m in seen]
    fig.same_id_repeats = sum(c - 1 for c in Counter(m.tick for m in msgs).values())
    later = [at for at, m in seen if m.tick / 1000 >= back]
    fig.resume_s = round(min(later) - back, 2) if later else None
    fig.late_ticks = len({m.tick for at, m in seen if at - m.tick / 1000 > 2})
    ticks = sorted({m.tick for m in msgs})
    for a, b in zip(ticks, ticks[1:], strict=False):
        missing = round((b - a) / 1000) - 1  # every(1)
        if a / 1000 < back and b / 1000 > down:
            fig.gap_ticks += missing
        else:
            fig.missed_outside += missing
    return fig
