"""Planning cost of one entry whose due tick is long past: the search that finds
the latest ticks before now, beside the forward walk it replaced (issue 12).

    python -m bench.planning        (~3 min, nearly all of it the old walk; writes bench/results/planning.json)

Pure computation, no Redis: ``Schedule.latest_ticks`` is what every beat runs
for such an entry (the ``coalesce`` policy wants 1 tick, ``all`` up to
``catchup_max`` = 100), and every beat runs it for the same entry at once. Per
row: tick computations (``next_after`` calls) and milliseconds, old and new,
with the results checked equal. (``every`` schedules find them by arithmetic,
unchanged, so they are not here.)
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from typing import Any

from bench.common import save, table
from redbeat_safe import pattern
from redbeat_safe.schedules import Schedule

UTC = timezone.utc


class Counting:
    """Wraps a schedule's ``next_after`` to count the calls."""

    def __init__(self, schedule: Schedule) -> None:
        self.calls = 0
        self.schedule = schedule
        original = schedule.next_after

        def counted(tick_ms: int) -> int | None:
            self.calls += 1
            return original(tick_ms)

        schedule.next_after = counted  # type: ignore[method-assign]


def walk(schedule: Schedule, tick_ms: int, upto_ms: int, count: int) -> list[int]:
    """The old algorithm: windows growing back from ``upto_ms``, each walked forward."""
    window = 2000
    while True:
        low = max(tick_ms, upto_ms - window)
        current = schedule.at_or_after(tick_ms, low)
        found: list[int] = []
        while current is not None and current <= upto_ms:
            found.append(current)
            if len(found) > count:
                del found[0]
            current = schedule.next_after(current)
        if len(found) >= count or low == tick_ms:
            return found
        window *= 4


def ms(d: datetime) -> int:
    return int(d.timestamp() * 1000)


CASES: list[tuple[str, Any, int, int]] = [
    # (what, schedule factory, due tick, now)
    ("every second of January, due 1 Jan, planned 15 Dec", lambda: pattern("* * * * 1 *", tz="UTC"),
     ms(datetime(2026, 1, 1, tzinfo=UTC)), ms(datetime(2026, 12, 15, tzinfo=UTC))),
    ("every second, 1 h outage", lambda: pattern("* * * * * *", tz="UTC"),
     ms(datetime(2026, 6, 1, tzinfo=UTC)), ms(datetime(2026, 6, 1, 1, tzinfo=UTC))),
    ("02:30 daily in Berlin, 30-day outage over DST", lambda: pattern("30 2 * * *", tz="Europe/Berlin"),
     ms(datetime(2026, 3, 10, 1, 30, tzinfo=UTC)), ms(datetime(2026, 4, 9, tzinfo=UTC))),
    ("every 5 min, due now (the common case)", lambda: pattern("*/5 * * * *", tz="UTC"),
     ms(datetime(2026, 6, 1, tzinfo=UTC)), ms(datetime(2026, 6, 1, 0, 0, 0, 500, tzinfo=UTC))),
]


def measure(count: int) -> list[dict[str, Any]]:
    rows = []
    for what, make, due, now in CASES:
        row: dict[str, Any] = {"case": what, "ticks wanted": count}
        results = {}
        for name in ("new", "old"):
            schedule = make()
            counter = Counting(schedule)
            t0 = time.perf_counter()
            results[name] = schedule.latest_ticks(due, now, count) if name == "new" else walk(schedule, due, now, count)
            row[f"{name} calls"] = counter.calls
            row[f"{name} ms"] = round((time.perf_counter() - t0) * 1000, 2)
        assert results["new"] == results["old"], what
        row["old/new time"] = round(row["old ms"] / max(row["new ms"], 0.001), 1)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,100", help="ticks wanted per search (coalesce: 1, all: catchup_max)")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for count in (int(c) for c in args.counts.split(",")):
        rows.extend(measure(count))
    print(table(rows, ["case", "ticks wanted", "old calls", "old ms", "new calls", "new ms", "old/new time"]))
    print(f"saved {save('planning', rows)}")


if __name__ == "__main__":
    main()
