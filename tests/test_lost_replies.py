"""A reply lost after the script ran: redis-py reconnects and sends the command
again, so Redis runs it twice. Every call must then have exactly the effect of
one call and return the same answer. The replies are lost by a real TCP proxy
in front of a real redis-server (tests/chaos/proxy.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from chaos.proxy import Proxy
from conftest import make_app
from faults import DoubleSend, Fleet, run_until_idle
from harness import Broker, RedisServer
from redbeat_safe import Schedules, every
from redbeat_safe.connection import connect, parse
from redbeat_safe.store import Keys, RedisStore


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[Proxy]:
    p = Proxy(redis_server.port)
    yield p
    p.close()


def through(proxy: Proxy) -> redis.Redis:
    """A client configured as beats and the API configure theirs (redis-py retries a dropped connection)."""
    client = connect(parse(proxy.url, {}))
    assert isinstance(client, redis.Redis)
    return client


def sha(store: RedisStore, script: str) -> bytes:
    return store._scripts[script].sha.encode()


def test_a_lost_reply_makes_redis_run_the_script_twice(redis_server: RedisServer, proxy: Proxy, prefix: str) -> None:
    """The fault itself: without a guard, the counter moves twice for one call."""
    client = through(proxy)
    incr = client.register_script("return redis.call('INCR', KEYS[1])")
    incr(keys=[f"{{{prefix}}}:n"])  # loads the script
    proxy.lose_replies(1, match=incr.sha.encode())
    assert incr(keys=[f"{{{prefix}}}:n"]) == 3
    assert proxy.replies_lost == 1


def test_trigger_with_lost_replies_runs_once_per_call_with_the_returned_id(redis_server: RedisServer, proxy: Proxy, prefix: str) -> None:
    app = make_app(redis_server, prefix, redbeat_safe_redis_url=proxy.url, redbeat_safe_lease=1)
    api = Schedules(app)
    api.upsert("t", "beatapp.record", every(hours=1))  # it never comes due here: every run of it is a trigger
    returned = []
    for _ in range(6):
        proxy.lose_replies(1, match=sha(api.store, "trigger"))
        returned.append(api.trigger("t"))
    assert proxy.replies_lost == 6
    # a beat reaps whatever a lost reply left in flight
    fleet = Fleet(redis_server.client(), prefix, lease_ms=1000)
    beat = fleet.engine("beat")
    beat.store = RedisStore(redis_server.client(), prefix)  # the real server clock
    beat.register()
    time.sleep(1.3)
    run_until_idle(beat)
    sent = [m.task_id for m in Broker(redis_server, f"q-{prefix}").messages() if m.entry == "t"]
    sent += [s.task_id for s in fleet.sent if s.entry == "t"]
    assert sorted(sent) == sorted(returned), f"{len(returned)} trigger calls, {len(sent)} runs"
    assert len(set(returned)) == 6
    counted = RedisStore(redis_server.client(), prefix).counters()
    assert counted.get("t", 0) + counted.get("r", 0) == 6, counted  # acknowledged once each, by the caller or the reaper


def test_trigger_retried_by_the_caller_with_its_request_id_runs_once(redis_server: RedisServer, prefix: str) -> None:
    app = make_app(redis_server, prefix)
    api = Schedules(app)
    api.upsert("t", "beatapp.record", every(hours=1))
    first = api.trigger("t", request_id="job-42")
    again = api.trigger("t", request_id="job-42")  # the caller did not see the first answer and tries again
    other = api.trigger("t", request_id="job-43")
    plain = [api.trigger("t"), api.trigger("t")]  # two calls in the same millisecond or not: two runs
    assert first == again and len({first, other, *plain}) == 4
    sent = [m.task_id for m in Broker(redis_server, f"q-{prefix}").messages() if m.entry == "t"]
    assert sorted(sent) == sorted([first, other, *plain])
    assert redis_server.client().zcard(Keys(prefix).inflight) == 0


def test_claim_with_a_lost_reply_publishes_on_time_once(redis_server: RedisServer, proxy: Proxy, prefix: str) -> None:
    app = make_app(redis_server, prefix, redbeat_safe_lease=3)
    Schedules(app).upsert("e", "beatapp.record", every(0.2))
    fleet = Fleet(redis_server.client(), prefix, lease_ms=3000)
    store = RedisStore(through(proxy), prefix)
    beat = fleet.engine("beat", store=store)
    beat.register()
    published_at: dict[int, float] = {}
    start = time.time()
    losses = 0
    while time.time() - start < 3:
        if losses < 5 and proxy.replies_lost == losses:
            proxy.lose_replies(1, match=sha(store, "claim"))
            losses += 1
        delay = beat.run_once()
        now = time.time() * 1000
        for s in fleet.sent:
            published_at.setdefault(s.tick, now)
        time.sleep(min(delay, 0.05))
    ticks = fleet.ticks("e")
    assert proxy.replies_lost >= 5
    assert len(ticks) == len(set(ticks)), "a tick published twice"
    late = {t: round(published_at[t] - t) for t in ticks if published_at[t] - t > 1000}
    assert not late, f"ticks published a lease late after a lost claim reply: {late}"
    assert all(b - a == 200 for a, b in zip(ticks, ticks[1:], strict=False)), ticks


def test_peek_with_a_lost_reply_still_hands_over_what_it_re_leased(redis_server: RedisServer, prefix: str) -> None:
    fleet = Fleet(redis_server.client(), prefix, lease_ms=2000)
    api = fleet.store()
    from redbeat_safe import registry
    from redbeat_safe.definitions import build

    registry.upsert(api, [build("e", "t", every(1), default_tz="UTC")], "api")
    dead = fleet.engine("dead", publish=lambda *a: (_ for _ in ()).throw(SystemExit))  # dies at its first publish
    dead.register()
    fleet.clock.advance(1000)
    with pytest.raises(SystemExit):
        dead.run_once()
    fleet.clock.advance(2001)  # its lease ran out: the tick is orphaned
    store = fleet.store(DoubleSend)
    beat = fleet.engine("beat", store=store)
    beat.register()
    store.arm("peek")
    beat.run_once()
    assert store.doubled == ["peek"]
    assert fleet.ticks("e")[:1] == [1_800_000_001_000], "the re-leased tick was not published in this pass"


def test_upsert_remove_and_ack_with_lost_replies_answer_as_one_call(redis_server: RedisServer, prefix: str) -> None:
    fleet = Fleet(redis_server.client(), prefix)
    store = fleet.store(DoubleSend)
    from redbeat_safe import registry
    from redbeat_safe.definitions import build

    entry = build("e", "t", every(1), default_tz="UTC")
    store.arm("upsert")
    assert registry.upsert(store, [entry], "api") == {"e": "created"}
    beat = fleet.engine("beat", store=store)
    beat.register()
    fleet.clock.advance(1000)
    store.arm("ack")
    store.arm("peek")
    run_until_idle(beat)
    fleet.clock.advance(1000)
    run_until_idle(beat)  # the acknowledgement of the first tick rides on this peek
    fleet.clock.advance(1000)
    run_until_idle(beat)
    history = [json.loads(r) for r in redis_server.client().lrange(fleet.keys.history("e"), 0, -1)]
    ticks = [h["tick"] for h in history]
    assert len(ticks) == len(set(ticks)) == len(fleet.sent), f"history {ticks}, published {fleet.ticks('e')}"
    assert int(redis_server.client().hget(fleet.keys.inststats, "beat") or 0) == len(fleet.sent)
    assert store.counters() == {"s": len(fleet.sent)}  # the metrics' totals: once per tick, however many runs
    store.arm("remove")
    assert store.remove(["e"]) == 1


def test_a_trigger_whose_publish_failed_after_a_beat_took_it_over_is_not_sent_again(redis_server: RedisServer, prefix: str) -> None:
    """The caller's publish hangs past the lease, a beat re-publishes the run, then the caller's
    publish fails: its retry of the same request must find the run sent, not send it again."""
    fleet = Fleet(redis_server.client(), prefix, lease_ms=1000)
    store = fleet.store()
    from redbeat_safe import registry
    from redbeat_safe.definitions import build
    from redbeat_safe.trigger import trigger

    registry.upsert(store, [build("t", "t", every(3600), default_tz="UTC")], "api")
    beat = fleet.engine("beat")
    beat.register()
    sent: list[int] = []

    def slow_then_fails(entry: object, name: str, tick: int) -> None:
        fleet.clock.advance(1001)  # the publish hangs past the lease...
        run_until_idle(beat)  # ...a beat reaps the run and publishes it
        raise ConnectionError("broker timeout")

    with pytest.raises(ConnectionError):
        trigger(store, "t", slow_then_fails, lease_ms=1000, caller="op", request_id="req-1")
    assert len(fleet.ticks("t")) == 1
    again = trigger(store, "t", lambda e, n, tick: sent.append(tick), lease_ms=1000, caller="op", request_id="req-1")
    assert sent == [] and again == fleet.sent[0].task_id


def test_a_trigger_never_takes_the_entrys_next_tick_whatever_grid_the_caller_gives(redis_server: RedisServer, prefix: str) -> None:
    """Found by the property test: a caller that passes another grid (anchor 0 for an
    `every` entry whose ticks fall on ...196 ms) got the entry's next scheduled tick as
    its trigger tick, so one task id was published twice, by the caller and by a beat.
    The script now takes the grid from the entry's due score itself."""
    fleet = Fleet(redis_server.client(), prefix, lease_ms=1000)
    store = fleet.store()
    from redbeat_safe import registry
    from redbeat_safe.definitions import build

    fleet.clock.advance(196)
    registry.upsert(store, [build("t", "t", every(1), default_tz="UTC")], "api")
    _, rows = store.read(["t"])
    assert rows[0].score is not None and rows[0].state is not None
    due, version = int(rows[0].score), rows[0].state.version
    assert due % 1000 != 0  # off the whole-second grid the caller will give
    for k in range(3):
        fleet.clock.set(due + k * 1000)  # "now" is one of the entry's own ticks
        got = store.trigger("t", f"req-{k}", "op", version, 1000, 0, 1000)
        assert got.outcome == "claimed" and got.tick is not None
        assert (got.tick - due) % 1000 != 0, (got.tick, due)
