"""Registering and changing entries: the decisions around the upsert script.

The rules that keep registration idempotent and monotonic live here:

* same definition: nothing is written (N beats starting at once change nothing);
* changed arguments or options, same schedule: the next tick is kept;
* changed schedule: the next tick is recomputed from the server's "now";
* a paused entry stays paused unless the caller says otherwise; resuming
  continues the schedule from now (no burst of missed runs);
* a damaged entry (records edited by hand, set aside by a beat) is rewritten:
  writing it again repairs it;
* a new next tick is always after the entry's last claimed and last triggered
  tick, even when the server clock stepped back behind them (NTP, a failover
  to a replica whose clock is behind): "now" is then the later of those.

Each write is a compare-and-set on the entry's version; a conflict means
someone else changed it in between, so we re-read and decide again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from .definitions import DefinitionError, EntryDef, check_name
from .store import RedisStore, State, Stored, UpsertItem

__all__ = ["State", "Restore", "upsert", "read_entry", "EntryNotFound", "EntryDamaged", "StaticEntry", "ATTEMPTS"]

CHUNK = 500
ATTEMPTS = 20


class EntryNotFound(KeyError):
    """No entry of that name."""

    def __str__(self) -> str:
        return f"no entry named {self.args[0]!r}"


class EntryDamaged(ValueError):
    """The entry's records are damaged: it can be shown, repaired (upsert) or removed, nothing else."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"entry {name!r} is damaged: {problem}; add it again to repair it, or remove it")
        self.name, self.problem = name, problem


def read_entry(store: RedisStore, name: str) -> tuple[EntryDef, State, Stored]:
    """An entry's definition and state; raises EntryNotFound or EntryDamaged."""
    check_name(name)
    _, found = store.snapshot([name], full=True)
    stored = found[name]
    if not stored.exists:
        raise EntryNotFound(name)
    problem = stored.problem
    if problem is None and stored.state is not None and stored.definition is not None:
        try:
            return EntryDef.from_json(name, stored.definition), stored.state, stored
        except DefinitionError as exc:
            problem = f"its definition cannot be read: {exc}"
    raise EntryDamaged(name, problem or "its records are incomplete")


class StaticEntry(DefinitionError):
    """The entry comes from a ``beat_schedule``: a beat writes that definition back when
    it next starts, so changing or removing it elsewhere needs ``force``."""

    def __init__(self, name: str, verb: str) -> None:
        super().__init__(f"entry {name!r} comes from a beat_schedule: a beat puts that definition back when it next starts, "
                         f"so {verb} it in the beat_schedule; or force it (CLI: --force) to {verb} it until then")
        self.name = name


@dataclass
class Restore:
    """Where a newly created entry starts when it comes from elsewhere (import)."""

    next: int | None  #: its next tick; None: computed from now as for a new entry
    runs: int = 0
    last: int | None = None
    enabled: bool = True


def _decide(
    entry: EntryDef,
    stored: Stored,
    now: int,
    source: str,
    enabled: bool | None,
    from_now: bool = True,
    restore: Restore | None = None,
) -> tuple[str, UpsertItem | None]:
    """What to write for one entry, given what is stored; (outcome, item or None)."""
    st = stored.state
    dh, sh = entry.definition_hash, entry.schedule_hash

    def item(expected: int | None | str, nxt: int | str | None, on: bool, runs: int | None = None, last: int | None = None) -> UpsertItem:
        return UpsertItem(entry.name, expected, entry.to_json(), dh, sh, source, nxt, on, runs, last)

    if st is None:
        expected: int | str | None = None if stored.state_problem is None else "!"
        if restore is not None:
            nxt = entry.schedule.first_after(max(now, restore.last or 0)) if restore.next is None else restore.next
            return "created", item(expected, nxt, restore.enabled if enabled is None else enabled, restore.runs, restore.last)
        return "created", item(expected, entry.schedule.first_after(now), True if enabled is None else enabled)
    # never plan onto or before a claimed or triggered tick, whatever the server clock says:
    # after a step back, a new grid through "now" could land on one and reuse its task id
    after = max(now, st.last or 0, st.trigger or 0)
    want = st.enabled if enabled is None else enabled
    resuming = want and not st.enabled
    damaged = stored.problem is not None
    # the current next tick can be kept only if there is one (or the entry is finished)
    keep: int | str | None = "keep" if st.done or stored.score is not None or st.hold is not None else entry.schedule.first_after(after)
    if st.definition_hash == dh and want == st.enabled:
        if damaged:
            # edited by hand, or set aside by a beat: writing it again repairs it
            return "repaired", item(st.version, keep, want)
        if source == "static" and st.source != "static":
            # a beat_schedule now declares an entry made through the API or an
            # import: it becomes static, so it is pruned once no config has it
            return "adopted", item(st.version, keep, want)
        return "unchanged", None
    if st.schedule_hash != sh:
        return "updated", item(st.version, entry.schedule.first_after(after), want)
    if resuming and from_now and st.hold is not None:
        # continue the schedule from now, on its own phase: no burst of missed runs
        return "resumed", item(st.version, entry.schedule.at_or_after(st.hold, after + 1), want)
    outcome = "updated" if st.definition_hash != dh else ("resumed" if want else "paused")
    return outcome, item(st.version, keep, want)


def upsert(
    store: RedisStore,
    entries: Sequence[EntryDef],
    source: str | Mapping[str, str],
    enabled: bool | None = None,
    *,
    from_now: bool = True,
    restore: Mapping[str, Restore] | None = None,
    dry_run: bool = False,
) -> dict[str, str]:
    """Write entries idempotently; returns name -> created/updated/unchanged/paused/resumed/adopted/repaired.

    ``source`` is "static" or "api", or one per entry name. ``restore`` gives
    entries that do not exist yet their next tick, runs and last tick.
    ``dry_run`` makes the same decisions against what is stored and writes
    nothing: the outcomes a real run would report now.
    """
    results: dict[str, str] = {}
    sources = source if isinstance(source, Mapping) else None

    def decide(pending: Mapping[str, EntryDef]) -> tuple[list[UpsertItem], dict[str, str]]:
        """Read the chunk's records and decide each entry: the items to write and what
        each outcome will be (decided ones without a write go straight to results)."""
        now, snap = store.snapshot(list(pending))
        items, outcomes = [], {}
        for name, entry in pending.items():
            src = sources[name] if sources is not None else str(source)
            outcome, it = _decide(entry, snap[name], now, src, enabled, from_now, (restore or {}).get(name))
            if it is None or dry_run:
                results[name] = outcome
            else:
                items.append(it)
                outcomes[name] = outcome
        return items, outcomes

    def settle(pending: Mapping[str, EntryDef], items: list[UpsertItem], outcomes: dict[str, str], ok: list[bool]) -> None:
        """Record the writes that won; the ones a concurrent change beat are read and
        decided again, up to ATTEMPTS times in all."""
        for attempt in range(1, ATTEMPTS + 1):
            results.update({it.name: outcomes[it.name] for it, won in zip(items, ok, strict=True) if won})
            pending = {it.name: pending[it.name] for it, won in zip(items, ok, strict=True) if not won}
            if not pending:
                return
            if attempt == ATTEMPTS:
                break
            items, outcomes = decide(pending)
            ok = store.upsert(items) if items else []
        raise RuntimeError(f"could not write {', '.join(sorted(pending))}: changed concurrently {ATTEMPTS} times in a row")

    chunks = [{e.name: e for e in entries[start : start + CHUNK]} for start in range(0, len(entries), CHUNK)]
    if len(chunks) <= 1 or dry_run:
        for pending in chunks:
            items, outcomes = decide(pending)
            settle(pending, items, outcomes, store.upsert(items) if items else [])
        return results
    # Many chunks (upsert_many, an import): each chunk's write runs in a thread while the
    # next chunk is read and decided, so Redis's work and ours overlap (names differ
    # between chunks: the writes never race each other). A third of the time for 1M.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="redbeat_safe-upsert") as writer:
        previous: tuple[Mapping[str, EntryDef], list[UpsertItem], dict[str, str], Future[list[bool]]] | None = None
        try:
            for pending in chunks:
                items, outcomes = decide(pending)
                if previous is not None:
                    done, previous = previous, None
                    settle(done[0], done[1], done[2], done[3].result())
                written: Future[list[bool]] = writer.submit(store.upsert, items) if items else _done([])
                previous = (pending, items, outcomes, written)
        finally:  # also when reading the next chunk failed: the write in flight is settled (its error raised)
            if previous is not None:
                settle(previous[0], previous[1], previous[2], previous[3].result())
    return results


def _done(value: list[bool]) -> Future[list[bool]]:
    done: Future[list[bool]] = Future()
    done.set_result(value)
    return done
