"""Prometheus metrics: the cluster's, read from Redis at scrape time and served by
`schedules serve` at /metrics, and a beat's own on redbeat_safe_metrics_port. Real
Redis, real beats, real HTTP scrapes parsed with prometheus_client's own parser; the
documented alert rules checked by Debian's promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import BeatGroup, cli, make_app
from dashboard import Served, request
from harness import ROOT, RedisServer, free_port, wait_for
from redbeat_safe import Schedules, every
from redbeat_safe.store import Keys

DOC = ROOT / "docs" / "monitoring.md"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def served(beats: BeatGroup) -> Iterator[Served]:
    s = Served(beats, "--entry-series", "all")
    yield s
    s.stop()


def test_cluster_metrics_count_what_the_beats_did(beats: BeatGroup, redis_server: RedisServer, served: Served) -> None:
    api = Schedules(make_app(redis_server, beats.prefix))
    api.upsert("paused", "beatapp.record", every(60), enabled=False)
    api.upsert("once", "beatapp.record", every(1, limit=1))
    api.upsert("broken", "beatapp.record", every(60))
    api.upsert("behind", "beatapp.record", every(1))
    client, k = redis_server.client(), Keys(beats.prefix)
    client.hset(k.defs, "broken", b"{not json")  # damaged by hand
    now = api.store.now()
    client.zadd(k.due, {"behind": now - 600_000})  # 10 minutes behind: coalesced into one run, the rest skipped
    found = samples(served.get("/metrics").text)
    assert value(found, "redbeat_safe_redis_up") == 1 and value(found, "redbeat_safe_beats_alive") == 0
    assert value(found, "redbeat_safe_due_backlog") >= 1  # "behind", with no beat running
    assert value(found, "redbeat_safe_entry_lateness_seconds", entry="behind") >= 599
    assert value(found, "redbeat_safe_max_lateness_seconds") >= 599
    a, b = beats.start({"e1": {"every": 1}}, "a"), beats.start({"e1": {"every": 1}}, "b")
    a.wait_log("registered 1 static entries")
    b.wait_log("registered 1 static entries")
    request_id = "metrics-test"
    assert cli(beats, "trigger", "e1", "--request-id", request_id).returncode == 0
    # a tick claimed by a beat that vanished: the reaper re-publishes it
    tick = (now // 1000 - 3) * 1000
    client.zadd(k.inflight, {f"{tick}:e1": 1})
    wait_for(lambda: any(m.entry == "e1" and m.tick == tick for m in beats.broker.messages()), 20, what="the re-publish")
    time.sleep(3)
    found = samples(served.get("/metrics").text)
    msgs = beats.broker.messages()
    by_kind = {kind: value(found, "redbeat_safe_dispatches_total", kind=kind) for kind in ("scheduled", "republished", "triggered", "dropped")}
    assert by_kind["republished"] == 1 and by_kind["triggered"] == 1 and by_kind["dropped"] == 0, by_kind
    # every acknowledged dispatch is counted once, whichever beat sent it (a message may still be unacknowledged)
    assert len(msgs) - 3 <= sum(by_kind.values()) <= len(msgs), (by_kind, len(msgs))
    assert value(found, "redbeat_safe_ticks_skipped_total") >= 590  # "behind": ~600 missed, one run published
    assert value(found, "redbeat_safe_beats_alive") == 2 and value(found, "redbeat_safe_beats_registered") == 2
    states = {s: value(found, "redbeat_safe_entries", state=s) for s in ("enabled", "paused", "finished", "damaged")}
    assert states == {"enabled": 2, "paused": 1, "finished": 1, "damaged": 1}, states
    assert value(found, "redbeat_safe_entry_lateness_seconds", entry="e1") == 0
    last = value(found, "redbeat_safe_entry_last_dispatch_timestamp_seconds", entry="e1")
    assert abs(last - time.time()) < 10
    assert 0 <= value(found, "redbeat_safe_entry_last_dispatch_lateness_seconds", entry="e1") < 5
    assert ("redbeat_safe_entry_next_tick_timestamp_seconds", (("entry", "paused"),)) not in found
    default = Served(beats)  # --entry-series late: per-entry lateness of late entries only
    try:
        lean = samples(default.get("/metrics").text)
    finally:
        default.stop()
    assert not any(n.startswith(("redbeat_safe_entry_next", "redbeat_safe_entry_last")) for n, _ in lean)
    assert {dict(labels)["entry"] for n, labels in lean if n == "redbeat_safe_entry_lateness_seconds"} <= {"e1", "once"}
    assert value(lean, "redbeat_safe_beats_alive") == 2 and value(lean, "redbeat_safe_entries", state="damaged") == 1


def test_cluster_metrics_say_when_redis_is_down(beats: BeatGroup, own_redis: RedisServer) -> None:
    served = Served(beats, env={"BEAT_REDIS_URL": own_redis.url})
    try:
        assert value(samples(served.get("/metrics").text), "redbeat_safe_redis_up") == 1
        own_redis.stop()
        reply = served.get("/metrics")
        assert reply.status == 200 and value(samples(reply.text), "redbeat_safe_redis_up") == 0
        assert served.get("/healthz").status == 503
    finally:
        served.stop()


def test_a_beat_serves_its_own_metrics_on_its_port(beats: BeatGroup, own_redis: RedisServer) -> None:
    port = free_port()
    group = BeatGroup(own_redis, beats.prefix, beats.workdir)
    beat = group.start({"e1": {"every": 1}, "e2": {"every": 1}}, "m", BEAT_METRICS_PORT=str(port))
    try:
        beat.wait_log(f"metrics are served on http://127.0.0.1:{port}/metrics")
        wait_for(lambda: len(group.broker.messages()) >= 6, 20, what="dispatches")
        found = samples(request(f"http://127.0.0.1:{port}/metrics").text)
        assert value(found, "redbeat_safe_beat_passes_total") >= 3
        assert value(found, "redbeat_safe_beat_claims_total", result="won") >= 6
        assert value(found, "redbeat_safe_beat_claims_total", result="lost") == 0
        assert value(found, "redbeat_safe_beat_publish_seconds_count") >= 6
        assert value(found, "redbeat_safe_beat_redis_seconds_count", call="peek") >= 3
        assert value(found, "redbeat_safe_beat_redis_outage") == 0
        assert any(n == "redbeat_safe_beat_info" for n, _ in found)
        own_redis.stop()
        wait_for(lambda: value(samples(request(f"http://127.0.0.1:{port}/metrics").text), "redbeat_safe_beat_redis_outage") == 1,
                 20, what="the outage gauge")
        own_redis.start()
        wait_for(lambda: value(samples(request(f"http://127.0.0.1:{port}/metrics").text), "redbeat_safe_beat_redis_outage") == 0,
                 30, what="the outage gauge to clear")
    finally:
        group.stop_all()


def test_two_beats_on_one_port_the_second_refuses_to_start(beats: BeatGroup) -> None:
    port = free_port()
    first = beats.start({}, "m1", BEAT_METRICS_PORT=str(port))
    first.wait_log("metrics are served")
    second = beats.start({}, "m2", BEAT_METRICS_PORT=str(port))
    wait_for(lambda: second.proc is not None and second.proc.poll() is not None, 30, what="the second beat to exit")
    assert "give each beat on a host its own port" in second.output()


def test_the_summary_read_by_the_metrics_agrees_with_list_on_every_kind_of_damage(redis_server: RedisServer, prefix: str) -> None:
    """The metrics read every entry through the snapshot script's compact 'summary'
    mode, which decides the state in Lua; `list` decides it in Python from the full
    snapshot. Planted records of every kind: the two must say the same."""
    from redbeat_safe import pattern
    from redbeat_safe.overview import EntryRow, summaries

    api = Schedules(make_app(redis_server, prefix))
    client, k = redis_server.client(), Keys(prefix)
    for name in ("ok", "paused", "finished", "bad-json", "bad-field", "no-def", "edited-def", "inf-score", "nan-score",
                 "aside", "state-gone", "only-def", "only-score", "only-aside"):
        api.upsert(name, "beatapp.record", every(60, limit=1) if name == "finished" else pattern("0 * * * *"),
                   enabled=name != "paused")
    now = api.store.now()
    client.zadd(k.due, {"finished": now - 1000})
    st = json.loads(client.hget(k.state, "finished"))
    st.update(done=True, runs=1, last=now - 1000)
    client.hset(k.state, "finished", json.dumps(st))
    client.zrem(k.due, "finished")
    client.hset(k.state, "bad-json", b"{nope")
    bad = json.loads(client.hget(k.state, "bad-field"))
    bad["ver"] = -3
    client.hset(k.state, "bad-field", json.dumps(bad))
    client.hdel(k.defs, "no-def")
    client.hset(k.defs, "edited-def", client.hget(k.defs, "edited-def") + b" ")
    client.zadd(k.due, {"inf-score": float("inf")})
    client.execute_command("ZADD", k.due, "1.5", "nan-score")  # not whole ms
    client.zrem(k.due, "aside")
    client.hset(k.aside, "aside", json.dumps({"problem": "test", "at": now, "by": "t"}))
    client.hdel(k.state, "state-gone")
    for key in (k.state, k.due, k.aside):
        client.hdel(key, "only-def") if key != k.due else client.zrem(key, "only-def")
    client.hdel(k.state, "only-score")
    client.hdel(k.defs, "only-score")
    client.zadd(k.due, {"only-score": now})
    client.hset(k.aside, "only-aside", json.dumps({"problem": "x"}))
    client.hdel(k.state, "only-aside")
    client.hdel(k.defs, "only-aside")
    client.zrem(k.due, "only-aside")
    names = api.store.names()
    _, read = api.store.read(names)
    expected = {s.name: (r.state, r.next_ms) for s in read for r in [EntryRow.from_stored(s, None)] if s.exists}
    _, rows = summaries(api.store, names)
    assert {r.name: (r.state, r.next_ms) for r in rows} == expected
    assert expected["ok"][0] == "enabled" and expected["paused"][0] == "paused" and expected["finished"][0] == "finished"
    assert sum(1 for s, _ in expected.values() if s == "damaged") == 11, expected


def test_metrics_without_prometheus_client_name_the_extra() -> None:
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "try:\n    import redbeat_safe.metrics\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "pip install 'redbeat-safe[metrics]'" in out.stdout, out


def _rules() -> str:
    text = DOC.read_text()
    block = text.split("<!-- alert rules -->", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    return block


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) is not installed")
def test_the_documented_alert_rules_pass_promtool(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(_rules())
    done = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "SUCCESS" in done.stdout + done.stderr, done.stdout + done.stderr
    # and they fire when they should: promtool's own rule unit tests, on series shaped like a real scrape
    tests = tmp_path / "tests.yml"
    tests.write_text(json.dumps({
        "rule_files": [str(rules)],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [
                {"series": 'redbeat_safe_beats_alive{job="schedules"}', "values": "2 2 0 0 0 0 0 0 0 0"},
                {"series": 'redbeat_safe_redis_up{job="schedules"}', "values": "1 1 1 1 1 1 1 1 1 1"},
                {"series": 'redbeat_safe_entry_lateness_seconds{job="schedules",entry="report"}', "values": "0 0 90 105 120 135 150 165 180 195"},
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "RedbeatSafeNoBeatAlive",
                 "exp_alerts": [{"exp_labels": {"severity": "critical", "job": "schedules"},
                                 "exp_annotations": _annotations("RedbeatSafeNoBeatAlive")}]},
                {"eval_time": "2m", "alertname": "RedbeatSafeEntryLate",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "job": "schedules", "entry": "report"},
                                 "exp_annotations": _annotations("RedbeatSafeEntryLate", entry="report", value="180")}]},
                {"eval_time": "2m", "alertname": "RedbeatSafeRedisDown", "exp_alerts": []},
            ],
        }],
    }))
    done = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def _annotations(alert: str, **values: str) -> dict[str, str]:
    """The alert's annotations as the docs write them, with the template values filled in."""
    block = _rules().split(f"alert: {alert}", 1)[1].split("- alert:", 1)[0]
    out = {}
    for key in ("summary", "description"):
        m = re.search(rf"{key}: \"(.*)\"", block)
        if m:
            text = m.group(1).replace('\\"', '"')
            text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda g: values[g.group(1)], text)
            out[key] = text.replace("{{ $value }}", values.get("value", ""))
    return out


def test_every_metric_the_docs_name_is_served_and_every_served_one_is_documented(beats: BeatGroup, served: Served) -> None:
    port = free_port()
    beat = beats.start({"e1": {"every": 1}}, "m", BEAT_METRICS_PORT=str(port))
    beat.wait_log("metrics are served")
    wait_for(lambda: beats.broker.messages(), 15, what="a dispatch")
    time.sleep(1.5)
    names = set()
    for text in (served.get("/metrics").text, request(f"http://127.0.0.1:{port}/metrics").text):
        for family in text_string_to_metric_families(text):
            if family.name.startswith("redbeat_safe_") and not family.name.endswith("_created"):  # prometheus_client's own
                names.add(family.name)
    documented = set(re.findall(r"^\| `(redbeat_safe_[a-z_]+)`", DOC.read_text(), re.M))
    served_names = {n + "_total" if n + "_total" in documented else n for n in names}
    assert served_names == documented, (sorted(served_names - documented), sorted(documented - served_names))


def test_damaged_counters_never_stop_a_beat(beats: BeatGroup, redis_server: RedisServer, served: Served) -> None:
    """The counters hash damaged by hand (a non-number, then not a hash at all): the
    acknowledgements and claims that count go on, and the count starts again."""
    client, k = redis_server.client(), Keys(beats.prefix)
    client.hset(k.counters, mapping={"s": "lots", "r": "7"})
    beat = beats.start({"e1": {"every": 1}}, "a")
    beat.wait_log("registered 1 static entries")
    wait_for(lambda: (client.hget(k.counters, "s") or b"").isdigit() and int(client.hget(k.counters, "s")) >= 2, 15,
             what="counting again")
    assert client.hget(k.counters, "r") == b"7"  # the other counter untouched
    client.delete(k.counters)
    client.set(k.counters, "not a hash")
    before = len(beats.broker.messages())
    wait_for(lambda: len(beats.broker.messages()) >= before + 3, 15, what="dispatches after the damage")
    wait_for(lambda: client.type(k.counters) == b"hash" and int(client.hget(k.counters, "s") or 0) >= 1, 15, what="a fresh counter")
    assert value(samples(served.get("/metrics").text), "redbeat_safe_dispatches_total", kind="scheduled") >= 1
    assert "Traceback" not in beat.output() and "refused a command" not in beat.output()


def test_an_acknowledgement_sent_again_in_a_new_call_counts_once(redis_server: RedisServer, prefix: str) -> None:
    """Found in review: after an error on the way back, a beat sends its acknowledgements
    again in its next call (a new reply key, so no replay): the counter moved twice."""
    from redbeat_safe.store import Ack, RedisStore

    store = RedisStore(redis_server.client(), prefix)
    api = Schedules(make_app(redis_server, prefix))
    api.upsert("e", "beatapp.record", every(60))
    redis_server.client().zadd(Keys(prefix).inflight, {"1000:e": store.now() + 10_000})
    for _ in range(3):
        store.ack([Ack("1000:e", "id-1", "s")], "beat")
    assert store.counters() == {"s": 1}
