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

#: Names per snapshot call (one script run each).
CHUNK = 500
#: The counters' fields, as the scripts write them, and what they count.
COUNTER_KINDS = {"s": "scheduled", "r": "republished", "t": "triggered", "x": "dropped"}
SKIPPED = "skip"


@dataclass
class EntryRow:
    name: str
    stored: Stored
    last_dispatch: Dispatch | None

    @property
    def state(self) -> str:
        """damaged, paused, finished or enabled."""
        st = self.stored
        if st.problem is not None or st.state is None:
            return "damaged"
        if not st.state.enabled:
            return "paused"
        return "finished" if st.state.done or st.score is None else "enabled"

    @property
    def next_ms(self) -> int | None:
        return self.stored.score if self.state == "enabled" else None


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


def entries(store: RedisStore, names: Sequence[str], with_dispatch: bool = True, full: bool = False) -> tuple[int, list[EntryRow]]:
    """Server time and a row per name (snapshots, with the definitions when ``full``,
    then the history heads in one pipeline)."""
    now, rows = store.now(), list[Stored]()
    for start in range(0, len(names), CHUNK):
        now, found = store.snapshot(names[start : start + CHUNK], full=full)
        rows.extend(found.values())
    heads: list[Any] = [None] * len(rows)
    if with_dispatch and rows:
        pipe = store.client.pipeline(transaction=False)
        for s in rows:
            pipe.lindex(store.keys.history(s.name).encode("utf-8", "surrogateescape"), 0)
        heads = pipe.execute()
    return now, [EntryRow(s.name, s, None if h is None else Dispatch.from_record(h)) for s, h in zip(rows, heads, strict=True)
                 if s.exists]


def read(store: RedisStore, with_entries: bool = True) -> Overview:
    """Everything at once (raises the store's errors: the caller reports Redis down)."""
    now, rows = entries(store, store.names()) if with_entries else (store.now(), [])
    at, beats = store.instances()
    flight = []
    for m, deadline in store.inflight():
        parsed = split_member(m)
        flight.append((m, deadline, None if parsed is None else parsed[0]))
    return Overview(now_ms=now, entries=rows, beats=[Instance.from_row(at, *b) for b in beats], in_flight=flight,
                    counters=store.counters(), refused=fresh_refusals(store.refusals(), now))
