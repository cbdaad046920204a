"""python -m chaos --minutes 10 --seed 7   (run with tests/ on PYTHONPATH; scripts/chaos does that)"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from .run import Config, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="chaos", description=__doc__)
    parser.add_argument("--minutes", type=float, default=None, help="length of the run (default 1.5)")
    parser.add_argument("--seconds", type=float, default=None, help="length of the run, in seconds")
    parser.add_argument("--seed", type=int, default=1, help="draws the fault schedule")
    parser.add_argument("--beats", type=int, default=3)
    parser.add_argument("--lease", type=float, default=5.0, help="redbeat_safe_lease of the beats")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else (args.minutes or 1.5) * 60
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        verdict = run(Config(seconds=seconds, seed=args.seed, beats=args.beats, lease=args.lease), Path(tmp))
    print()
    print(verdict.table())
    if args.json:
        args.json.write_text(json.dumps({"figures": verdict.figures, "faults": dict(verdict.faults),
                                         "violations": verdict.violations}, indent=2))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
