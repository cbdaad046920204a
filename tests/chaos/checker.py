"""The offline check of a chaos run: the whole history of dispatched messages against
the guarantees, with every repeat matched to a fault that explains it."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from redbeat_safe.dispatch import task_id_for
from redbeat_safe.schedules import Schedule


@dataclass
class Record:
    entry: str
    tick: int
    task_id: str
    arrived_ms: int
    instance: str = "?"


@dataclass
class Fault:
    kind: str
    start_ms: int
    end_ms: int
    target: str = ""


@dataclass
class TriggerCall:
    """One operator request to trigger an entry, retried with its request id until it returned."""

    request_id: str
    started_ms: int
    task_id: str | None = None  #: what it returned; None if the run ended first
    returned_ms: int | None = None
    errors: list[str] = field(default_factory=list)  #: what the caller saw before it returned


@dataclass
class Verdict:
    figures: dict[str, int | str] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def table(self) -> str:
        rows = [("faults injected", "")] + [(f"  {k}", str(v)) for k, v in sorted(self.faults.items())]
        rows += [(k, str(v)) for k, v in self.figures.items()]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
        lines.append("verdict: " + ("OK" if self.ok else f"FAIL ({len(self.violations)} violations)"))
        lines += [f"  - {v}" for v in self.violations[:20]]
        return "\n".join(lines)


def check(
    records: list[Record],
    prefix: str,
    static: dict[str, tuple[Schedule, int]],
    faults: list[Fault],
    end_ms: int,
    lease_ms: int,
    loop_ms: int,
    final_state: dict[str, tuple[bool, int | None]],
    slack_ms: int = 3000,
    triggers: list[TriggerCall] | None = None,
    triggered: str = "",
    replies_lost: int = 0,
) -> Verdict:
    """``static``: name -> (schedule, first tick); ``final_state``: name -> (enabled and not done, next tick);
    ``triggers``: the operator's trigger requests of entry ``triggered``, whose every message is a trigger."""
    v = Verdict(faults=Counter(f.kind for f in faults))
    bound = lease_ms + loop_ms + slack_ms
    by_key: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for r in records:
        by_key[(r.entry, r.tick)].append(r)

    new_id = same_id = unexplained = 0
    for (entry, tick), rs in by_key.items():
        if any(r.task_id != task_id_for(prefix, entry, tick) for r in rs) or len({r.task_id for r in rs}) > 1:
            new_id += 1
            v.violations.append(f"{entry} tick {tick}: published under another task id")
        for r in sorted(rs, key=lambda r: r.arrived_ms)[1:]:
            same_id += 1
            if not any(f.start_ms - 1000 <= r.arrived_ms <= f.end_ms + bound for f in faults):
                unexplained += 1
                v.violations.append(f"{entry} tick {tick}: published again at {r.arrived_ms} with no fault to explain it")

    expected = missed = 0
    late_max = 0
    for name, (sched, first) in static.items():
        got = {t for (e, t) in by_key if e == name}
        tick: int | None = first
        while tick is not None and tick <= end_ms - bound:
            expected += 1
            if tick not in got:
                missed += 1
                v.violations.append(f"{name} tick {tick} was never published")
            tick = sched.next_after(tick)
    for (entry, tick), rs in by_key.items():
        late = min(r.arrived_ms for r in rs) - tick
        late_max = max(late_max, late)
        if entry in static and late > bound:
            v.violations.append(f"{entry} tick {tick} published {late} ms late (bound {bound} ms)")

    stalled = 0
    for name, (active, nxt) in final_state.items():
        if active and (nxt is None or nxt < end_ms - lease_ms - loop_ms):
            stalled += 1
            v.violations.append(f"{name} is enabled but stalled (next tick {nxt})")

    calls = triggers or []
    runs = {r.task_id for r in records if r.entry == triggered}
    returned = [c for c in calls if c.task_id is not None]
    for c in returned:
        if c.task_id not in runs:
            v.violations.append(f"trigger request {c.request_id} returned {c.task_id}, which never ran")
    twice = [c for c in returned if sum(1 for d in returned if d.task_id == c.task_id) > 1]
    for c in twice:
        v.violations.append(f"trigger request {c.request_id} returned the id of another request")
    unreturned = len(calls) - len(returned)
    strays = runs - {c.task_id for c in returned}
    if len(strays) > unreturned:  # a run nobody asked for, or one request that ran twice under two ids
        v.violations.append(f"{len(strays)} triggered runs match no returned request (only {unreturned} did not return)")

    v.figures.update({
        "entries checked (static)": len(static),
        "ticks expected (static)": expected,
        "messages published": len(records),
        "instances that published": len({r.instance for r in records}),
        "distinct (entry, tick)": len(by_key),
        "repeats, same task id": f"{same_id} ({same_id - unexplained} explained by a fault)",
        "duplicates, new task id": new_id,
        "missed ticks": missed,
        "stalled entries": stalled,
        "max lateness (ms)": late_max,
        "lateness bound (ms)": bound,
        "script replies lost (all proxies)": replies_lost,
        "trigger requests (returned)": f"{len(calls)} ({len(returned)})",
        "trigger requests retried by the caller": sum(1 for c in calls if c.errors),
        "triggered runs": len(runs),
    })
    return v
