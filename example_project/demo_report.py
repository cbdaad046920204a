"""The demo's accounting: which ticks were due, which were sent and run, and the table.

Expected ticks come from the schedule objects and the instants of the live
changes, never from what was observed: each entry is a list of *segments*
(a schedule, the first tick the store reported for it, and the instant it was
changed or removed). A changed interval restarts its phase at the change (see
``redbeat_safe.registry``), so its new segment starts at the next tick the
store reports right after the change.

redbeat_safe messages carry their nominal tick, so the check is exact. A
scheduler whose messages carry none (celery-redbeat) is judged from the spacing
of its runs: a run closer than half an interval to the previous one is a
duplicate, every tick of the schedule without a run is missed, and a run's
lateness is measured from the previous run plus the interval.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from redbeat_safe.schedules import Schedule, every


@dataclass
class Segment:
    schedule: Schedule
    first: int  #: first expected tick (ms, Redis clock)
    end: int | None = None  #: changed or removed at this instant (exclusive)

    def ticks(self, cutoff: int) -> list[int]:
        stop = cutoff if self.end is None else min(cutoff, self.end - 1)
        out: list[int] = []
        t: int | None = self.first
        while t is not None and t <= stop:
            out.append(t)
            t = self.schedule.next_after(t)
        return out


@dataclass
class Record:
    entry: str
    tick: int | None  #: nominal tick from the headers, None when the scheduler sends none
    id: str
    t: int  #: Redis server time of the publish or the execution (ms)
    pid: int = 0

    @classmethod
    def parse(cls, raw: bytes | str) -> Record:
        d: dict[str, Any] = json.loads(raw)
        tick = d.get("tick")
        return cls(str(d["entry"]), None if tick is None else int(tick), str(d.get("id")), int(d["t"]), int(d.get("pid", 0)))


@dataclass
class Row:
    entry: str
    schedule: str
    expected: int
    dispatched: int = 0  #: messages published for expected ticks
    executed: int = 0  #: expected ticks run at least once
    duplicates: int = 0  #: one tick sent under more than one task id, or run more than once
    resent: int = 0  #: the same tick sent again with the same task id (skipped by the task)
    missed: int = 0  #: expected ticks never sent
    lost: int = 0  #: sent but never run (a killed worker held the message)
    unexpected: int = 0  #: sent for a tick the schedule does not have
    late_p50: float | None = None  #: ms, executed - nominal tick
    late_p99: float | None = None
    inferred: bool = False  #: ticks inferred from spacing (no tick header)
    lateness: list[int] = field(default_factory=list, repr=False)

    @property
    def clean(self) -> bool:
        return self.duplicates == 0 and self.missed == 0 and self.unexpected == 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("lateness")
        return d


def percentile(values: list[int], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q * len(ordered))))
    return float(ordered[rank - 1])


def _short(schedule: Schedule) -> str:
    if isinstance(schedule, every):
        return f"every {schedule.interval_ms / 1000:g}s"
    return f"cron {schedule.to_json().get('expr')}"


def describe(segments: list[Segment]) -> str:
    text = " → ".join(_short(s.schedule) for s in segments)
    return text + (" → removed" if segments[-1].end is not None else "")


def _finish(row: Row) -> Row:
    row.late_p50 = percentile(row.lateness, 0.50)
    row.late_p99 = percentile(row.lateness, 0.99)
    return row


def exact_row(entry: str, segments: list[Segment], cutoff: int, published: list[Record], executed: list[Record],
              repeated: list[Record]) -> Row:
    """Account one entry whose messages name their nominal tick.

    ``executed`` holds first deliveries of a task id, ``repeated`` the deliveries
    the task skipped because it had seen that task id already.
    """
    expected = sorted({t for s in segments for t in s.ticks(cutoff)})
    row = Row(entry, describe(segments), len(expected))
    wanted = set(expected)
    start = segments[0].first

    def seen(records: list[Record]) -> list[tuple[int, Record]]:
        return [(r.tick, r) for r in records if r.tick is not None and start <= r.tick <= cutoff]

    sent: dict[int, Counter[str]] = {}  # tick -> task id -> messages
    for t, r in seen(published):
        sent.setdefault(t, Counter())[r.id] += 1
    runs: dict[int, list[Record]] = {}
    for t, r in seen(executed):
        runs.setdefault(t, []).append(r)
    again = Counter(t for t, _ in seen(repeated))
    row.unexpected = len((set(sent) | set(runs)) - wanted)
    row.dispatched = sum(sum(c.values()) for t, c in sent.items() if t in wanted)
    row.executed = sum(1 for t in runs if t in wanted)
    for t in expected:
        ids = set(sent.get(t, ())) | {r.id for r in runs.get(t, ())}
        row.duplicates += max(0, len(ids) - 1)  # one tick under two task ids: a real duplicate
        same = max((n - 1 for n in sent.get(t, Counter()).values()), default=0)
        row.resent += max(same, again.get(t, 0))
        row.missed += t not in sent and t not in runs
        row.lost += t in sent and t not in runs
    row.lateness = [min(r.t for r in runs[t]) - t for t in expected if t in runs]
    return _finish(row)


def _accept(times: list[int], interval: int) -> tuple[list[int], int]:
    """Runs kept (oldest first) and duplicates: a run within half an interval of the last kept one."""
    kept: list[int] = []
    dups = 0
    for t in sorted(times):
        if kept and t - kept[-1] < interval / 2:
            dups += 1
        else:
            kept.append(t)
    return kept, dups


def inferred_row(entry: str, segments: list[Segment], cutoff: int, published: list[Record], executed: list[Record],
                 repeated: list[Record]) -> Row:
    """Account one entry whose messages carry no tick: infer ticks from the spacing of runs."""
    row = Row(entry, describe(segments), 0, inferred=True)
    for i, seg in enumerate(segments):
        if not isinstance(seg.schedule, every):
            raise ValueError(f"{entry}: spacing can only be judged for fixed intervals")
        interval = seg.schedule.interval_ms
        lo = seg.first - interval // 2
        nxt = segments[i + 1] if i + 1 < len(segments) else None
        if nxt is not None and isinstance(nxt.schedule, every):
            hi = nxt.first - nxt.schedule.interval_ms // 2
        else:
            hi = (seg.end if seg.end is not None else cutoff) + interval // 2
        expected = len(seg.ticks(cutoff))
        row.expected += expected
        runs, dups = _accept([r.t for r in executed if lo <= r.t < hi], interval)
        sent, sent_dups = _accept([r.t for r in published if lo <= r.t < hi], interval)
        row.duplicates += max(dups, sent_dups)
        row.dispatched += len(sent)
        row.executed += min(len(runs), expected)
        row.unexpected += max(0, len(runs) - expected)
        row.missed += max(0, expected - max(len(runs), len(sent)))
        row.lost += max(0, len(sent) - len(runs))
        row.resent += sum(1 for r in repeated if lo <= r.t < hi)
        nominal = seg.first
        for t in runs:
            row.lateness.append(t - nominal)
            nominal = t + interval
    return _finish(row)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f} s" if abs(value) >= 10_000 else f"{value:.0f} ms"


COLUMNS = ("entry", "schedule", "expected", "dispatched", "executed", "duplicates", "re-sent", "missed", "late p50", "late p99")
RESENT_NOTE = ("re-sent: published again with the same task id because an instance died between publishing and recording\n"
               "the publish (the documented crash window); the task skipped the repeat by its task id.")


def _cells(r: Row) -> list[str]:
    counts = (r.expected, r.dispatched, r.executed, r.duplicates, r.resent, r.missed)
    return [r.entry, r.schedule, *(str(n) for n in counts), _ms(r.late_p50), _ms(r.late_p99)]


def table(rows: list[Row]) -> str:
    """The per-entry table, plain text, aligned."""
    cells = [list(COLUMNS)]
    for r in rows:
        cells.append(_cells(r))
    total = Row("total", "", *(sum(getattr(r, f) for r in rows) for f in ("expected", "dispatched", "executed", "duplicates", "resent", "missed")))
    total.lateness = [x for r in rows for x in r.lateness]
    cells.append(_cells(_finish(total)))
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    left = {0, 1}

    def line(c: list[str]) -> str:
        return "  ".join(v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(cells[0]), rule, *(line(c) for c in cells[1:-1]), rule, line(cells[-1])]
    if total.resent:
        lines.append(RESENT_NOTE)
    return "\n".join(lines)


def verdict(rows: list[Row], what: str) -> str:
    """One line: clean, or what went wrong."""
    expected = sum(r.expected for r in rows)
    dups, missed = sum(r.duplicates for r in rows), sum(r.missed for r in rows)
    unexpected, lost, resent = sum(r.unexpected for r in rows), sum(r.lost for r in rows), sum(r.resent for r in rows)
    notes = []
    if resent:
        notes.append(f"{resent} re-sent with the same task id and skipped by the task")
    if lost:
        notes.append(f"{lost} sent but never run: a killed worker held them, the broker's business, not the scheduler's")
    tail = f" ({'; '.join(notes)})" if notes else ""
    if dups == missed == unexpected == 0:
        return f"OK: all {expected} expected ticks dispatched once and run once, with {what}{tail}."
    problems = [f"{n} {label}" for n, label in ((dups, "duplicate"), (missed, "missed"), (unexpected, "unexpected")) if n]
    return f"FAIL: {', '.join(problems)} of {expected} expected ticks, with {what}{tail}."
