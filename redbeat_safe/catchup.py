"""What to publish when an entry is claimed: the misfire (catch-up) policy.

All instants are Redis server milliseconds. A due tick no later than
``grace_ms`` behind "now" is *on time* (beat was merely asleep or busy) and is
always published; older ticks were *missed* (no instance was running) and the
policy decides:

* ``coalesce`` (default, Celery's behaviour): publish once, for the latest due tick;
* ``skip``: publish only the on-time ticks, drop the missed ones;
* ``all``: publish the missed ticks too, at most ``max_catchup`` of them (the latest).

``deadline_ms`` (Celery's ``beat_cron_starting_deadline``, patterns only)
drops every tick older than that before the policy applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .schedules import Schedule

#: Ticks of one entry published per claim; the rest stay due for the next round.
MAX_TICKS_PER_CLAIM = 100


@dataclass
class Plan:
    fire: list[int] = field(default_factory=list)  #: nominal ticks to publish, oldest first
    next: int | None = None  #: the entry's next tick; None ends the entry
    missed: bool = False  #: some due ticks were older than the grace window


def plan(
    schedule: Schedule,
    due_ms: int,
    now_ms: int,
    runs: int,
    *,
    policy: str,
    grace_ms: int,
    deadline_ms: int | None = None,
    max_catchup: int = 100,
) -> Plan:
    """Ticks to publish for an entry whose next tick ``due_ms`` is <= ``now_ms``."""
    remaining = None if schedule.limit is None else schedule.limit - runs
    if remaining is not None and remaining <= 0:
        return Plan()
    if schedule.end_ms is not None and due_ms > schedule.end_ms:
        return Plan()
    floor = due_ms
    if deadline_ms is not None and now_ms - deadline_ms > due_ms:
        floor = now_ms - deadline_ms
    first = schedule.at_or_after(due_ms, floor)
    if first is None:
        return Plan()
    on_time_from = now_ms - grace_ms
    missed = first <= now_ms and first < on_time_from

    if not missed or policy == "skip":
        start = schedule.at_or_after(due_ms, max(first, on_time_from))
        chosen = [] if start is None else schedule.ticks_from(start, now_ms, MAX_TICKS_PER_CLAIM + 1)
    elif policy == "all":
        on_time = schedule.latest_ticks(first, now_ms, MAX_TICKS_PER_CLAIM + 1)
        on_time = [t for t in on_time if t >= on_time_from]
        older = schedule.latest_ticks(first, min(now_ms, on_time_from - 1), max_catchup + 1)
        chosen = older[-max_catchup:] + on_time if max_catchup > 0 else on_time
    else:  # coalesce
        chosen = schedule.latest_ticks(first, now_ms, 1)

    if first > now_ms:
        chosen = []
    more = len(chosen) > MAX_TICKS_PER_CLAIM
    fire = chosen[:MAX_TICKS_PER_CLAIM]
    if remaining is not None and len(fire) >= remaining:
        return Plan(fire=fire[:remaining], next=None, missed=missed)
    if more:
        nxt: int | None = chosen[MAX_TICKS_PER_CLAIM]
    elif fire:
        nxt = schedule.next_after(fire[-1])
    else:
        nxt = schedule.at_or_after(due_ms, now_ms + 1)
    return Plan(fire=fire, next=nxt, missed=missed)
