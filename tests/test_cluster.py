"""Redis Cluster: every script stays in the app's hash-tag slot, and two real beats
dispatch exactly once on a real 3-primary/3-replica cluster, through a migration
of that slot to another primary (TRYAGAIN while half-migrated, then MOVED)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import pytest
from celery import Celery

from conftest import BeatGroup
from harness import RedisServer, wait_for
from history import assert_exactly_once, check
from redbeat_safe import Schedules, every, pattern
from redbeat_safe.store import Keys
from topology import Cluster


def declared_key_violations(name: str, source: str) -> tuple[int, list[str]]:
    """Key arguments that are neither ``KEYS[...]`` nor a parameter of a local
    helper function (whose callers pass KEYS entries)."""
    params = {p.strip() for args in re.findall(r"local function \w+\(([^)]*)\)", source) for p in args.split(",")}
    calls, bad = 0, []
    for cmd, first in re.findall(r"redis\.call\('(\w+)'(?:,\s*([^,)]+))?", source):
        calls += 1
        if cmd != "TIME" and not first.startswith("KEYS[") and first.strip() not in params:
            bad.append(f"{name}: {cmd} on {first!r}, not a declared key")
    return calls, bad


def test_every_script_touches_only_keys_passed_in_keys() -> None:
    """A key built inside a script would escape the slot check the client does on KEYS."""
    folder = resources.files("redbeat_safe").joinpath("lua")
    calls, bad = 0, []
    for f in folder.iterdir():
        if f.name.endswith(".lua"):
            n, b = declared_key_violations(f.name, f.read_text())
            calls, bad = calls + n, bad + b
    assert calls > 30 and bad == []
    assert declared_key_violations("x.lua", "redis.call('GET', 'k')")[1] and declared_key_violations("x.lua", "redis.call('GET', name)")[1]


def test_all_keys_share_one_hash_tag() -> None:
    keys = Keys("app")
    names = [v for k, v in vars(keys).items() if k != "prefix"]
    assert names and all(n.startswith("{app}:") for n in names)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"), primaries=3, replicas=1).start()
    yield c
    c.stop()


def cluster_app(cluster: Cluster, broker: RedisServer, prefix: str) -> Celery:
    app = Celery("cluster", set_as_current=False)
    app.conf.update(broker_url=f"redis://127.0.0.1:{broker.port}/1", redbeat_safe_redis_url=cluster.url, redbeat_safe_key_prefix=prefix)
    return app


def test_the_api_works_on_a_cluster(cluster: Cluster, redis_server: RedisServer, prefix: str) -> None:
    s = Schedules(cluster_app(cluster, redis_server, prefix))
    assert s.upsert("e", "t", every(5)) == "created"
    assert s.upsert("e", "t", every(5)) == "unchanged"
    assert [e.name for e in s.list()] == ["e"] and s.get("e") is not None
    assert s.remove("e")
    s.close()


def test_two_beats_on_a_cluster_exactly_once_through_a_slot_migration(
    cluster: Cluster, beats_factory: Callable[[RedisServer, str], BeatGroup], redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = "clu"
    group = beats_factory(redis_server, prefix)
    schedule = {"every1": {"every": 1}, "secs": {"pattern": "*/1 * * * * *"}}
    env = {"BEAT_REDIS_URL": cluster.url, "BEAT_LEASE": "4"}
    a = group.start(schedule, "a", **env)
    b = group.start(schedule, "b", BEAT_WAIT_REPLICAS="1", BEAT_WAIT_TIMEOUT="1", **env)  # WAIT on the slot's node
    a.wait_log("registered 2 static entries")
    b.wait_log("registered 2 static entries")
    time.sleep(4)
    client = cluster.client()
    slot = client.keyslot("{" + prefix + "}:due")
    source = cluster.owner(slot)
    target = next(n for n in cluster.primaries_now() if n is not source)
    moved = cluster.migrate_slot(slot, target, pause=1.5)
    assert moved >= 4 and cluster.owner(slot) is target
    before = len(group.broker.messages())
    wait_for(lambda: len(group.broker.messages()) >= before + 6, 20, what="dispatch to go on after the migration")
    time.sleep(4)
    assert a.proc is not None and a.proc.poll() is None and b.proc is not None and b.proc.poll() is None
    group.stop_all()
    assert target.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) >= 4
    out = a.output() + b.output()
    assert "Traceback" not in out
    assert "replica(s) confirmed" not in out  # b's WAITs reached the slot's replica
    # half-migrated, every script gets TRYAGAIN: one outage line per beat at most, then recovery
    assert a.output().count("Redis unavailable") <= 1 and b.output().count("Redis unavailable") <= 1
    messages = group.broker.messages()
    reports = check(messages, prefix, {"every1": every(1), "secs": pattern("*/1 * * * * *", tz="UTC")})
    print(f"slot {slot}: {moved} keys moved {source.port} -> {target.port}; {len(messages)} messages, "
          f"same-id repeats {sum(r.same_id_repeats for r in reports.values())}, gaps {sum(len(r.gaps) for r in reports.values())}")
    assert_exactly_once(reports, min_ticks=10)
    client.close()
