"""The multi-beat demo: `scripts/demo` runs this after setting up the venv.

Starts a private redis-server (unless REDIS_URL is given), a real Celery worker
running the example tasks, and three `celery beat -S redbeat_safe.Scheduler`
instances. Over a timeline of --seconds it SIGKILLs one beat and later
restarts it, and changes the schedule live through `Schedules`: one entry is
added, one re-timed, one removed. Every publish and every execution is
journaled in Redis (see journal.py); at the end a table per entry says how
many ticks were due, sent and run, duplicates, misses and lateness.

    scripts/demo                      # 3 beats + 1 worker, 60 s
    scripts/demo --workers-beat       # 3 x `celery worker -B`, one killed
    scripts/demo --compare redbeat    # then the same timeline on celery-redbeat
    scripts/demo --seconds 20 --json out.json

Exit status: 0 when every run had no duplicate and no missed tick, 1 when a run
had any (with --compare redbeat, redbeat's failover gap makes that 1), 2 when
the demo itself could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from demo_procs import Proc, wait_until  # noqa: E402
from demo_report import Record, Row, Segment, exact_row, inferred_row, table, verdict  # noqa: E402
from demo_targets import Target, ensure_redbeat, make_app, target_for  # noqa: E402
from harness import RedisServer  # noqa: E402  (the test suite's private redis-server)
from redbeat_safe import every  # noqa: E402

#: Entries the driver manages through the scheduler's API: (task, seconds, kwargs).
RETIMED = ("api-retimed", "proj.report", 2.0, {"kind": "retimed"})
RETIME_TO = 1.0
REMOVED = ("api-removed", "proj.heartbeat", 1.0, {})
ADDED = ("api-added", "proj.report", 1.5, {"kind": "added"})
READY_TIMEOUT = 90.0


@dataclass
class Run:
    kind: str  #: redbeat_safe | redbeat
    workers_beat: bool
    seconds: float
    workdir: Path
    target: Target
    procs: dict[str, Proc] = field(default_factory=dict)
    segments: dict[str, list[Segment]] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)
    started: float = 0.0
    cutoff: int = 0
    rows: list[Row] = field(default_factory=list)

    @property
    def victim(self) -> str:
        return "worker-1" if self.workers_beat else "beat-1"

    @property
    def journal(self) -> str:
        return str(self.target.app.conf.journal_key)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def note(self, text: str) -> None:
        at = self.elapsed() if self.started else 0.0
        self.events.append((round(at, 1), text))
        progress.clear()
        print(f"  {at:+6.1f}s  {text}", flush=True)


class Progress:
    """A live status line on a terminal; a line every few seconds elsewhere."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.shown = False

    def show(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
            self.shown = True
        elif time.monotonic() - self.last >= 5:
            self.last = time.monotonic()
            print("  " + text, flush=True)

    def clear(self) -> None:
        if self.tty and self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.shown = False


progress = Progress()


# -- processes ------------------------------------------------------------------
def start_processes(run: Run, env: dict[str, str]) -> None:
    """One worker and three beats, or three workers with embedded beats; the first is the redbeat leader."""
    t = run.target
    worker = ["-A", "proj", "worker", "-P", "threads", "-c", "2", "-l", "INFO", "--without-gossip", "--without-mingle"]
    if run.workers_beat:
        for i in (1, 2, 3):
            name = f"worker-{i}"
            run.procs[name] = Proc(name, [*worker, "-n", f"{name}@%h", "-B", "--scheduler", t.scheduler,
                                          "-s", str(run.workdir / f"{name}-schedule")], env, run.workdir)
    else:
        run.procs["worker"] = Proc("worker", [*worker, "-n", "worker@%h"], env, run.workdir)
        for i in (1, 2, 3):
            name = f"beat-{i}"
            run.procs[name] = Proc(name, ["-A", "proj", "beat", "-S", t.scheduler, "-l", "INFO",
                                          "-s", str(run.workdir / f"{name}-schedule")], env, run.workdir)
    names = list(run.procs)
    if not run.workers_beat:
        run.procs["worker"].start()
    for i, name in enumerate(n for n in names if n != "worker"):
        run.procs[name].start()
        if i == 0:  # the first instance up is redbeat's leader: the one that will be killed
            await_ready(run, [name], leader=True)
    await_ready(run, names, leader=False)


def await_ready(run: Run, names: list[str], leader: bool) -> None:
    procs = [run.procs[n] for n in names]

    def ready() -> bool:
        for p in procs:
            out = p.output()
            if "worker" in p.name and " ready." not in out:
                return False
            if p.name != "worker" and not run.target.beat_ready(p, leader and p.name == names[0]):
                return False
        return True

    wait_until(ready, READY_TIMEOUT, f"{', '.join(names)} to be up", procs)


def instances_up(run: Run) -> int:
    return sum(1 for n, p in run.procs.items() if n != "worker" and p.alive())


# -- the timeline -----------------------------------------------------------------
def at_mid_phase(run: Run, name: str, interval_ms: int) -> int:
    """Sleep until halfway between two ticks of ``name``; return the Redis time then.

    A change made there cannot race a tick, so the expected ticks are exact.
    """
    t = run.target
    now = t.now_ms()
    target = t.next_tick(name) - interval_ms // 2
    while target < now + 100:
        target += interval_ms
    time.sleep((target - now) / 1000)
    return t.now_ms()


def add_entry(run: Run) -> None:
    name, task, seconds, kwargs = ADDED
    first = run.target.upsert(name, task, seconds, kwargs)
    run.segments[name] = [Segment(every(seconds=seconds), first)]
    run.note(f"added {name} ({task}, every {seconds:g}s)")


def retime_entry(run: Run) -> None:
    name, task, seconds, kwargs = RETIMED
    old = run.segments[name][-1]
    old.end = at_mid_phase(run, name, int(seconds * 1000))
    first = run.target.upsert(name, task, RETIME_TO, kwargs)
    run.segments[name].append(Segment(every(seconds=RETIME_TO), first))
    run.note(f"re-timed {name}: every {seconds:g}s -> every {RETIME_TO:g}s")


def remove_entry(run: Run) -> None:
    name, _, seconds, _ = REMOVED
    run.segments[name][-1].end = at_mid_phase(run, name, int(seconds * 1000))
    run.target.remove(name)
    run.note(f"removed {name}")


def kill_victim(run: Run) -> None:
    p = run.procs[run.victim]
    pid = p.pid
    p.kill()
    run.note(f"SIGKILL {run.victim} (pid {pid}{', the lock holder' if run.kind == 'redbeat' else ''})")


def restart_victim(run: Run) -> None:
    run.procs[run.victim].start()
    run.note(f"restarted {run.victim} (pid {run.procs[run.victim].pid})")


#: (fraction of the timeline, what, action)
TIMELINE: list[tuple[float, str, Callable[[Run], None]]] = [
    (0.25, "SIGKILL", kill_victim),
    (0.40, "add", add_entry),
    (0.50, "re-time", retime_entry),
    (0.60, "restart", restart_victim),
    (0.70, "remove", remove_entry),
]


def journal(run: Run, kind: str) -> list[Record]:
    return [Record.parse(r) for r in run.target.client.lrange(f"{run.journal}:{kind}", 0, -1)]


def account(run: Run) -> list[Row]:
    records = {kind: journal(run, kind) for kind in ("published", "executed", "repeated")}
    check = exact_row if run.target.exact else inferred_row
    rows = []
    for name, segs in run.segments.items():
        mine = {kind: [r for r in recs if r.entry == name] for kind, recs in records.items()}
        rows.append(check(name, segs, run.cutoff, mine["published"], mine["executed"], mine["repeated"]))
    return rows


def show_progress(run: Run, upcoming: str) -> None:
    c = run.target.client
    sent, done = c.llen(f"{run.journal}:published"), c.llen(f"{run.journal}:executed")
    kind = "workers -B" if run.workers_beat else "beats"
    progress.show(f"[{run.elapsed():5.1f}s / {run.seconds:g}s] {kind} up {instances_up(run)}/3 · published {sent} · executed {done} · next: {upcoming}")


def timeline(run: Run) -> None:
    t = run.target
    for name, schedule in t.statics().items():
        run.segments[name] = [Segment(schedule, t.next_tick(name))]
    for name, task, seconds, kwargs in (RETIMED, REMOVED):
        run.segments[name] = [Segment(every(seconds=seconds), t.upsert(name, task, seconds, kwargs))]
    run.started = time.monotonic()
    run.note(f"observing {len(run.segments)} entries for {run.seconds:g}s")
    pending = list(TIMELINE)
    while run.elapsed() < run.seconds:
        if pending and run.elapsed() >= pending[0][0] * run.seconds:
            pending.pop(0)[2](run)
            continue
        upcoming = f"{pending[0][1]} at {pending[0][0] * run.seconds:.0f}s" if pending else "end"
        show_progress(run, upcoming)
        time.sleep(0.25)
    run.cutoff = t.now_ms()
    run.note("end of the timeline; waiting for the last ticks to be run")
    deadline = time.monotonic() + t.drain
    while time.monotonic() < deadline:
        if t.exact and all(r.missed == 0 and r.lost == 0 for r in account(run)):
            break
        show_progress(run, "draining")
        time.sleep(0.5)


# -- one run ----------------------------------------------------------------------
def execute(kind: str, workers_beat: bool, seconds: float, url: str, root: Path) -> Run:
    run_id = f"{kind.replace('_', '')[:6]}{int(time.time() * 1000) % 10**8:08d}"
    workdir = root / run_id
    workdir.mkdir(parents=True)
    env = {"REDIS_URL": url, "DEMO_RUN": run_id, "DEMO_SCHEDULER": kind, "CELERY_CONFIG_MODULE": "democonfig"}
    run = Run(kind, workers_beat, seconds, workdir, target_for(kind, make_app(env)))
    shape = "3 x celery worker -B" if workers_beat else "1 worker + 3 x celery beat"
    print(f"\n== {run.target.label}: {shape}, {seconds:g}s timeline (logs in {workdir})", flush=True)
    try:
        start_processes(run, env)
        timeline(run)
    finally:
        progress.clear()
        for name, p in run.procs.items():
            if name != "worker":
                p.stop()
        if "worker" in run.procs:
            run.procs["worker"].stop()
        try:
            if run.cutoff:
                run.rows = account(run)
        finally:
            cleanup(run, run_id)
    return run


def cleanup(run: Run, run_id: str) -> None:
    """Delete this run's keys (a shared REDIS_URL keeps nothing of the demo)."""
    c = run.target.client
    for pattern in (f"*demo-{run_id}*",):
        keys = list(c.scan_iter(match=pattern, count=500))
        if keys:
            c.delete(*keys)
    run.target.close()


def what_happened(run: Run) -> str:
    kill = next((at for at, e in run.events if e.startswith("SIGKILL")), None)
    back = next((at for at, e in run.events if e.startswith("restarted")), None)
    return f"{run.victim} SIGKILLed at {kill:+.1f}s and restarted at {back:+.1f}s, 1 entry added, 1 re-timed, 1 removed live"


def report(run: Run) -> bool:
    print()
    print(table(run.rows))
    if not run.target.exact:
        print("(redbeat sends no nominal tick: its ticks are inferred from the spacing of its runs)")
    line = verdict(run.rows, what_happened(run))
    print(f"verdict ({run.target.label}): {line}", flush=True)
    return all(r.clean for r in run.rows)


def as_json(run: Run, ok: bool) -> dict[str, Any]:
    return {
        "scheduler": run.kind,
        "label": run.target.label,
        "workers_beat": run.workers_beat,
        "seconds": run.seconds,
        "ok": ok,
        "events": [{"at": at, "event": e} for at, e in run.events],
        "rows": [r.as_dict() for r in run.rows],
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="scripts/demo",
        description="Three beats (or three `celery worker -B`) and a worker on one Redis; one instance is SIGKILLed and\n"
                    "restarted while entries are added, re-timed and removed live; then a table counts every tick.",
        epilog="REDIS_URL=redis://... uses that Redis (keys under a per-run prefix, deleted at the end) instead of a\n"
               "private redis-server. Exit status: 0 clean, 1 a duplicate or missed tick in any run (with --compare\n"
               "redbeat, redbeat's failover gap makes that 1), 2 the demo could not run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the timeline (default 60, at least 12)")
    ap.add_argument("--workers-beat", action="store_true", help="three `celery worker -B` instead of one worker and three beats")
    ap.add_argument("--compare", choices=["redbeat"], help="then run the same timeline on celery-redbeat (installed on demand)")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument("--keep-logs", action="store_true", help="keep the process logs even when every run is clean")
    args = ap.parse_args(argv)
    if args.seconds < 12:
        ap.error("--seconds must be at least 12 (the timeline needs room for a kill and a restart)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    kinds = ["redbeat_safe"] + (["redbeat"] if args.compare else [])
    root = Path(tempfile.mkdtemp(prefix="redbeat-safe-demo-"))
    server = None
    results: list[tuple[Run, bool]] = []
    try:
        if args.compare:
            ensure_redbeat()
        url = os.environ.get("REDIS_URL")
        if not url:
            server = RedisServer(root / "redis", appendonly=False).start()
            url = server.url
            print(f"demo: private redis-server on port {server.port}", flush=True)
        for kind in kinds:
            run = execute(kind, args.workers_beat, args.seconds, url, root)
            results.append((run, report(run)))
    except (RuntimeError, OSError, AssertionError, redis.RedisError) as exc:
        progress.clear()
        print(f"demo: could not run: {exc}\n(logs kept in {root})", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    ok = all(good for _, good in results)
    if len(results) > 1:
        print("\nside by side (same timeline, same checks):")
        for run, good in results:
            miss, dup = sum(r.missed for r in run.rows), sum(r.duplicates for r in run.rows)
            print(f"  {run.target.label:24} {'clean' if good else 'NOT clean'}: {miss} missed, {dup} duplicates")
    if args.json:
        args.json.write_text(json.dumps({"ok": ok, "runs": [as_json(r, g) for r, g in results]}, indent=2))
    if ok and not args.keep_logs:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"\nlogs: {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
