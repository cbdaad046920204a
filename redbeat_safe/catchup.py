"""What to publish when an entry is claimed: the misfire (catch-up) model.

One model, written once in docs/guarantees.md ("Misfire (catch-up)
policies") and implemented here. All instants are Redis server milliseconds.

* A due tick no older than ``grace_ms`` behind "now" is **on time** (beat was
  asleep, busy, or took over a dead instance's lease) and is **always
  published**, whatever the policy.
* Older due ticks were **missed** (no instance ran). The policy decides:

  - ``coalesce`` (default, Celery's behaviour): they collapse into one run.
    When on-time ticks run anyway, that is them; when none is due, the
    latest missed tick is published once;
  - ``skip``: none of them is published;
  - ``all``: they are published too, oldest first, at most ``max_catchup``
    of them (the latest); older ones are dropped.

* ``deadline_ms`` (Celery's ``beat_cron_starting_deadline``, patterns only)
  first drops every due tick older than the deadline.
* ``limit`` and ``end`` stop the entry even in the middle of a catch-up.

A claim publishes at most ``MAX_TICKS_PER_CLAIM`` ticks; the entry's next tick
is then the first one not yet published, and the beat claims again at once.
``Plan.dropped`` counts the missed ticks the policy or deadline did not
publish, so that the engine can say so in its log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .schedules import Schedule, every

#: Ticks of one entry published per claim; the rest stay due for the next round.
MAX_TICKS_PER_CLAIM = 100
#: Counting missed ticks stops here for cron patterns (each costs a cron step;
#: ``every`` counts by arithmetic): the log then says "more than".
COUNT_CAP = 50


@dataclass
class Plan:
    fire: list[int] = field(default_factory=list)  #: nominal ticks to publish, oldest first
    next: int | None = None  #: the entry's next tick; None ends the entry
    missed: int = 0  #: due ticks older than the grace (no instance ran)
    kept: int = 0  #: missed ticks published all the same (policy all, coalesce)
    counted_all: bool = True  #: False: there were more missed ticks than ``missed`` says (counting stopped)
    dropped_from: int | None = None  #: the oldest tick dropped
    dropped_to: int | None = None  #: the newest tick dropped

    @property
    def dropped(self) -> int:
        """Missed ticks not published (policy, deadline); a lower bound unless ``counted_all``."""
        return max(0, self.missed - self.kept)


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
    if due_ms > now_ms:
        return Plan(next=due_ms)
    floor = due_ms if deadline_ms is None else max(due_ms, now_ms - deadline_ms)
    on_time_from = max(floor, now_ms - grace_ms)
    start = schedule.at_or_after(due_ms, on_time_from)
    on_time = [] if start is None else schedule.ticks_from(start, now_ms, MAX_TICKS_PER_CLAIM + 1)
    # every due tick before on_time_from was missed; those before floor are past the deadline
    cap = 1 << 62 if schedule.kind == "every" else COUNT_CAP
    missed = schedule.count_ticks(due_ms, on_time_from - 1, cap + 1)
    if policy == "all" and max_catchup > 0:
        if isinstance(schedule, every):  # arithmetic, however long the downtime
            first = max(due_ms + max(0, missed - max_catchup) * schedule.interval_ms, schedule.at_or_after(due_ms, floor) or floor)
            kept_count = schedule.count_ticks(first, on_time_from - 1, cap)
            kept = schedule.ticks_from(first, on_time_from - 1, MAX_TICKS_PER_CLAIM + 1) if kept_count else []
        else:
            kept = [t for t in schedule.latest_ticks(due_ms, on_time_from - 1, max_catchup) if t >= floor]
            kept_count = len(kept)
    elif policy == "coalesce" and not on_time:
        kept = [t for t in schedule.latest_ticks(due_ms, on_time_from - 1, 1) if t >= floor]
        kept_count = len(kept)
    else:
        kept, kept_count = [], 0
    chosen = kept + on_time
    out = Plan(missed=missed, kept=kept_count, counted_all=missed <= cap)
    if out.dropped or not out.counted_all:
        out.dropped_from = due_ms
        last_missed = schedule.latest_ticks(due_ms, (kept[0] if kept else on_time_from) - 1, 1)
        out.dropped_to = last_missed[-1] if last_missed else None
    out.fire = chosen[:MAX_TICKS_PER_CLAIM]
    if remaining is not None and len(out.fire) >= remaining:
        out.fire = out.fire[:remaining]
        return out  # the limit is reached: the entry ends
    if len(chosen) > MAX_TICKS_PER_CLAIM:
        out.next = chosen[MAX_TICKS_PER_CLAIM]
    else:
        out.next = schedule.at_or_after(due_ms, now_ms + 1)
    return out
