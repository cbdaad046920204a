"""The task id is a contract with consumers: stable across hosts and releases."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from redbeat_safe.definitions import from_beat_entry
from redbeat_safe.dispatch import TASK_ID_NAMESPACE, message_options, task_id_for


def test_task_id_is_pinned() -> None:
    # a change here breaks every consumer that deduplicates on the id
    assert task_id_for("myapp", "nightly", 1767225600000) == "f1641c56-6284-557d-87db-d3c80c197f3e"


@given(st.text(max_size=40), st.text(max_size=200), st.integers(min_value=-(2**62), max_value=2**62))
def test_task_id_is_uuid5_of_prefix_name_and_tick(prefix: str, name: str, tick: int) -> None:
    expected = str(uuid.uuid5(TASK_ID_NAMESPACE, f"{prefix}\x00{name}\x00{tick}"))
    assert task_id_for.__wrapped__(prefix, name, tick) == expected
    assert task_id_for(prefix, name, tick) == expected


def test_options_merge_the_entrys_headers_with_ours() -> None:
    e = from_beat_entry("r", {"task": "t", "schedule": 5.0, "options": {"queue": "q", "headers": {"mine": 1}}}, "UTC")
    o = message_options(e, "app", 5000, instance="host:1:ab")
    assert o["queue"] == "q" and o["task_id"] == task_id_for("app", "r", 5000)
    assert o["headers"] == {"mine": 1, "redbeat_safe_entry": "r", "redbeat_safe_tick_ms": 5000, "celery_beat_task": True,
                            "redbeat_safe_instance": "host:1:ab"}
    assert e.options == {"queue": "q", "headers": {"mine": 1}}  # the entry is not mutated
