"""Dispatch throughput and lateness, side by side: a bare `send_task` loop (the
ceiling for one Python publisher), Celery's PersistentScheduler, celery-redbeat,
and redbeat_safe with 1, 2 and 3 instances.

    python -m bench.throughput                      # the full run (~15 min)
    python -m bench.throughput --entries 1000 --window 5 --rows rs1,redbeat

N entries, each every 1 s, on a fresh store and broker `redis-server` per row;
the first --warmup seconds after the first message are excluded, then messages
landed in the broker are counted over --window seconds by their publish stamp
(see bench/benchapp.py). Writes bench/results/throughput.json and
docs/benchmarks-throughput.png.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, Servers, pct, queue_length, read_messages, save, start_beat, start_ceiling, table, wait_for

#: rows only the lateness runs use: entries on spread phases (as entries created at different times are)
SPREAD = {"rs1s": ("redbeat_safe", 1), "rs3s": ("redbeat_safe", 3)}
ROWS: dict[str, tuple[str, int]] = {  # row -> (scheduler, instances)
    "ceiling": ("ceiling", 1),
    "default": ("default", 1),
    "redbeat": ("redbeat", 1),
    "rs1": ("redbeat_safe", 1),
    "rs2": ("redbeat_safe", 2),
    "rs3": ("redbeat_safe", 3),
}
LABELS = {
    "ceiling": "bare send_task loop (1 process)",
    "default": "Celery PersistentScheduler",
    "redbeat": "celery-redbeat (lock timeout 300 s)",
    "rs1": "redbeat_safe, 1 instance",
    "rs2": "redbeat_safe, 2 instances",
    "rs3": "redbeat_safe, 3 instances",
    "rs1s": "redbeat_safe, 1 instance, phases spread",
    "rs3s": "redbeat_safe, 3 instances, phases spread",
}


def run_one(row: str, entries: int, warmup: float, window: float, workdir: Path, period: float = 1.0) -> dict[str, Any]:
    scheduler, instances = {**ROWS, **SPREAD}[row]
    workdir.mkdir(parents=True, exist_ok=True)
    with Servers(workdir) as servers:
        if scheduler == "ceiling":
            procs = [start_ceiling(servers, workdir, warmup + window + 30)]
        else:
            env = {"BENCH_ENTRIES": str(entries), "BENCH_PERIOD": str(period), "BENCH_SPREAD": "1" if row in SPREAD else ""}
            procs = [start_beat(servers, workdir, scheduler, f"{row}-{i}", env) for i in range(instances)]
        try:
            started = time.time()
            wait_for(lambda: queue_length(servers) > 0 or not all(p.alive() for p in procs), 300, what="the first message")
            first = time.time()
            time.sleep(warmup)
            cpu0, w0 = sum(p.cpu_seconds() for p in procs), time.time()
            time.sleep(window)
            cpu1, w1 = sum(p.cpu_seconds() for p in procs), time.time()
            alive = all(p.alive() for p in procs)
            crash = "" if alive else next(p.tail() for p in procs if not p.alive())
        finally:
            for p in procs:
                p.stop()
        msgs = read_messages(servers)
    inside = [m for m in msgs if w0 * 1000 <= m.pub_ms < w1 * 1000]
    late = [m.pub_ms - m.due_ms for m in inside if m.due_ms is not None]
    ids = [m.task_id for m in msgs]
    return {
        "row": row, "scheduler": LABELS[row], "entries": entries if scheduler != "ceiling" else None, "instances": instances,
        "offered_per_s": entries / period if scheduler != "ceiling" else None,
        "landed_per_s": len(inside) / (w1 - w0), "messages_in_window": len(inside), "startup_s": first - started,
        "late_p50_ms": pct(late, 50), "late_p99_ms": pct(late, 99), "late_max_ms": max(late, default=float("nan")),
        "cpu_s_per_1000": (cpu1 - cpu0) / max(1, len(inside)) * 1000, "duplicate_ids": len(ids) - len(set(ids)),
        "alive": alive, "crash": crash[-600:],
    }


COLUMNS = ["scheduler", "entries", "landed_per_s", "late_p50_ms", "late_p99_ms", "cpu_s_per_1000", "duplicate_ids", "alive"]


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ceiling = [r["landed_per_s"] for r in rows if r["row"] == "ceiling"]
    sizes = sorted({r["entries"] for r in rows if r["entries"]})
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / max(1, len([k for k in ROWS if k != "ceiling"]))
    for i, key in enumerate(k for k in ROWS if k != "ceiling"):
        ys = [next((r["landed_per_s"] for r in rows if r["row"] == key and r["entries"] == n), 0) for n in sizes]
        if any(ys):
            ax.bar([j + i * width for j in range(len(sizes))], ys, width, label=LABELS[key])
    if ceiling:
        ax.axhline(max(ceiling), color="black", linestyle="--", linewidth=1, label=f"bare send_task ceiling ({max(ceiling):,.0f}/s)")
    ax.set_xticks([j + width * 2.5 for j in range(len(sizes))], [f"{n:,} entries\n(offered {n:,}/s)" for n in sizes])
    ax.set_ylabel("messages landed per second")
    ax.set_title(f"Dispatch throughput, entries every 1 s ({platform.node()}, {_cores()} cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", default="1000,2000,5000,10000")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--warmup", type=float, default=6.0)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--light", type=int, default=100, help="entries for the light-load lateness run")
    p.add_argument("--no-lateness", action="store_true")
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.entries.split(",")]
    keys = [k for k in a.rows.split(",") if k]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if "ceiling" in keys:
            rows.append(run_one("ceiling", 0, a.warmup, a.window, Path(tmp) / "ceiling"))
            print(table(rows[-1:], COLUMNS), flush=True)
        for n in sizes:
            for key in keys:
                if key == "ceiling":
                    continue
                rows.append(run_one(key, n, a.warmup, a.window, Path(tmp) / f"{key}-{n}"))
                print(table(rows[-1:], COLUMNS), flush=True)
        print("\nThroughput\n" + table(rows, COLUMNS), flush=True)
        lateness: list[dict[str, Any]] = []
        if not a.no_lateness:
            for key in [k for k in ("rs1", "rs1s", "rs3", "rs3s", "default", "redbeat") if k.rstrip("s") in keys]:
                lateness.append({**run_one(key, a.light, a.warmup, a.window * 2, Path(tmp) / f"light-{key}"), "load": "light"})
                capacity = max((r["landed_per_s"] for r in rows if r["row"] == key.rstrip("s")), default=0)
                n80 = int(capacity * 0.8 / 100) * 100
                if n80 >= 100:
                    lateness.append({**run_one(key, n80, a.warmup, a.window * 2, Path(tmp) / f"l80-{key}"), "load": "80% of capacity"})
            print("\nLateness (publish time - due tick)\n" + table(lateness, ["scheduler", "load", "entries", "landed_per_s",
                  "late_p50_ms", "late_p99_ms", "late_max_ms", "duplicate_ids"]), flush=True)
    save("throughput", {"argv": argv, "host": platform.node(), "cores": _cores(), "throughput": rows, "lateness": lateness})
    chart(rows, ROOT / "docs" / "benchmarks-throughput.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
