"""Hostile input: fuzzed definitions and CLI arguments, and records planted in Redis by hand.

Every input gets a clear error or a correct entry; nothing is partly written;
nothing planted makes a pass fail, and every other entry keeps firing.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from typing import Any

import pytest
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_app
from harness import RedisServer
from redbeat_safe import DefinitionError, ScheduleError, Schedules, every, pattern
from redbeat_safe.cli import Failure, _json_arg, parse_interval
from redbeat_safe.config import Settings
from redbeat_safe.definitions import EntryDef
from redbeat_safe.engine import Engine
from redbeat_safe.store import Keys, RedisStore

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

names = st.one_of(
    st.text(min_size=0, max_size=40),
    st.text(alphabet="{}:\x00 \t\n/*?", min_size=1, max_size=10),
    st.integers(min_value=150, max_value=12_000).map(lambda n: "x" * n),
    st.sampled_from(["{tenant}:daily", "a:b:c", "日本語", "\udc80bad", "", None, 42]),
)
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
hostile_values = st.recursive(
    st.one_of(json_leaves, st.binary(max_size=10), st.just(object()), st.just({1, 2}), st.just(b"\xff\xfe")),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), inner, max_size=4)),
    max_leaves=20,
)
intervals = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.001, 0.01, 1e-9, 100 * 365 * 86400, 2000 * 365 * 86400, -1, 0]),
    st.integers(min_value=-10, max_value=10**15),
)
patterns = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["0 0 30 2 *", "0 0 31 4 *", "* * * * * * *", "61 * * * *", "*/0 * * * *", "@hourly", "@reboot",
                     "0 0 29 2 *", "*/1 * * * * *", "H * * * *", "0 0 L * *", "a b c d e", "* " * 600]),
)


def _schedule(kind: str, value: Any) -> Any:
    return every(value) if kind == "every" else pattern(value, tz="UTC")


@pytest.fixture(scope="module")
def fuzz_app(redis_server: RedisServer) -> Celery:
    return make_app(redis_server, f"fuzz{uuid.uuid4().hex[:8]}")


@FUZZ
@given(name=names, args=hostile_values, kwargs=hostile_values, kind=st.sampled_from(["every", "pattern"]),
       when=st.one_of(intervals, patterns))
def test_upsert_gives_a_clear_error_or_a_correct_entry_and_never_writes_half(
    fuzz_app: Celery, redis_server: RedisServer, name: Any, args: Any, kwargs: Any, kind: str, when: Any
) -> None:
    s = Schedules(fuzz_app)
    pattern_key = "{" + s.settings.key_prefix + "}*"
    before = sorted(redis_server.client().keys(pattern_key))
    try:
        schedule = _schedule(kind, when)
        s.upsert(name, "proj.task", schedule, args=args if isinstance(args, list) else [args], kwargs=kwargs if isinstance(kwargs, dict) else None)
    except (DefinitionError, ScheduleError) as exc:
        message = str(exc)
        assert message and len(message) < 2000 and "Traceback" not in message
        after = sorted(redis_server.client().keys(pattern_key))
        # refused: nothing new was written (a previous example's keys may exist)
        assert after == before or set(after) <= set(before) | {k for k in after if b":history:" in k}
        return
    stored = s.get(name)
    assert stored is not None and stored.name == name and stored.schedule == schedule
    raw = redis_server.client().hget(s.store.keys.defs, name)
    assert raw is not None and EntryDef.from_json(name, raw).args == stored.args  # reads back exactly
    s.remove(name)


def test_deep_nesting_and_huge_arguments_are_refused_clearly(app: Celery) -> None:
    deep: list[Any] = []
    cursor = deep
    for _ in range(5000):
        cursor.append([])
        cursor = cursor[0]
    s = Schedules(app)
    with pytest.raises(DefinitionError, match="nested more than"):
        s.upsert("deep", "t", every(5), args=[deep])
    with pytest.raises(DefinitionError, match="the limit is 262144"):
        s.upsert("huge", "t", every(5), args=["x" * 300_000])
    with pytest.raises(ScheduleError, match="the limit is 1000"):
        pattern("* " * 600, tz="UTC")
    assert s.upsert("ok", "t", every(days=100 * 365)) == "created"  # absurd but honourable: a correct entry


@FUZZ
@given(text=st.text(max_size=20))
def test_cli_intervals_parse_or_fail_with_exit_2(text: str) -> None:
    try:
        seconds = parse_interval(text)
    except Failure as exc:
        assert exc.code == 2 and "cannot read interval" in str(exc)
        return
    assert isinstance(seconds, float)
    if math.isfinite(seconds) and seconds >= 0.01:
        every(seconds) if seconds < 1e9 else None


@FUZZ
@given(text=st.text(max_size=40))
def test_cli_json_arguments_parse_or_fail_with_exit_2(text: str) -> None:
    for kind, what in ((list, "--args"), (dict, "--kwargs")):
        try:
            value = _json_arg(text, kind, what)
        except Failure as exc:
            assert exc.code == 2 and what in str(exc)
            continue
        assert isinstance(value, kind)


# -- records planted in Redis by hand ------------------------------------------------

PLANTED = [
    ("truncated-json", b'{"task": "x", "sched', None),
    ("not-an-object", b"[1, 2, 3]", None),
    ("wrong-types", json.dumps({"task": 5, "schedule": {"kind": "every", "interval_ms": "soon"}, "args": "x"}).encode(), None),
    ("unknown-kind", json.dumps({"task": "x", "schedule": {"kind": "lunar"}}).encode(), None),
    ("huge-number", json.dumps({"task": "x", "schedule": {"kind": "every", "interval_ms": 1000, "start": 10**30}}).encode(), None),
    ("deep", ("[" * 100_000 + "]" * 100_000).encode(), None),
    ("not-utf8", b'{"task": "\xff\xfe"}', None),
    ("bad-state", None, b"{not json"),
    ("state-array", None, b"[]"),
    ("state-bool-ver", None, json.dumps({"ver": True}).encode()),
    ("state-deep", None, ("[" * 100_000 + "]" * 100_000).encode()),
]


@pytest.mark.parametrize("name, definition, state", PLANTED, ids=[p[0] for p in PLANTED])
def test_a_planted_record_is_skipped_with_one_log_line_while_the_rest_fire(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, name: str, definition: bytes | None, state: bytes | None
) -> None:
    prefix = f"plant{uuid.uuid4().hex[:8]}"
    app = make_app(redis_server, prefix)
    api = Schedules(app)
    api.upsert("good", "t", every(seconds=0.05))
    api.upsert(name, "t", every(seconds=0.05))
    client, k = redis_server.client(), Keys(prefix)
    if definition is not None:
        client.hset(k.defs, name, definition)
    if state is not None:
        client.hset(k.state, name, state)
    published: list[tuple[str, int]] = []
    engine = Engine(RedisStore(client, prefix), Settings.from_app(app), lambda e, n, t: published.append((n, t)), max_interval=1.0)
    engine.register()
    with caplog.at_level(logging.ERROR, logger="redbeat_safe"):
        for _ in range(6):
            time.sleep(0.06)
            engine.run_once()  # never raises
    good = [t for n, t in published if n == "good"]
    assert len(good) >= 4 and all(b - a == 50 for a, b in zip(good, good[1:], strict=False))
    assert [n for n, _ in published if n == name] == []
    assert sum(f"entry {name!r}: set aside" in r.getMessage() for r in caplog.records) == 1, [r.getMessage() for r in caplog.records]
    assert client.zscore(k.due, name) is None  # set aside, not retried every pass
    api.upsert(name, "t", every(seconds=0.05))  # an upsert repairs it
    assert api.get(name) is not None


# -- state records that one JSON reader would take and another would not ---------------

#: Number spellings: Lua's cjson reads hex, leading zeros, "1." and inf/nan; Python's json
#: refuses them or reads them as floats; both must reach the same verdict, Lua's.
NUMBERS = ["1", "1.0", "1.5", "1e20", "1E2", "-0", "0x10", "007", "1.", "inf", "nan", "Infinity", "NaN", "-1",
           "9007199254740991", "9007199254740993", "1e400", '"1"', "true", "null", "[]", "{}"]
FIELDS = ("ver", "runs", "last", "hold", "trig", "ctime", "mtime", "enabled", "done", "dh", "sh", "src")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(NUMBERS + ['"static"', '"api"', '"x"', "false"]),
                               max_size=3))
def test_a_state_record_either_reads_as_valid_and_fires_or_is_set_aside_once(
    redis_server: RedisServer, changes: dict[str, str]
) -> None:
    """Planted after the engine cached the entry, with number spellings the two JSON
    readers disagree on: the entry fires on (a record Lua reads as valid) or is set aside
    with one log line; the other entry never stops; no pass raises or spins."""
    prefix = f"spell{uuid.uuid4().hex[:8]}"
    app = make_app(redis_server, prefix)
    api = Schedules(app)
    api.upsert("good", "t", every(seconds=0.05))
    api.upsert("odd", "t", every(seconds=0.05))
    client, k = redis_server.client(), Keys(prefix)
    published: list[tuple[str, int]] = []
    engine = Engine(RedisStore(client, prefix), Settings.from_app(app), lambda e, n, t: published.append((n, t)), max_interval=1.0)
    engine.register()
    for _ in range(2):
        time.sleep(0.06)
        engine.run_once()
    raw = client.hget(k.state, "odd")
    assert raw is not None
    record = raw.decode()
    for field, spelling in changes.items():  # splice the spelling in as raw JSON text
        head, sep, tail = record.partition(f'"{field}":')
        assert sep, field
        value_end = next(i for i, ch in enumerate(tail) if ch in ",}")
        record = head + sep + spelling + tail[value_end:]
    client.hset(k.state, "odd", record)
    before = len(published)
    passes, start = 0, time.monotonic()
    while time.monotonic() - start < 0.5:
        passes += 1
        time.sleep(min(engine.run_once(), 0.2))
    good = [t for n, t in published[before:] if n == "good"]
    assert len(good) >= 5 and all(b - a == 50 for a, b in zip(good, good[1:], strict=False)), good
    assert passes < 40, f"{passes} passes in 0.5 s"
    stored = api.get("odd")
    assert stored is not None
    odd = [t for n, t in published[before:] if n == "odd"]
    if stored.problem is None:  # read as valid: it keeps firing on its grid
        assert len(odd) >= 4 and all(b - a == 50 for a, b in zip(odd, odd[1:], strict=False)), (record, odd)
    else:  # damaged: set aside, shown with its problem, and an upsert repairs it
        assert len(odd) <= 1 and client.zscore(k.due, "odd") is None, (record, odd, stored.problem)
        assert api.upsert("odd", "t", every(seconds=0.05)) in ("repaired", "created", "updated")
        repaired = api.get("odd")
        assert repaired is not None and repaired.problem is None
    client.delete(*client.keys("{" + prefix + "}*"))
