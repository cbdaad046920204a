"""A burst alone: while one batch is being published, the beat has already sent the next
peek and, once it answered, the next batch's claim (store.Deferred), so Redis works on
the next batch meanwhile. Every tick still goes out once, nothing is left in flight, a
clean stop hands back the claims it sent ahead, and a reply lost on the way (the script
flushed, the connection killed) gives the same answer as the synchronous call."""

from __future__ import annotations

import time
from collections import Counter

from faults import T0, Fleet, Sent, run_until_idle
from harness import RedisServer
from redbeat_safe import every, registry
from redbeat_safe.definitions import EntryDef, build
from redbeat_safe.dispatch import task_id_for
from redbeat_safe.engine import BATCH, Engine
from redbeat_safe.schedules import ms_to_datetime
from redbeat_safe.store import ClaimItem, RedisStore

N = 2 * BATCH + 57


def _slow(fleet: Fleet, name: str) -> Engine:
    """An engine whose publishes take a millisecond, as a broker's do: time for the
    next batch's peek to answer while this one goes out."""
    def publish(entry: EntryDef, entry_name: str, tick: int) -> None:
        time.sleep(0.001)
        fleet.sent.append(Sent(entry_name, tick, task_id_for(fleet.prefix, entry_name, tick), name))

    return fleet.engine(name, publish=publish)


def _fleet(redis_server: RedisServer, prefix: str) -> Fleet:
    fleet = Fleet(redis_server.client(), prefix, lease_ms=10_000)
    entries = [build(f"e{i:04d}", "t", every(10, start=ms_to_datetime(T0 + 1000)), default_tz="UTC") for i in range(N)]
    registry.upsert(fleet.store(), entries, "api")
    return fleet


def test_a_burst_alone_is_claimed_ahead_and_published_once(redis_server: RedisServer, prefix: str) -> None:
    fleet = _fleet(redis_server, prefix)
    a = _slow(fleet, "a")
    a.register()
    a.run_once()
    fleet.clock.set(T0 + 1000)
    ahead = []
    original = a._advance

    def advance() -> None:
        original()
        if a._ahead is not None and a._ahead.claim is not None:
            ahead.append(len(a._ahead.planned))

    a._advance = advance  # type: ignore[method-assign]
    run_until_idle(a)
    assert ahead, "no batch was claimed ahead while the previous one was published"
    sent = Counter((s.entry, s.tick) for s in fleet.sent)
    assert len(sent) == N and set(sent.values()) == {1}
    client = redis_server.client()
    assert client.zcard(fleet.keys.inflight) == 0, "an acknowledgement was lost"
    assert client.llen(fleet.keys.history("e0000")) == 1 and client.llen(fleet.keys.history(f"e{N - 1:04d}")) == 1


def test_a_clean_stop_hands_back_the_claims_sent_ahead(redis_server: RedisServer, prefix: str) -> None:
    fleet = _fleet(redis_server, prefix)
    a, b = _slow(fleet, "a"), fleet.engine("b")
    a.register()
    a.run_once()
    fleet.clock.set(T0 + 1000)
    a.finish(a.prepare())  # one batch published; the next claim was sent ahead
    assert a._ahead is not None and a._ahead.claim is not None
    a.leave(a.store)  # stopped here: what it claimed ahead is handed back, not left for a lease
    b.register()
    run_until_idle(b)
    sent = Counter((s.entry, s.tick) for s in fleet.sent)
    assert len(sent) == N and set(sent.values()) == {1}, "a tick claimed ahead was lost or sent twice"
    assert redis_server.client().zcard(fleet.keys.inflight) == 0


def _one_claim(fleet: Fleet, store: RedisStore) -> list[ClaimItem]:
    d = store.peek("x", 60_000, 10_000, 5, 0)
    return [ClaimItem(x.name, x.score, x.version, [x.tick], x.tick + 10_000) for x in d.due]


def test_a_reply_lost_on_the_way_gives_the_same_answer(redis_server: RedisServer, prefix: str) -> None:
    fleet = _fleet(redis_server, prefix)
    fleet.clock.set(T0 + 1000)
    store = fleet.store()
    client = redis_server.client()
    items = _one_claim(fleet, store)
    client.script_flush()  # NOSCRIPT: nothing ran, the synchronous call loads it
    first = store.claim_begin(items, 10_000, "x").result()
    assert [c.code for c in first[1]] == [1] * len(items)
    items = _one_claim(fleet, store)
    sent = store.claim_begin(items, 10_000, "x")
    name = f"{{{prefix}}}"
    for c in client.client_list():  # the connection the claim went out on dies before its reply is read
        if c.get("cmd") in ("evalsha", "NULL") and c["id"] != str(client.client_id()):
            client.client_kill_filter(_id=c["id"])
    again = sent.result()  # the script ran: its reply record answers the synchronous second run
    assert [c.code for c in again[1]] == [1] * len(items), name
    assert client.zcard(fleet.keys.inflight) == 2 * len(items)


