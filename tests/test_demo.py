"""The README's demo, in a short mode, and the accounting it prints its verdict from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import ROOT

sys.path.insert(0, str(ROOT / "example_project"))

from demo_report import Record, Segment, exact_row, inferred_row, percentile, table, verdict  # noqa: E402
from redbeat_safe import every  # noqa: E402

ENTRIES = {"heartbeat-1s", "report-2s", "cron-3s", "api-retimed", "api-removed", "api-added"}


@pytest.mark.timeout(240)
@pytest.mark.slow
def test_the_demo_is_clean_with_a_beat_killed_restarted_and_the_schedule_changed(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # the demo starts its own redis-server
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "example_project" / "demo.py"), "--seconds", "20", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=200, stdin=subprocess.DEVNULL,
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (run,) = json.loads(out.read_text())["runs"]
    events = [e["event"] for e in run["events"]]
    assert any(e.startswith("SIGKILL beat-1") for e in events), events
    assert any(e.startswith("restarted beat-1") for e in events), events
    assert [e.split()[0] for e in events if e.split()[0] in ("added", "re-timed", "removed")] == ["added", "re-timed", "removed"]
    rows = {r["entry"]: r for r in run["rows"]}
    assert set(rows) == ENTRIES
    for r in rows.values():
        assert r["duplicates"] == 0 and r["missed"] == 0 and r["unexpected"] == 0, r
        assert r["expected"] >= 3 and r["executed"] == r["expected"], r
    assert rows["api-retimed"]["schedule"] == "every 2s → every 1s"
    assert rows["api-removed"]["schedule"].endswith("→ removed")
    total = next(line for line in proc.stdout.splitlines() if line.startswith("total"))
    assert total.split()[4:7] == ["0", "0", "0"], total  # duplicates, re-sent, missed
    assert "verdict (redbeat_safe): OK" in proc.stdout
    print(f"demo: {took:.1f}s, {sum(r['expected'] for r in rows.values())} ticks")


# -- the accounting, on made-up journals ------------------------------------------
T0 = 1_800_000_000_000


def rec(tick: int | None, t: int, task_id: str | None = None, entry: str = "e") -> Record:
    return Record(entry, tick, task_id or f"id-{tick}", t)


def test_expected_ticks_follow_the_segments_and_stop_at_a_change() -> None:
    segs = [Segment(every(2), T0, end=T0 + 5000), Segment(every(1), T0 + 5500)]
    assert segs[0].ticks(T0 + 60_000) == [T0, T0 + 2000, T0 + 4000]
    assert segs[1].ticks(T0 + 8000) == [T0 + 5500, T0 + 6500, T0 + 7500]


def test_exact_accounting_tells_clean_missed_duplicate_resent_and_unexpected() -> None:
    segs = [Segment(every(1), T0)]
    ticks = [T0 + i * 1000 for i in range(5)]
    cutoff = ticks[-1]
    clean = exact_row("e", segs, cutoff, [rec(t, t + 2) for t in ticks], [rec(t, t + 5) for t in ticks], [])
    assert (clean.expected, clean.dispatched, clean.executed, clean.duplicates, clean.missed) == (5, 5, 5, 0, 0)
    assert clean.clean and clean.late_p50 == 5

    gappy = exact_row("e", segs, cutoff, [rec(t, t) for t in ticks if t != ticks[2]], [rec(t, t) for t in ticks if t != ticks[2]], [])
    assert gappy.missed == 1 and not gappy.clean

    twice = exact_row("e", segs, cutoff, [rec(t, t) for t in ticks] + [rec(ticks[1], ticks[1], "other-id")], [rec(t, t) for t in ticks], [])
    assert twice.duplicates == 1 and not twice.clean

    resent = exact_row("e", segs, cutoff, [rec(t, t) for t in ticks] + [rec(ticks[3], ticks[3] + 10_000)], [rec(t, t) for t in ticks],
                       [rec(ticks[3], ticks[3] + 10_000)])
    assert resent.resent == 1 and resent.duplicates == 0 and resent.clean

    odd = exact_row("e", segs, cutoff, [rec(t, t) for t in ticks] + [rec(T0 + 1500, T0 + 1500)], [rec(t, t) for t in ticks], [])
    assert odd.unexpected == 1 and not odd.clean

    lost = exact_row("e", segs, cutoff, [rec(t, t) for t in ticks], [rec(t, t) for t in ticks[:-1]], [])
    assert lost.lost == 1 and lost.missed == 0 and lost.clean


def test_inferred_accounting_finds_a_failover_gap_and_a_double_run() -> None:
    segs = [Segment(every(1), T0)]
    cutoff = T0 + 19_000
    runs = [T0 + i * 1000 + 7 for i in range(5)] + [T0 + 12_300 + i * 1000 for i in range(7)]  # nothing from 5 s to 12.3 s
    row = inferred_row("e", segs, cutoff, [rec(None, t) for t in runs], [rec(None, t) for t in runs], [])
    assert (row.expected, row.executed, row.missed, row.duplicates) == (20, 12, 8, 0)
    assert row.late_p99 is not None and row.late_p99 > 7000  # the first run after the gap
    doubled = inferred_row("e", segs, T0 + 4000, [], [rec(None, t) for t in [T0, T0 + 1000, T0 + 1100, T0 + 2000, T0 + 3000, T0 + 4000]], [])
    assert doubled.duplicates == 1 and doubled.missed == 0


def test_table_and_verdict_show_the_totals() -> None:
    segs = [Segment(every(1), T0)]
    ticks = [T0 + i * 1000 for i in range(3)]
    rows = [exact_row("e", segs, ticks[-1], [rec(t, t) for t in ticks], [rec(t, t + 3) for t in ticks], [])]
    text = table(rows)
    assert text.splitlines()[0].split()[:3] == ["entry", "schedule", "expected"]
    assert text.splitlines()[-1].split()[:7] == ["total", "3", "3", "3", "0", "0", "0"]
    assert verdict(rows, "nothing").startswith("OK: all 3 expected ticks")
    assert percentile([5, 1, 9, 3], 0.5) == 3 and percentile([], 0.5) is None
