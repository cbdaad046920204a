"""Sentinel failover and ``redbeat_safe_wait_replicas`` with real servers and real beats.

The full measurement (both scenarios, with and without WAIT, default lease) is
``python -m bench.failover``; here a short run of the same code checks the
invariants: no new task id, nothing missed, beats alive, dispatch resumed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from conftest import BeatGroup
from failover import run
from harness import RedisServer, wait_for
from history import assert_exactly_once, check
from redbeat_safe import every


@pytest.mark.slow
def test_sentinel_failover_resumes_with_no_new_ids_and_no_missed_ticks(tmp_path: Path, redis_server: RedisServer, prefix: str) -> None:
    fig = run(tmp_path, scenario="kill", wait_replicas=0, lease=4, entries=3, before=3, after=8, replicas=1,
              broker=redis_server, prefix=prefix)
    print(fig)
    assert fig.crashed == 0 and not any("traceback" in n for n in fig.notes), fig
    assert fig.failover_s is not None and fig.resume_s is not None and fig.resume_s < 20, fig
    assert fig.new_id_duplicates == 0 and fig.missed == 0, fig
    # a claim whose reply or replication the kill cut off is published again, same id
    assert fig.same_id_repeats <= fig.entries, fig
    assert 1 <= fig.outage_lines <= 2, fig  # one line per beat and outage, not one per tick
    assert fig.published >= 3 * 10


def test_wait_replicas_holds_back_claims_a_replica_has_not_confirmed(
    tmp_path: Path, beats_factory: Callable[[RedisServer, str], BeatGroup], redis_server: RedisServer, prefix: str
) -> None:
    """Replica stalled: claims are held (one log line), published once it confirms; SIGTERM inside a WAIT is clean."""
    primary = RedisServer(tmp_path / "primary", args=["--repl-diskless-sync-delay", "0"]).start()
    replica = RedisServer(tmp_path / "replica", args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    try:
        wait_for(lambda: replica.client().info("replication").get("master_link_status") == "up", 30, what="the replica to sync")
        group = beats_factory(redis_server, prefix)
        env = {"BEAT_REDIS_URL": primary.url, "BEAT_LEASE": "4", "BEAT_WAIT_REPLICAS": "1", "BEAT_WAIT_TIMEOUT": "1"}
        a = group.start({"e": {"every": 1}}, "a", **env)
        a.wait_log("registered 1 static entries")
        time.sleep(2)
        assert replica.proc is not None
        replica.proc.send_signal(signal.SIGSTOP)
        stopped = time.time()
        time.sleep(4)
        during = [m.tick for m in group.broker.messages() if m.tick / 1000 > stopped + 0.5]
        assert during == [], "published a claim no replica had confirmed"
        a.wait_log("holding claimed ticks back", 10)
        replica.proc.send_signal(signal.SIGCONT)
        a.wait_log("replicas confirm claims again", 15)
        wait_for(lambda: any(m.tick / 1000 > stopped + 3 for m in group.broker.messages()), 15, what="the held ticks")
        time.sleep(2)
        replica.proc.send_signal(signal.SIGSTOP)  # the beat now spends its time blocked in WAIT
        time.sleep(2.5)
        a.signal(signal.SIGTERM)
        assert a.proc is not None and a.proc.wait(15) == 0
        replica.proc.send_signal(signal.SIGCONT)
        out = a.output()
        assert "Traceback" not in out and out.count("holding claimed ticks back") == 2
        # ticks claimed in the first stall whose leases ran into the second were held, not lost:
        # they are in flight, and the next beat's reaper publishes them once a replica confirms
        group.start({"e": {"every": 1}}, "b", **env).wait_log("registered 1 static entries")
        store = redis.Redis(port=primary.port)
        wait_for(lambda: all(int(m.split(b":")[0]) > time.time() * 1000 - 2000 for m in store.zrange(f"{{{prefix}}}:inflight", 0, -1)),
                 20, what="the held ticks to be published")
        time.sleep(1)
        group.stop_all()
        assert_exactly_once(check(group.broker.messages(), prefix, {"e": every(1)}), min_ticks=8)
    finally:
        if replica.proc is not None:
            replica.proc.send_signal(signal.SIGCONT)
        replica.stop()
        primary.stop()

