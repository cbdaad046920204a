"""Checks over the full history of dispatched messages: (entry, nominal tick, task id)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from harness import Message
from redbeat_safe.dispatch import task_id_for
from redbeat_safe.schedules import Schedule


@dataclass
class Report:
    entry: str
    ticks: list[int]
    same_id_repeats: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)


def check(messages: list[Message], prefix: str, schedules: dict[str, Schedule]) -> dict[str, Report]:
    """Assert the invariants that hold in every test, return per-entry reports.

    * a (entry, tick) pair is only ever sent with one task id, the derived one;
    * the headers name the entry and the tick;
    * consecutive ticks of an entry are consecutive ticks of its schedule.
    """
    reports: dict[str, Report] = {}
    ids: dict[tuple[str, int], str] = {}
    for m in messages:
        assert isinstance(m.entry, str) and isinstance(m.tick, int), m.headers
        key = (m.entry, m.tick)
        assert ids.setdefault(key, m.task_id) == m.task_id, f"{key} sent with two task ids"
        assert m.task_id == task_id_for(prefix, m.entry, m.tick)
    counts = Counter((m.entry, m.tick) for m in messages)
    for name, sched in schedules.items():
        ticks = sorted({m.tick for m in messages if m.entry == name})
        rep = Report(name, ticks, same_id_repeats=sum(c - 1 for (e, _), c in counts.items() if e == name))
        for a, b in zip(ticks, ticks[1:], strict=False):
            if sched.next_after(a) != b:
                rep.gaps.append((a, b))
        reports[name] = rep
    return reports


def assert_exactly_once(reports: dict[str, Report], min_ticks: int = 1) -> None:
    for rep in reports.values():
        assert rep.same_id_repeats == 0, f"{rep.entry}: {rep.same_id_repeats} ticks published twice"
        assert not rep.gaps, f"{rep.entry}: missed ticks between {rep.gaps}"
        assert len(rep.ticks) >= min_ticks, f"{rep.entry}: only {len(rep.ticks)} ticks"
