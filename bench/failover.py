"""Measure a Sentinel failover under two real beats; prints one row per run.

    python -m bench.failover                      # kill and lag, with and without WAIT
    python -m bench.failover --scenario kill --wait 0 --repeat 3 --json

Starts its own primary, replica, three sentinels, a broker Redis and two
`celery beat` processes on free ports in a temp dir, and stops them all.
See tests/failover.py for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from failover import Figures, run  # noqa: E402

COLUMNS = [
    ("scenario", "scenario"), ("wait_replicas", "wait"), ("replicas", "replicas"), ("lease_s", "lease"), ("down_after_s", "down-after"), ("catchup", "catchup"), ("entries", "entries"),
    ("published", "published"), ("failover_s", "failover s"), ("resume_s", "resume s"), ("max_late_s", "max late s"),
    ("same_id_repeats", "same-id repeats"), ("new_id_duplicates", "new-id dups"), ("missed", "missed"),
    ("outage_lines", "outage lines"), ("held_lines", "held lines"), ("crashed", "crashed"),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=["kill", "lag", "both"], default="both")
    p.add_argument("--wait", choices=["0", "1", "both"], default="both", help="redbeat_safe_wait_replicas")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--lease", type=float, default=10.0)
    p.add_argument("--entries", type=int, default=10, help="entries, each every 1 s")
    p.add_argument("--lag", type=float, default=2.0, help="seconds the replication link is cut before the kill (lag)")
    p.add_argument("--after", type=float, default=15.0)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--catchup", choices=["coalesce", "skip", "all"], default="coalesce")
    p.add_argument("--down-after", type=float, default=1.0, help="sentinel down-after-milliseconds, in seconds")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    scenarios = ["kill", "lag"] if a.scenario == "both" else [a.scenario]
    waits = [0, 1] if a.wait == "both" else [int(a.wait)]
    rows: list[Figures] = []
    print(" | ".join(title for _, title in COLUMNS), flush=True)
    for scenario in scenarios:
        for wait in waits:
            for _ in range(a.repeat):
                with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
                    fig = run(Path(tmp), scenario=scenario, wait_replicas=wait, lease=a.lease, entries=a.entries, lag=a.lag, after=a.after,
                              replicas=a.replicas, down_after_ms=int(a.down_after * 1000),
                              catchup=a.catchup)
                rows.append(fig)
                row = fig.as_row()
                print(" | ".join(str(row[k]) for k, _ in COLUMNS) + (f"   {'; '.join(fig.notes)}" if fig.notes else ""), flush=True)
    if a.json:
        print(json.dumps([r.as_row() for r in rows], indent=1))
    bad = [r for r in rows if r.new_id_duplicates or r.crashed]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
