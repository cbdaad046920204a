"""Validation of entry definitions (pure logic): every refusal names the entry and the problem."""

from __future__ import annotations

import datetime as dt

import pytest
from celery.schedules import crontab

from redbeat_safe import every
from redbeat_safe.definitions import DefinitionError, EntryDef, build, from_beat_entry


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule": "*/5 * * * *"}, "ambiguous"),
        ({"args": [dt.datetime(2026, 1, 1)]}, "args contains a datetime"),
        ({"args": [b"bytes"]}, "args contains a bytes"),
        ({"args": [{1, 2}]}, "args contains a set"),
        ({"args": [float("nan")]}, "JSON cannot carry"),
        ({"kwargs": {1: "x"}}, "non-string key 1"),
        ({"kwargs": {"s": "\udc80"}}, "not valid UTF-8"),
        ({"args": "not-a-list"}, "args must be a list"),
        ({"kwargs": ["x"]}, "kwargs must be a dict"),
        ({"options": {"queue": "q", "bogus": 1}}, "unknown option 'bogus'"),
        ({"options": {"priority": 300}}, "priority must be between 0 and 255"),
        ({"options": {"expires": "soon"}}, "option 'expires' must be int or float"),
        ({"options": {"headers": {"k": object()}}}, "option 'headers' contains a object"),
        ({"task": ""}, "the task name is empty"),
        ({"task": None}, "the task name must be a string"),
    ],
)
def test_bad_input_is_refused_naming_the_entry(kwargs: dict, message: str) -> None:
    spec = {"name": "nightly", "task": "proj.tasks.report", "schedule": every(10)}
    spec.update(kwargs)
    with pytest.raises(DefinitionError) as info:
        build(spec.pop("name"), spec.pop("task"), spec.pop("schedule"), **spec, default_tz="UTC")
    assert "'nightly'" in str(info.value) and message in str(info.value)


@pytest.mark.parametrize(
    "name, message",
    [("", "empty"), ("x" * 10_000, "10000 characters long"), ("a\x00b", "control"), (123, "must be a string"),
     # names that display as something else: right-to-left override, zero-width joiner, BOM, line separator
     ("invoice\u202etxt.exe", "format character U\\+202E"), ("adm\u200din", "format character U\\+200D"),
     ("\ufeffdaily", "format character U\\+FEFF"), ("a\u2028b", "line separator")],
)
def test_bad_names(name: object, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        build(name, "t", every(1), default_tz="UTC")


def test_names_with_braces_and_colons_are_fine() -> None:
    e = build("{tenant}:daily:report", "t", every(1), default_tz="UTC")
    assert EntryDef.from_json(e.name, e.to_json()) == e


def test_beat_schedule_items_unknown_keys_and_missing_keys() -> None:
    with pytest.raises(DefinitionError, match="unknown key.*'enabled'"):
        from_beat_entry("x", {"task": "t", "schedule": 5, "enabled": False}, "UTC")
    with pytest.raises(DefinitionError, match="needs both 'task' and 'schedule'"):
        from_beat_entry("x", {"task": "t"}, "UTC")


def test_round_trip_is_exact_and_hash_stable() -> None:
    a = from_beat_entry(
        "e",
        {"task": "t", "schedule": crontab(minute="*/5"), "args": (1, "two"), "kwargs": {"b": [1.5, None]}, "options": {"queue": "q", "expires": 30}},
        "Europe/Berlin",
    )
    b = EntryDef.from_json("e", a.to_json())
    assert a == b and a.definition_hash == b.definition_hash
    assert a.args == [1, "two"]
    # the pattern took the app's zone at registration
    assert a.schedule.to_json()["tz"] == "Europe/Berlin"
    changed = from_beat_entry("e", {"task": "t", "schedule": crontab(minute="*/5"), "args": (1, "three")}, "Europe/Berlin")
    assert changed.schedule_hash == a.schedule_hash and changed.definition_hash != a.definition_hash
