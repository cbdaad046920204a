"""What every benchmark shares: private redis-servers, beat processes, reading the
published messages back off the broker, CPU time of a process, and tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]
from harness import RedisServer, wait_for  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SCHEDULERS = {
    "default": "celery.beat:PersistentScheduler",
    "redbeat": "redbeat.RedBeatScheduler",
    "redbeat_safe": "redbeat_safe.Scheduler",
}
TICKS = os.sysconf("SC_CLK_TCK")

__all__ = ["RedisServer", "wait_for", "Servers", "Proc", "start_beat", "start_ceiling", "read_messages", "Msg", "table", "pct"]


class Servers:
    """A store Redis and a broker Redis, both fresh, so each one's counters measure one role."""

    def __init__(self, workdir: Path) -> None:
        self.store = RedisServer(workdir / "store", appendonly=False).start()
        self.broker = RedisServer(workdir / "broker", appendonly=False).start()

    def stop(self) -> None:
        self.store.stop()
        self.broker.stop()

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path

    def cpu_seconds(self) -> float:
        """User + system CPU of the process so far (from /proc)."""
        try:
            fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / TICKS

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> int | None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _other_code() -> str | None:
    """A folder holding only BENCH_CODE's redbeat_safe package (not its bench/ or tests/)."""
    code = os.environ.get("BENCH_CODE")
    return code_shim(code) if code else None


def code_shim(code: str) -> str:
    """A folder holding only that checkout's redbeat_safe package, to put first on a
    PYTHONPATH (a "before" row runs that code; bench/ stays this one)."""
    shim = Path(code).resolve() / ".bench-code"
    shim.mkdir(exist_ok=True)
    link = shim / "redbeat_safe"
    if not link.exists():
        link.symlink_to(Path(code).resolve() / "redbeat_safe")
    return str(shim)


def _env(servers: Servers, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    # BENCH_CODE: another checkout whose redbeat_safe the beats run (a "before" row); bench/ stays this one
    path = os.pathsep.join(p for p in (_other_code(), str(ROOT)) if p)
    env.update({"BENCH_BROKER_URL": servers.broker.url, "BENCH_STORE_URL": servers.store.url, "PYTHONPATH": path})
    env.update(extra)
    return env


def start_beat(servers: Servers, workdir: Path, scheduler: str, name: str, env: dict[str, str]) -> Proc:
    log = workdir / f"{name}.log"
    cmd = [sys.executable, "-m", "celery", "-A", "bench.benchapp", "beat", "-S", SCHEDULERS[scheduler],
           "--loglevel", "WARNING", "--schedule", str(workdir / f"celerybeat-{name}")]
    popen = subprocess.Popen(cmd, cwd=workdir, env=_env(servers, env), stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    return Proc(popen, log)


def start_ceiling(servers: Servers, workdir: Path, seconds: float, count: int | None = None) -> Proc:
    log = workdir / "ceiling.log"
    cmd = [sys.executable, "-m", "bench.ceiling", *(["--count", str(count)] if count else [str(seconds)])]
    popen = subprocess.Popen(cmd, cwd=workdir, env=_env(servers, {}), stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    return Proc(popen, log)


@dataclass
class Msg:
    pub_ms: float
    due_ms: float | None
    task_id: str


def queue_length(servers: Servers) -> int:
    return int(redis.Redis(port=servers.broker.port).llen("bench"))


def read_messages(servers: Servers) -> list[Msg]:
    client = redis.Redis(port=servers.broker.port, socket_timeout=60)
    out = []
    for raw in client.lrange("bench", 0, -1):
        h = json.loads(raw)["headers"]
        out.append(Msg(h["bench_pub_ms"], h.get("bench_due_ms"), h["id"]))
    client.close()
    out.sort(key=lambda m: m.pub_ms)
    return out


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    rows = list(rows)
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]

    def line(vals: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths, strict=True))) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(list(columns)), sep, *(line(r) for r in cells)])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def save(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def wait_until(t: float) -> None:
    while (d := t - time.time()) > 0:
        time.sleep(min(d, 0.5))
