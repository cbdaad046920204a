"""Whether the schedule is being served: the checks behind `schedules health`.

Made for probes (Kubernetes, cron checks, load balancers): one answer, healthy
or not, with one line per failed check. Read-only, a handful of Redis reads;
a Redis that does not answer is a failed check, not an exception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .connection import STORE_ERRORS, redact, refusal
from .store import RedisStore, split_member
from .views import Instance

DEFAULT_MIN_BEATS = 1
#: An enabled entry whose next tick is older than this is late: a beat publishes a
#: due tick within about a second, and within the grace (lease + loop, 11 s by default)
#: after an outage.
DEFAULT_MAX_LATE_S = 30.0
#: A refusal record older than this (by its writer's clock) is from a beat that stopped.
REFUSAL_FRESH_MS = 60_000


@dataclass
class Health:
    ok: bool
    failures: list[str] = field(default_factory=list)
    beats_alive: int = 0
    late: list[dict[str, Any]] = field(default_factory=list)
    stuck: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)  #: embedded beats that schedule nothing, and why
    now_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "failures": self.failures, "beats_alive": self.beats_alive, "late": self.late,
                "stuck_in_flight": self.stuck, "refused_beats": self.refused, "now_ms": self.now_ms}


def check(store: RedisStore, *, min_beats: int = DEFAULT_MIN_BEATS, max_late_s: float = DEFAULT_MAX_LATE_S,
          redis_url: str = "", on_host: str | None = None) -> Health:
    """Redis answers; at least ``min_beats`` beats are alive and no beat inside a worker
    reported a refused configuration (both on ``on_host`` only, when given: a per-pod
    readiness probe); no enabled entry's next tick and no in-flight
    tick's lease deadline is more than ``max_late_s`` in the past (a stuck in-flight
    tick means no beat is reaping)."""
    max_late = int(max_late_s * 1000)
    try:
        now, rows = store.instances()
        late = store.due_between(0, now - max_late - 1)
        inflight = store.inflight()
        refusals = store.refusals()
    except STORE_ERRORS as exc:
        said = refusal(exc) or f"Redis unavailable ({type(exc).__name__}: {exc})"
        where = f" at {redact(redis_url)}" if redis_url else ""
        return Health(ok=False, failures=[f"redis: {said}{where}"])
    beats = [Instance.from_row(now, *row) for row in rows]
    alive = sum(1 for b in beats if b.alive and (on_host is None or b.host == on_host))
    out = Health(ok=True, beats_alive=alive, now_ms=now)
    if alive < min_beats:
        where = "" if on_host is None else f" on host {on_host!r}"
        out.failures.append(f"beats: {alive} alive{where}, at least {min_beats} wanted")
    out.refused = [r for r in fresh_refusals(refusals, now) if on_host is None or r["host"] == on_host]
    for r in out.refused:
        out.failures.append(f"refused: beat {r['instance']} schedules nothing: {r['reason']}")
    out.late = [{"name": n, "tick_ms": t, "late_ms": now - t} for n, t in late]
    if out.late:
        worst = max(out.late, key=lambda e: e["late_ms"])
        out.failures.append(f"late: {len(out.late)} entr{'y' if len(out.late) == 1 else 'ies'} more than {max_late_s:g}s "
                            f"behind (most: {worst['name']!r}, {worst['late_ms'] / 1000:.1f}s)")
    for m, deadline in inflight:
        if deadline < now - max_late:
            parsed = split_member(m)
            out.stuck.append({"member": m, "name": parsed[1] if parsed else None, "tick_ms": parsed[0] if parsed else None,
                              "overdue_ms": now - deadline})
    if out.stuck:
        worst = max(out.stuck, key=lambda e: e["overdue_ms"])
        out.failures.append(f"in flight: {len(out.stuck)} tick(s) past their lease by more than {max_late_s:g}s, nobody is "
                            f"reaping (most: {worst['member']!r}, {worst['overdue_ms'] / 1000:.1f}s)")
    out.ok = not out.failures
    return out


def fresh_refusals(raw: dict[str, bytes], now: int) -> list[dict[str, Any]]:
    """The refusal records written within REFUSAL_FRESH_MS; unreadable ones are skipped."""
    out = []
    for instance, value in sorted(raw.items()):
        try:
            data = json.loads(value)
            at, reason = data["at"], data["reason"]
        except (ValueError, TypeError, KeyError, RecursionError):
            continue
        if isinstance(at, int) and not isinstance(at, bool) and now - at <= REFUSAL_FRESH_MS and isinstance(reason, str):
            out.append({"instance": instance, "reason": " ".join(line.strip() for line in reason.splitlines())[:1000], "at_ms": at,
                        "host": str(data.get("host", ""))})
    return out
