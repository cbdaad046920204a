"""The store and the Schedules API against a real redis-server."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from celery import Celery

from harness import RedisServer
from redbeat_safe import DefinitionError, Schedules, every, pattern
from redbeat_safe.store import CHANGED, CLAIMED, ClaimItem, Keys, RedisStore, member


def store_of(app: Celery) -> RedisStore:
    return Schedules(app).store


def keys_of(server: RedisServer, prefix: str) -> list[bytes]:
    return sorted(server.client().keys("{" + prefix + "}*"))


def test_upsert_is_idempotent_and_keeps_the_next_tick(app: Celery) -> None:
    s = Schedules(app)
    assert s.upsert("e", "t", every(10), args=[1]) == "created"
    first = s.get("e")
    assert first is not None and first.next_tick is not None
    for _ in range(5):
        assert s.upsert("e", "t", every(10), args=[1]) == "unchanged"
    again = s.get("e")
    assert again is not None and again.next_tick == first.next_tick and again.updated_at == first.updated_at


def test_changed_args_keep_the_phase_changed_schedule_recomputes(app: Celery) -> None:
    s = Schedules(app)
    s.upsert("e", "t", every(3600), args=[1])
    before = s.get("e")
    assert s.upsert("e", "t", every(3600), args=[2]) == "updated"
    after_args = s.get("e")
    assert after_args is not None and before is not None
    assert after_args.next_tick == before.next_tick and after_args.args == [2]
    assert s.upsert("e", "t", every(60), args=[2]) == "updated"
    after_sched = s.get("e")
    assert after_sched is not None and after_sched.next_tick is not None and after_sched.next_tick < before.next_tick  # type: ignore[operator]


def test_pause_and_resume_through_upsert(app: Celery) -> None:
    s = Schedules(app)
    s.upsert("e", "t", every(3600))
    assert s.upsert("e", "t", every(3600), enabled=False) == "paused"
    paused = s.get("e")
    assert paused is not None and not paused.enabled and paused.next_tick is None
    assert store_of(app).client.zscore(Keys(app.conf.redbeat_safe_key_prefix).due, "e") is None
    assert s.upsert("e", "t", every(3600), enabled=True) == "resumed"
    resumed = s.get("e")
    assert resumed is not None and resumed.enabled and resumed.next_tick is not None


def test_bad_input_writes_nothing(app: Celery, redis_server: RedisServer) -> None:
    s = Schedules(app)
    prefix = app.conf.redbeat_safe_key_prefix
    for bad in (
        lambda: s.upsert("x", "t", pattern("0 0 30 2 *")),
        lambda: s.upsert("x", "t", every(5), args=[object()]),
        lambda: s.upsert("x", "t", every(5), options={"nope": 1}),
        lambda: s.upsert("x" * 10_000, "t", every(5)),
        lambda: s.upsert("x", "t", pattern("* * * * *", tz="Nowhere/Land")),
        lambda: s.upsert("x", "t", every(5, limit=0)),
    ):
        with pytest.raises(ValueError):
            bad()
    assert keys_of(redis_server, prefix) == []
    with pytest.raises(DefinitionError, match="entry 'x': args contains a object"):
        s.upsert("x", "t", every(5), args=[object()])


def test_remove_and_list(app: Celery) -> None:
    s = Schedules(app)
    s.upsert("a", "t", every(5))
    s.upsert("b", "t", pattern("*/5 * * * *", tz="Europe/Berlin"), kwargs={"k": 1}, options={"queue": "reports"})
    assert [e.name for e in s.list()] == ["a", "b"]
    b = s.get("b")
    assert b is not None and b.as_dict()["schedule"] == "pattern '*/5 * * * *' in Europe/Berlin" and b.options == {"queue": "reports"}
    assert s.remove("a") is True and s.remove("a") is False
    assert [e.name for e in s.list()] == ["b"]


def test_claim_is_a_compare_and_set_only_one_claimer_wins(app: Celery) -> None:
    s = Schedules(app)
    store = s.store
    s.upsert("e", "t", every(0.05))
    k = store.keys
    # wait until due, then race 8 threads for the same tick
    import time

    time.sleep(0.1)
    peek = store.peek("x", 30000, 10000, 10, 10)
    (due,) = peek.due
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        _, won, _ = store.claim([ClaimItem("e", due.score, due.version, [due.tick], due.tick + 50)], 10000)
        results.extend(c.code == CLAIMED for c in won)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert store.client.zscore(k.inflight, member("e", due.tick)) is not None
    assert int(store.client.zscore(k.due, "e")) == due.tick + 50  # type: ignore[arg-type]


def test_a_claim_with_a_stale_version_loses_to_an_upsert(app: Celery) -> None:
    s = Schedules(app)
    store = s.store
    s.upsert("e", "t", every(0.05), args=[1])
    import time

    time.sleep(0.1)
    (due,) = store.peek("x", 30000, 10000, 10, 10).due
    s.upsert("e", "t", every(0.05), args=[2])  # same schedule: next kept, version bumped
    _, won, _ = store.claim([ClaimItem("e", due.score, due.version, [due.tick], due.tick + 50)], 10000)
    assert [c.code for c in won] == [CHANGED]


def test_scripts_survive_script_flush(app: Celery, redis_server: RedisServer) -> None:
    s = Schedules(app)
    s.upsert("a", "t", every(5))
    redis_server.client().script_flush()
    assert s.upsert("b", "t", every(5)) == "created"
    assert s.store.peek("x", 30000, 10000, 10, 10).now > 0


def test_concurrent_identical_upserts_all_succeed_and_change_nothing(app: Celery) -> None:
    Schedules(app).upsert("e", "t", every(timedelta(hours=1)))
    first = Schedules(app).get("e")
    errors: list[BaseException] = []
    outcomes: list[str] = []

    def hammer() -> None:
        try:
            s = Schedules(app)
            for _ in range(50):
                outcomes.append(s.upsert("e", "t", every(timedelta(hours=1))))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and set(outcomes) == {"unchanged"}
    assert Schedules(app).get("e") == first


def test_a_beat_schedule_entry_adopts_an_identical_api_entry(app: Celery, redis_server: RedisServer) -> None:
    """After an import (or an API upsert), the config declaring the same entry makes it static and prunable."""
    from redbeat_safe import registry
    from redbeat_safe.definitions import build

    s = Schedules(app)
    s.upsert("shared", "t", every(60))
    before = s.get("shared")
    entry = build("shared", "t", every(60), default_tz="UTC")
    assert registry.upsert(s.store, [entry], "static") == {"shared": "adopted"}
    assert registry.upsert(s.store, [entry], "static") == {"shared": "unchanged"}
    after = s.get("shared")
    assert after is not None and before is not None
    assert after.source == "static" and after.next_tick == before.next_tick
    assert redis_server.client().sismember(Keys(app.conf.redbeat_safe_key_prefix).static, "shared")
    assert registry.upsert(s.store, [entry], "api") == {"shared": "unchanged"}  # the API never demotes it


def test_register_run_twice_is_harmless_and_a_foreign_layout_is_left_untouched(app: Celery, redis_server: RedisServer) -> None:
    """The register script as a retry after a lost reply sees it: the second run returns
    the same epoch and layout; against another layout both runs write nothing."""
    prefix = app.conf.redbeat_safe_key_prefix
    store, client, k = RedisStore(redis_server.client(), prefix), redis_server.client(), Keys(prefix)
    first = store.register("i1", 30_000, '{"host": "h"}', "epoch-a")
    second = store.register("i1", 30_000, '{"host": "h"}', "epoch-b")
    assert first[1:] == second[1:] == ("epoch-a", "1")
    client.hset(k.meta, "layout", "9")
    client.zrem(k.instances, "i1")
    for candidate in ("epoch-c", "epoch-c"):
        assert store.register("i2", 30_000, "{}", candidate)[1:] == ("", "9")
    assert client.zrange(k.instances, 0, -1) == [] and client.hget(k.meta, "epoch") == b"epoch-a"
