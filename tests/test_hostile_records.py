"""Whoever can write under the prefix: planted records, hostile headers and routing
names, and a definition changed over and over. A real beat keeps firing every
healthy entry, never publishes anything the definition does not name, and its
memory follows the number of entries; the operator's views never crash.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import BeatGroup, cli, make_app
from harness import Broker, RedisServer, wait_for
from history import assert_exactly_once, check
from redbeat_safe import DefinitionError, Schedules, every, pattern
from redbeat_safe.definitions import RESERVED_HEADERS, EntryDef, build
from redbeat_safe.dispatch import message_options, publish, task_id_for
from redbeat_safe.store import Keys, RedisStore, UpsertItem

SCHEDULE = {"e1": {"every": 1}}


def plant(client: Any, prefix: str, entry: EntryDef) -> None:
    """Write a definition the way a hostile writer with script access could: past every
    check in Python (upsert.lua stores what it is given)."""
    item = UpsertItem(entry.name, None, entry.to_json(), entry.definition_hash, entry.schedule_hash, "api",
                      int(time.time() * 1000) + 500, True)
    assert RedisStore(client, prefix).upsert([item]) == [True]


def raw_entry(name: str, options: dict[str, Any], task: str = "beatapp.record") -> EntryDef:
    """An EntryDef built without validation, as a planted record would read."""
    return EntryDef(name=name, task=task, schedule=every(0.5), args=[], kwargs={}, options=options)


# -- 2. planted records ------------------------------------------------------------------

JUNK_MEMBERS = ["junk", "abc:good", ":", "12:", "-5:e1", "1e3:e1", "99999999999999999999:e1", "\u0661\u0662:e1", "5:nobody"]


def test_planted_in_flight_records_never_crash_a_beat(beats: BeatGroup, redis_server: RedisServer) -> None:
    client, k = redis_server.client(), Keys(beats.prefix)
    client.zadd(k.inflight, {m: 0 for m in JUNK_MEMBERS})
    client.zadd(k.inflight, {"7:ghost": float("inf"), "8:ghost": float("-inf")})
    client.hset(k.flight, "abc:good", b"\xff not json")
    a = beats.start(SCHEDULE, "a", BEAT_LEASE="2")
    a.wait_log("registered 1 static entries")
    wait_for(lambda: len(beats.broker.messages()) >= 5, 20, what="five dispatches")
    b = beats.start(SCHEDULE, "b", BEAT_LEASE="2")  # a second beat, started after the plant was reaped
    b.wait_log("registered 1 static entries")
    time.sleep(2)
    assert a.proc is not None and a.proc.poll() is None and b.proc is not None and b.proc.poll() is None
    beats.stop_all()
    out = a.output()
    assert "Traceback" not in out and "CRITICAL" not in out, out[-3000:]
    left = {m.decode("utf-8", "surrogateescape") for m in client.zrange(k.inflight, 0, -1)}
    assert left <= {"7:ghost"}, left  # every due plant dropped (one that is never due stays, shown by status)
    messages = [m for m in beats.broker.messages() if m.entry == "e1" and m.tick > 10**12]
    assert_exactly_once(check(messages, beats.prefix, {"e1": every(1)}), min_ticks=4)
    assert not [m for m in beats.broker.messages() if m.entry not in ("e1",)], "a planted record was published"


def test_an_unforeseen_exception_never_leaves_tick(beats: BeatGroup) -> None:
    """Registration fails twice (at start, then in a tick), then five passes in a row
    raise KeyError (BuggyEngine). Before, the exception left Scheduler.tick() and
    Celery ended the beat ("beat raised exception ... KeyError", exit 1). Now: one
    ERROR line with the traceback per distinct failure, and the beat goes on firing."""
    a = beats.start(SCHEDULE, "a", scheduler="beatapp.BuggyScheduler", BEAT_BUG_REGISTER="2", BEAT_BUG_FROM="2", BEAT_BUG_TO="6")
    a.wait_log("registered 1 static entries", timeout=30)  # registration failed twice (at start, in the first tick)
    wait_for(lambda: len([m for m in beats.broker.messages() if m.entry == "e1"]) >= 4, 30, what="dispatches after the failures")
    assert a.proc is not None and a.proc.poll() is None
    beats.stop_all()
    out = a.output()
    failed = [line for line in out.splitlines() if "a scheduling pass failed" in line]
    assert len(failed) == 2 and all("ERROR" in line and "KeyError" in line for line in failed), out[-3000:]
    assert "planted bug in registration" in failed[0] and "'planted bug'" in failed[1]
    assert "Traceback" in out and "CRITICAL" not in out, out[-3000:]
    assert_exactly_once(check(beats.broker.messages(), beats.prefix, {"e1": every(1)}), min_ticks=3)


def test_planted_history_instance_and_score_records_never_break_the_operator_views(
    beats: BeatGroup, redis_server: RedisServer
) -> None:
    app = make_app(redis_server, beats.prefix)
    api = Schedules(app)
    api.upsert("good", "beatapp.record", every(60))
    api.upsert("late", "beatapp.record", every(60))
    client, k = redis_server.client(), Keys(beats.prefix)
    client.lpush(k.history("good"), b"junk", b"[]", b"{}", json.dumps({"tick": "x", "id": 1, "by": None, "at": 1e400}).encode(),
                 json.dumps({"tick": 10**30, "id": "i", "by": "b", "at": 5, "kind": "s"}).encode(), b"\xff\xfe",
                 json.dumps({"tick": 1_800_000_000_000, "id": "ok-id", "by": "b1", "at": 1_800_000_000_010, "kind": "s"}).encode())
    client.zadd(k.instances, {"inst-junk": 1e300, "inst-inf": float("inf"), "inst-neg": float("-inf"), "inst-ok": time.time() * 1000 + 60_000})
    client.hset(k.instinfo, mapping={"inst-junk": b"{not json", "inst-inf": json.dumps({"pid": "x", "ttl": True, "static": 5, "started": "y"}),
                                     "inst-neg": json.dumps([1, 2]), "inst-ok": json.dumps({"host": "h", "pid": 7, "ttl": 1000, "static": ["a"]})})
    client.hset(k.inststats, mapping={"inst-junk": b"x", "inst-ok": b"12", "inst-inf": b"1e999"})
    client.zadd(k.inflight, {"junk": 5, "x:late": float("inf"), "99999999999999999999:late": 1})
    client.zadd(k.due, {"late": float("inf")})

    history = api.history("good")
    assert [d.task_id for d in history] == ["ok-id"]  # the readable record; the rest skipped
    ok = next(i for i in api.instances() if i.id == "inst-ok")
    assert ok.pid == 7 and ok.ticks_dispatched == 12 and ok.alive
    assert {i.id for i in api.instances()} == {"inst-junk", "inst-inf", "inst-neg", "inst-ok"}
    status = api.status()
    junk = {f["name"]: f for f in status["in_flight"]}
    assert set(junk) == {"junk", "x:late", "99999999999999999999:late"}, junk  # listed, flagged, not raised on
    assert all(f["tick_ms"] is None and "not a <tick>:<entry>" in f["problem"] for f in junk.values()), junk
    assert any(d["name"] == "late" for d in status["damaged"])
    for args in (["status"], ["status", "--json"], ["list"], ["list", "--json"], ["show", "late"], ["history", "good"],
                 ["history", "good", "--json"], ["export"]):
        done = cli(beats, *args)
        wanted = 1 if args[0] == "status" else 0  # status: not all is well (damaged, stuck in flight)
        assert done.returncode == wanted and "Traceback" not in done.stderr, (args, done.stderr[-2000:])
    assert "ok-id" in cli(beats, "history", "good").stdout


# -- 3. an old due tick of a dense pattern -----------------------------------------------

def test_a_dense_pattern_due_long_ago_does_not_stall_the_beat(beats: BeatGroup, tmp_path: Path) -> None:
    """"Every second of last month", imported with its next tick on the 1st of that
    month. Before, planning it walked each of its ~2.6M ticks (a minute at full CPU, in
    every beat at once) and the every-second entry lost ticks meanwhile. Now the one
    coalesced tick goes out at once and e1 has no gap."""
    now = datetime.now(timezone.utc)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = (month_start - timedelta(days=1)).replace(day=1)
    first_ms = int(last_month.timestamp() * 1000)
    old = pattern(f"* * * * {last_month.month} *", tz="UTC")
    a = beats.start(SCHEDULE, "a")
    a.wait_log("registered 1 static entries")
    doc = {"format": "redbeat_safe-export", "version": 1, "prefix": beats.prefix, "exported_at_ms": first_ms, "entries": [{
        "name": "old", "enabled": True, "source": "api", "next_tick_ms": first_ms, "last_tick_ms": first_ms - 1000, "runs": 0,
        "definition": {"task": "beatapp.record", "schedule": old.to_json(), "args": [], "kwargs": {}, "options": {}}}]}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(doc))
    done = cli(beats, "import", str(path))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: any(m.entry == "old" for m in beats.broker.messages()), 20, what="the old entry's coalesced tick")
    seen = len([m for m in beats.broker.messages() if m.entry == "e1"])
    wait_for(lambda: len([m for m in beats.broker.messages() if m.entry == "e1"]) >= max(seen + 4, 6), 20, what="e1 going on")
    beats.stop_all()
    messages = beats.broker.messages()
    assert [m.tick for m in messages if m.entry == "old"] == [int(month_start.timestamp() * 1000) - 1000]  # its last second
    assert_exactly_once(check(messages, beats.prefix, {"e1": every(1)}), min_ticks=5)


def test_ticks_at_the_end_of_time_are_shown_east_of_utc(beats: BeatGroup, redis_server: RedisServer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: a tick near 9999-12-31 23:59:59 UTC is past year 9999 in Tokyo,
    and `list`/`history` died with OverflowError there (CI runs in UTC)."""
    api = Schedules(make_app(redis_server, beats.prefix))
    api.upsert("edge", "beatapp.record", every(60))
    client, k = redis_server.client(), Keys(beats.prefix)
    client.zadd(k.due, {"edge": 253402300799000})
    client.lpush(k.history("edge"), json.dumps({"tick": 253402300799000, "id": "edge-id", "by": "b", "at": 253402300799001,
                                                "kind": "s"}).encode())
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    for args in (["list"], ["history", "edge"], ["status"], ["show", "edge"]):
        done = cli(beats, *args)
        wanted = 1 if args[0] == "status" else 0  # status: no beat is alive here
        assert done.returncode == wanted and "Traceback" not in done.stderr, (args, done.stderr[-2000:])
    assert "9999-12-31" in cli(beats, "history", "edge").stdout


# -- 4. headers that would replace Celery's own ----------------------------------------

@pytest.mark.parametrize("header", ["task", "id", "eta", "argsrepr", "origin", "headers", "reply_to", "redbeat_safe_tick_ms", "redbeat_safe_entry"])
def test_user_headers_cannot_set_celerys_or_our_headers(header: str) -> None:
    with pytest.raises(DefinitionError, match=f"header '{header}' is Celery's or redbeat_safe's own"):
        build("e", "proj.report", every(1), options={"headers": {header: "x"}}, default_tz="UTC")
    # and a definition that got past the check some other way still cannot
    options = message_options(raw_entry("e", {"headers": {header: "x", "mine": 1}}), "p", 5000)
    assert options["headers"]["mine"] == 1 and options["headers"]["redbeat_safe_entry"] == "e"
    assert options["headers"]["redbeat_safe_tick_ms"] == 5000 and options["task_id"] == task_id_for("p", "e", 5000)
    assert not {header} & set(options["headers"]) - {"redbeat_safe_entry", "redbeat_safe_tick_ms"}


def test_the_reserved_headers_are_every_header_celery_writes(app: Celery) -> None:
    """The list follows Celery: every header of a real task message is reserved."""
    message = app.amqp.as_task_v2("tid", "proj.t", args=(), kwargs={})
    assert set(message.headers) <= RESERVED_HEADERS
    # and every name a worker copies into task.request: a "headers" header is re-sent by retry()
    from celery.app.task import Context
    assert {k for k in vars(Context) if not k.startswith("_")} <= RESERVED_HEADERS


ROUTING = [("queue", "{victim}:history:target"), ("exchange", "{victim}"), ("routing_key", "a{b}c"), ("queue", "_kombu.binding.celery"),
           ("queue", "unacked")]


@pytest.mark.parametrize("policy", [{"max_retries": None}, {"max_retries": 11}, {"interval_max": 3600}, {"interval_start": -1},
                                    {"interval_step": True}, {"errback": "x"}])
def test_a_retry_policy_that_could_hold_a_beat_is_refused(policy: dict[str, Any]) -> None:
    """Found in review: {"max_retries": None, "interval_max": 3600} made kombu retry a failed
    publish for ever, inside the beat, holding every other entry."""
    with pytest.raises(DefinitionError, match="retry_policy"):
        build("e", "t", every(1), options={"retry": True, "retry_policy": policy}, default_tz="UTC")
    assert build("e", "t", every(1), options={"retry_policy": {"max_retries": 3, "interval_start": 0, "interval_step": 0.2,
                                                                 "interval_max": 0.2}}, default_tz="UTC")


@pytest.mark.parametrize("option, value", ROUTING)
def test_routing_names_that_reach_into_other_keys_are_refused(option: str, value: str) -> None:
    with pytest.raises(DefinitionError, match=option):
        build("e", "t", every(1), options={option: value}, default_tz="UTC")


def test_a_planted_hostile_definition_is_set_aside_and_nothing_is_published_with_it(
    beats: BeatGroup, redis_server: RedisServer
) -> None:
    """The store shares the broker's database here (the default when
    redbeat_safe_redis_url is unset): a queue name could be one of our keys."""
    client = redis_server.client()
    plant(client, beats.prefix, raw_entry("hijack", {"headers": {"task": "proj.admin.drop_everything", "id": "attacker-chosen-id"}}))
    plant(client, beats.prefix, raw_entry("redirect", {"queue": "{victim}:history:target"}))
    plant(client, beats.prefix, raw_entry("fine", {"headers": {"mine": "yes"}}))
    broker = Broker(redis_server, beats.queue, db=0)
    a = beats.start(SCHEDULE, "a", BEAT_BROKER_URL=broker.url)
    a.wait_log("registered 1 static entries")
    wait_for(lambda: len([m for m in broker.messages() if m.entry == "fine"]) >= 3, 20, what="the fine entry firing")
    time.sleep(1)
    beats.stop_all()
    messages = broker.messages()
    assert {m.task for m in messages} == {"beatapp.record"}, {m.task for m in messages}
    assert {m.entry for m in messages} == {"e1", "fine"}
    assert all(m.task_id == task_id_for(beats.prefix, m.entry, m.tick) for m in messages)
    assert client.exists("{victim}:history:target") == 0
    out = a.output()
    assert "entry 'hijack'" in out and "entry 'redirect'" in out and "set aside" in out, out[-3000:]
    problems = {e.name: e.problem for e in Schedules(make_app(redis_server, beats.prefix)).list()}
    assert problems["hijack"] and "is Celery's or redbeat_safe's own" in problems["hijack"]
    assert problems["redirect"] and "brace" in problems["redirect"]
    assert problems["fine"] is None


# -- 6. the definition cache ---------------------------------------------------------------

def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_beat_caches_one_definition_per_entry_however_often_it_changes(beats: BeatGroup, redis_server: RedisServer) -> None:
    app = make_app(redis_server, beats.prefix)
    api = Schedules(app)
    blob = "x" * 200_000
    api.upsert("big", "beatapp.record", every(0.05), kwargs={"v": 0, "blob": blob})
    a = beats.start(SCHEDULE, "a", BEAT_MAX_INTERVAL="1")
    a.wait_log("registered 1 static entries")
    assert a.proc is not None
    wait_for(lambda: any(m.entry == "big" for m in beats.broker.messages()), 20, what="the big entry firing")
    time.sleep(1)
    before = _rss_kib(a.proc.pid)
    for v in range(1, 301):
        api.upsert("big", "beatapp.record", every(0.05), kwargs={"v": v, "blob": blob})
        time.sleep(0.03)
    time.sleep(1)
    grown = _rss_kib(a.proc.pid) - before
    seen = {m.kwargs["v"] for m in beats.broker.messages() if m.entry == "big"}
    beats.stop_all()
    assert len(seen) >= 100, f"the beat saw only {len(seen)} versions"  # it did parse many versions
    assert grown < 20 * 1024, f"beat RSS grew by {grown / 1024:.1f} MiB over {len(seen)} versions of one entry"


# -- whole stored definitions, fuzzed -------------------------------------------------

WORDS = sorted(RESERVED_HEADERS) + ["redbeat_safe_entry", "redbeat_safe_tick_ms", "mine", "x-trace", "", "{p}:due", "_kombu.binding.q"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=12) | st.sampled_from(WORDS),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
names = st.sampled_from(WORDS) | st.text(max_size=8)
#: Mostly well-typed, so that most documents get past the type checks to the ones that matter.
header_dicts = st.dictionaries(names, json_values, max_size=4)
options_strategy = st.fixed_dictionaries({}, optional={
    "queue": names | json_values, "routing_key": names, "exchange": names, "shadow": names,
    "priority": st.integers(0, 9), "expires": st.integers(0, 10**6), "headers": header_dicts | header_dicts | json_values,
    "bogus": json_values,
})


def mostly(valid: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(valid), st.just(valid), st.just(valid), json_values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.fixed_dictionaries(
    {"task": mostly("beatapp.record"), "schedule": mostly(every(1).to_json()), "args": mostly([]), "kwargs": mostly({}),
     "options": options_strategy},
    optional={"junk": json_values}))
def test_any_stored_definition_is_refused_or_publishes_exactly_what_it_declares(memory_app: Celery, doc: dict[str, Any]) -> None:
    """A planted definition, as a whole JSON document: reading it raises DefinitionError
    (the entry is set aside) or gives an entry whose real Celery message carries its
    declared task, its deterministic id, our headers and routing names of its own."""
    try:
        entry = EntryDef.from_json("e", json.dumps(doc))
    except DefinitionError:
        event("refused")
        return
    event("accepted, with headers" if entry.options.get("headers") else "accepted")
    tick = 1_800_000_000_000
    with memory_app.producer_or_acquire() as producer:
        sent: list[Any] = []
        producer.publish = lambda body, **kw: sent.append(kw)  # capture what kombu would be handed
        publish(memory_app, entry, "p", tick, producer=producer)
    headers = sent[0]["headers"]
    assert headers["task"] == entry.task and headers["id"] == task_id_for("p", "e", tick)
    assert headers["redbeat_safe_entry"] == "e" and headers["redbeat_safe_tick_ms"] == tick and headers["celery_beat_task"] is True
    for option in ("queue", "exchange", "routing_key"):
        value = entry.options.get(option)
        assert value is None or ("{" not in value and "}" not in value and not value.startswith("_kombu.")), entry.options


@pytest.fixture(scope="module")
def memory_app() -> Celery:
    return Celery("fuzz", broker="memory://", set_as_current=False)
