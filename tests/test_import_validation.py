"""Crafted import files: the whole file is checked before anything is written.

`celery schedules import FILE` refuses a file with one bad field with exit 2,
one line naming the entry and the field, and writes nothing; hypothesis builds
whole documents (valid exports, then damaged) and checks the same of the API.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import BeatGroup, cli, make_app
from harness import RedisServer
from redbeat_safe import Schedules, every, pattern, transfer
from redbeat_safe.store import RedisStore
from redbeat_safe.transfer import ImportRefused, export, import_export

NOW_MS = 1_800_000_000_000


def document(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"format": "redbeat_safe-export", "version": 1, "prefix": "x", "exported_at_ms": NOW_MS, "entries": list(entries)}


def item(name: str, **changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "definition": {"task": "beatapp.record", "schedule": {"kind": "every", "interval_ms": 1000}, "args": [], "kwargs": {}, "options": {}},
        "enabled": True,
        "source": "api",
        "next_tick_ms": NOW_MS + 1000,
        "last_tick_ms": NOW_MS,
        "runs": 3,
    }
    out.update(changes)
    return out


def _raw(value: str) -> str:
    """A JSON text with ``value`` spliced in as the third entry's next tick (NaN and
    Infinity are not JSON, but Python's own reader takes them)."""
    doc = json.dumps(document(item("a"), item("b"), item("c", next_tick_ms="@@")))
    return doc.replace('"@@"', value)


CRAFTED = [
    ("string-tick", _raw('"abc"'), "'c': next_tick_ms"),
    ("nan-tick", _raw("NaN"), "NaN"),
    ("negative-tick", _raw("-5"), "'c': next_tick_ms"),
    ("infinite-tick", _raw("Infinity"), "Infinity"),
    ("float-tick", _raw("1800000001000.5"), "'c': next_tick_ms"),
    ("huge-tick", _raw("1e300"), "'c': next_tick_ms"),
    ("bool-tick", _raw("true"), "'c': next_tick_ms"),
    ("beyond-9999", _raw("253402300800000"), "'c': next_tick_ms"),
    ("next-before-last", json.dumps(document(item("a"), item("c", next_tick_ms=NOW_MS - 1000))), "'c': next_tick_ms"),
    ("negative-runs", json.dumps(document(item("a"), item("c", runs=-1))), "'c': runs"),
    ("string-runs", json.dumps(document(item("a"), item("c", runs="7"))), "'c': runs"),
    ("string-last", json.dumps(document(item("a"), item("c", last_tick_ms="x"))), "'c': last_tick_ms"),
    ("enabled-string", json.dumps(document(item("a"), item("c", enabled="no"))), "'c': enabled"),
    ("unknown-source", json.dumps(document(item("a"), item("c", source="root"))), "'c': source"),
    ("unknown-field", json.dumps(document(item("a"), item("c", nxt=5))), "'c': unknown field"),
    ("duplicate-names", json.dumps(document(item("a"), item("c"), item("c", runs=9))), "'c': appears 2 times"),
    ("duplicate-keys", json.dumps(document(item("a"))).replace('"runs": 3', '"runs": 3, "runs": 4'), "'runs' twice"),
    ("bad-name", json.dumps(document(item("a"), item("c\u202e"))), "format character"),
    ("deep", json.dumps(document(item("a"))).replace('"args": []', '"args": ' + "[" * 10_000 + "]" * 10_000), "nested"),
    ("entries-not-a-list", json.dumps({**document(), "entries": {"a": 1}}), "entries"),
    ("definition-not-an-object", json.dumps(document(item("a"), item("c", definition="x"))), "'c': definition"),
    ("bad-schedule", json.dumps(document(item("a"), item("c", definition={"task": "t", "schedule": {"kind": "lunar"}}))), "'c'"),
]


@pytest.mark.parametrize("label, text, says", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_a_crafted_import_file_exits_2_naming_the_entry_and_field_and_writes_nothing(
    beats: BeatGroup, redis_server: RedisServer, tmp_path: Path, label: str, text: str, says: str
) -> None:
    path = tmp_path / f"{label}.json"
    path.write_text(text)
    done = cli(beats, "import", str(path))
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert says in lines[0] and "nothing" in lines[0], lines[0]
    assert redis_server.client().keys("{" + beats.prefix + "}*") == []  # nothing written, not even the good entries


def test_a_good_file_still_imports_and_keeps_phase_and_counts(beats: BeatGroup, redis_server: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "good.json"
    path.write_text(json.dumps(document(item("a"), item("b", enabled=False, runs=0, last_tick_ms=None), item("c", next_tick_ms=None))))
    done = cli(beats, "import", str(path), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"] == {"a": "created", "b": "created", "c": "created"}
    app = make_app(redis_server, beats.prefix)
    a, b = Schedules(app).get("a"), Schedules(app).get("b")
    assert a is not None and a.next_tick is not None and int(a.next_tick.timestamp() * 1000) == NOW_MS + 1000 and a.total_runs == 3
    assert b is not None and not b.enabled and b.total_runs == 0
    c = Schedules(app).get("c")  # no next tick given: the first one after its last run
    assert c is not None and c.next_tick is not None and int(c.next_tick.timestamp() * 1000) == NOW_MS + 1000


def test_json_the_python_reader_takes_but_json_does_not_is_refused() -> None:
    for text in ("NaN", "[Infinity]", '{"a": -Infinity}', '{"a": 1, "a": 2}', "[" * 5000 + "]" * 5000):
        with pytest.raises(ImportRefused):
            transfer.loads(text)
    assert transfer.loads('{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}


# -- whole documents, fuzzed ------------------------------------------------------------

hostile = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.text(max_size=8),
    st.sampled_from([NOW_MS, NOW_MS + 5, 253402300799000, 253402300799001, -1, 0, 2**53 + 1, "1800000001000", [], {}]),
)
FIELDS = ["name", "definition", "enabled", "source", "next_tick_ms", "last_tick_ms", "runs", "extra"]
DEF_FIELDS = ["task", "schedule", "args", "kwargs", "options"]


@st.composite
def documents(draw: st.DrawFn) -> Any:
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "日本", "x:y"]), min_size=0, max_size=5, unique=True))
    if names and draw(st.integers(0, 9)) == 0:
        names.append(names[0])  # the same name twice
    entries: list[Any] = []
    for name in names:
        kind = draw(st.sampled_from(["every", "pattern"]))
        schedule = every(draw(st.sampled_from([0.5, 1, 60]))) if kind == "every" else pattern(draw(st.sampled_from(["*/5 * * * * *", "0 3 * * *"])), tz="Europe/Berlin")
        entry = item(name, definition={"task": "t", "schedule": schedule.to_json(), "args": [], "kwargs": {}, "options": {}})
        damage = draw(st.integers(0, 7))
        for _ in range(damage if damage <= 2 else 0):  # damage a field of the entry (most stay whole)
            where = draw(st.sampled_from(["entry", "definition"]))
            if where == "entry":
                entry[draw(st.sampled_from(FIELDS))] = draw(hostile)
            else:
                entry["definition"] = dict(entry["definition"]) if isinstance(entry["definition"], dict) else {}
                entry["definition"][draw(st.sampled_from(DEF_FIELDS))] = draw(hostile)
        if draw(st.integers(0, 19)) == 0:
            entry = draw(hostile)  # the whole entry replaced
        entries.append(entry)
    doc: Any = document(*entries)
    if draw(st.integers(0, 19)) == 0:
        doc[draw(st.sampled_from(["format", "version", "entries"]))] = draw(hostile)
    return doc


@pytest.fixture(scope="module")
def fuzz_store(redis_server: RedisServer) -> RedisStore:
    return RedisStore(redis_server.client(), f"imp{uuid.uuid4().hex[:8]}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=documents())
def test_an_import_document_is_refused_whole_or_imported_whole(fuzz_store: RedisStore, redis_server: RedisServer, doc: Any) -> None:
    client = redis_server.client()
    pattern_key = "{" + fuzz_store.keys.prefix + "}*"
    existing = client.keys(pattern_key)
    if existing:
        client.delete(*existing)
    try:
        report = import_export(fuzz_store, transfer.loads(json.dumps(doc, allow_nan=True)))
    except ImportRefused as exc:
        assert len(str(exc)) < 4000
        assert client.keys(pattern_key) == []
        event("refused")
        return
    event(f"imported {len(doc['entries'])} entries")
    names = [e["name"] for e in doc["entries"]]
    assert sorted(report.results) == sorted(names) and set(report.results.values()) <= {"created"}
    out = export(fuzz_store)  # everything written is readable, exportable and finite
    assert sorted(e["name"] for e in out["entries"]) == sorted(names)
    for e in out["entries"]:
        assert e["next_tick_ms"] is None or (isinstance(e["next_tick_ms"], int) and 0 <= e["next_tick_ms"] <= 253402300799000)
        assert isinstance(e["runs"], int) and e["runs"] >= 0
    assert all(math.isfinite(s) for _, s in client.zrange(fuzz_store.keys.due, 0, -1, withscores=True))
    again = import_export(fuzz_store, out)  # and an export imports back unchanged
    assert set(again.results.values()) <= {"unchanged"}


def test_a_last_tick_at_the_end_of_time_imports_as_finished_without_a_traceback(
    beats: BeatGroup, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Found in review: a pattern's next tick after year 9999 raised OverflowError in the
    cron arithmetic (exit 1, a traceback, the entries before it written). A schedule has
    no tick after its last possible one: the entry imports finished, the others as given."""
    late = {"task": "t", "schedule": pattern("0 3 * * *", tz="Europe/Berlin").to_json(), "args": [], "kwargs": {}, "options": {}}
    path = tmp_path / "late.json"
    path.write_text(json.dumps(document(item("a"), item("late", definition=late, next_tick_ms=None, last_tick_ms=253402300000000),
                                        item("z", enabled=False))))
    done = cli(beats, "import", str(path), "--json")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert json.loads(done.stdout)["results"] == {"a": "created", "late": "created", "z": "created"}
    entries = {e.name: e for e in Schedules(make_app(redis_server, beats.prefix)).list()}
    assert entries["late"].next_tick is None and entries["late"].problem is None
    assert entries["a"].next_tick is not None
