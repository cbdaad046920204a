"""The whole cluster's state in a few round trips, for readers that show or export all
of it at once (the metrics collector, the dashboard): every entry's state, next tick
and latest dispatch, the beats, the ticks in flight, the cluster-wide counters.

Read-only, and tolerant like `list`: a damaged record shows up as an entry with a
``problem``, never as an exception. Core code: no web or metrics imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .health import fresh_refusals
from .store import RedisStore, Stored, split_member
from .views import Dispatch, Instance

#: Names per snapshot call (one script run each, kept short: Redis serves nothing else meanwhile).
CHUNK = 500
SUMMARY_CHUNK = 1000
#: The counters' fields, as the scripts write them, and what they count.
COUNTER_KINDS = {"s": "scheduled", "r": "republished", "t": "triggered", "x": "dropped"}
SKIPPED = "skip"


@dataclass
class EntryRow:
    name: str
    state: str  #: enabled, paused, finished or damaged
    next_ms: int | None  #: enabled entries only
    last_dispatch: Dispatch | None = None
    stored: Stored | None = None  #: everything stored (read for pages, not for the metrics)

    @classmethod
    def from_stored(cls, stored: Stored, last: Dispatch | None) -> EntryRow:
        st = stored.state
        if stored.problem is not None or st is None:
            state = "damaged"
        elif not st.enabled:
            state = "paused"
        else:
            state = "finished" if st.done or stored.score is None else "enabled"
        return cls(stored.name, state, stored.score if state == "enabled" else None, last, stored)


@dataclass
class Overview:
    now_ms: int
    entries: list[EntryRow] = field(default_factory=list)
    beats: list[Instance] = field(default_factory=list)
    in_flight: list[tuple[str, int, int | None]] = field(default_factory=list)  #: member, lease deadline, nominal tick
    counters: dict[str, int] = field(default_factory=dict)
    refused: list[dict[str, Any]] = field(default_factory=list)

    def by_state(self) -> dict[str, int]:
        out = dict.fromkeys(("enabled", "paused", "finished", "damaged"), 0)
        for e in self.entries:
            out[e.state] += 1
        return out

    @property
    def beats_alive(self) -> int:
        return sum(1 for b in self.beats if b.alive)

    def due_backlog(self) -> int:
        """Enabled entries whose next tick has come and not been claimed yet."""
        return sum(1 for e in self.entries if e.next_ms is not None and e.next_ms <= self.now_ms)


def _heads(store: RedisStore, names: Sequence[str]) -> list[Dispatch | None]:
    """Each entry's latest dispatch, in one pipeline."""
    if not names:
        return []
    pipe = store.client.pipeline(transaction=False)
    for name in names:
        pipe.lindex(store.keys.history(name).encode("utf-8", "surrogateescape"), 0)
    # a history key planted with another type answers an error for that entry alone
    return [Dispatch.from_record(h) if isinstance(h, bytes) else None for h in pipe.execute(raise_on_error=False)]


def entries(store: RedisStore, names: Sequence[str], full: bool = False) -> tuple[int, list[EntryRow]]:
    """Server time and a row per name that has records, everything read (snapshots,
    with the definitions when ``full``), with its latest dispatch: for pages."""
    now, rows = store.now(), list[Stored]()
    for start in range(0, len(names), CHUNK):
        now, found = store.snapshot(names[start : start + CHUNK], full=full)
        rows.extend(s for s in found.values() if s.exists)
    heads = _heads(store, [s.name for s in rows])
    return now, [EntryRow.from_stored(s, h) for s, h in zip(rows, heads, strict=True)]


def summaries(store: RedisStore, names: Sequence[str], with_dispatch: bool = False) -> tuple[int, list[EntryRow]]:
    """Server time and each entry's state and next tick only (the metrics' read of every
    entry: a fifth of what ``entries`` sends), with the latest dispatch when asked."""
    now, rows = store.now(), list[EntryRow]()
    for start in range(0, len(names), SUMMARY_CHUNK):
        now, found = store.summary(names[start : start + SUMMARY_CHUNK])
        rows.extend(EntryRow(name, state, nxt) for name, state, nxt, _ in found)
    if with_dispatch:
        for row, head in zip(rows, _heads(store, [r.name for r in rows]), strict=True):
            row.last_dispatch = head
    return now, rows


def read(store: RedisStore, with_dispatch: bool = False) -> Overview:
    """Everything at once, entries as summaries (raises the store's errors: the caller
    reports Redis down)."""
    now, rows = summaries(store, store.names(), with_dispatch=with_dispatch)
    at, beats = store.instances()
    flight = []
    for m, deadline in store.inflight():
        parsed = split_member(m)
        flight.append((m, deadline, None if parsed is None else parsed[0]))
    return Overview(now_ms=now, entries=rows, beats=[Instance.from_row(at, *b) for b in beats], in_flight=flight,
                    counters=store.counters(), refused=fresh_refusals(store.refusals(), now))
