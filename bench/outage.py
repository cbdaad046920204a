"""A beat loses its store Redis for 30 s (by default) and gets it back; prints one row per run.

    python -m bench.outage                          # stop and freeze, coalesce, 30 s
    python -m bench.outage --mode freeze --catchup all --seconds 30

Starts its own store and broker Redis and one `celery beat` on free ports in a
temp dir, and stops them all. See tests/outage.py for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from outage import run  # noqa: E402

COLUMNS = ["mode", "outage_s", "lease_s", "catchup", "alive", "exit_code", "outage_lines", "recovered_lines", "tracebacks",
           "resume_s", "gap_ticks", "late_ticks", "same_id_repeats", "missed_outside"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["stop", "freeze", "both"], default="both")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--lease", type=float, default=10.0)
    p.add_argument("--catchup", choices=["coalesce", "skip", "all"], default="coalesce")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    rows = []
    print(" | ".join(COLUMNS), flush=True)
    for mode in ["stop", "freeze"] if a.mode == "both" else [a.mode]:
        with tempfile.TemporaryDirectory(prefix="outage-") as tmp:
            fig = run(Path(tmp), mode=mode, outage=a.seconds, lease=a.lease, catchup=a.catchup)
        row = fig.as_row()
        rows.append(row)
        print(" | ".join(str(row[c]) for c in COLUMNS), flush=True)
    if a.json:
        print(json.dumps(rows, indent=1))
    ok = all(r["alive"] and r["exit_code"] == 0 and r["outage_lines"] == 1 and not r["tracebacks"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
