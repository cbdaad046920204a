"""Turning a claimed tick into a Celery message with a deterministic identity."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from celery import Celery

from .definitions import RESERVED_HEADER_PREFIX, RESERVED_HEADERS, EntryDef

#: Fixed namespace: the same (prefix, entry, tick) gives the same task id on
#: every host and every release, so consumers can deduplicate on it.
TASK_ID_NAMESPACE = uuid.UUID("5b0f9a4e-3c1d-4e7a-9a57-6f1f2d9c8b21")
HEADER_ENTRY = "redbeat_safe_entry"
HEADER_TICK = "redbeat_safe_tick_ms"
HEADER_TRIGGER = "redbeat_safe_trigger"
HEADER_INSTANCE = "redbeat_safe_instance"
_NS = TASK_ID_NAMESPACE.bytes


@lru_cache(maxsize=4096)  # the engine asks twice per tick: to publish, then to acknowledge
def task_id_for(prefix: str, name: str, tick_ms: int) -> str:
    """``str(uuid.uuid5(TASK_ID_NAMESPACE, "<prefix>\\0<name>\\0<tick>"))``, computed
    without the UUID object: it is on the hot path (a test pins the equality)."""
    h = bytearray(hashlib.sha1(_NS + f"{prefix}\x00{name}\x00{int(tick_ms)}".encode(), usedforsecurity=False).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50  # version 5
    h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def jitter_offset(prefix: str, name: str, tick_ms: int, jitter_ms: int) -> int:
    """The delay in [0, jitter) a tick is published with: the same for the same (prefix,
    entry, tick) on every beat, spread evenly across entries and ticks (from the task id's
    hash, so two beats holding the same tick agree)."""
    if jitter_ms <= 0:
        return 0
    digest = hashlib.sha1(f"jitter\x00{prefix}\x00{name}\x00{int(tick_ms)}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") % jitter_ms


def _reserved(header: Any) -> bool:
    return not isinstance(header, str) or header in RESERVED_HEADERS or header.startswith(RESERVED_HEADER_PREFIX)


def expiry_ms(entry: EntryDef, default: int | str | None = None) -> int | None:
    """How long after its nominal tick a tick's message expires: the schedule's
    ``expires_after``, else the ``redbeat_safe_expires_after`` default ("interval":
    one interval of an ``every`` entry), else none. An entry that sets Celery's own
    ``expires`` option (relative to the send) keeps it and takes no default."""
    sched = entry.schedule
    if sched.expires_after_ms is not None:
        return sched.expires_after_ms
    if default is None or "expires" in entry.options:
        return None
    if default == "interval":
        return getattr(sched, "interval_ms", None)
    return int(default)


def message_options(entry: EntryDef, prefix: str, tick_ms: int, trigger: bool = False, instance: str | None = None,
                    default_expiry: int | str | None = None) -> dict[str, Any]:
    """apply_async options: the entry's own, its headers merged with ours."""
    options = dict(entry.options)
    after = None if trigger else expiry_ms(entry, default_expiry)
    if after is not None:  # per tick: a worker discards it this long after the nominal tick, not after the send
        options["expires"] = datetime.fromtimestamp((tick_ms + after) / 1000, tz=timezone.utc)
    # definitions with reserved headers are refused when written; dropping them here
    # too means no path can hand Celery a header that replaces its task or id
    headers = {k: v for k, v in (options.pop("headers", None) or {}).items() if not _reserved(k)}
    headers.update({HEADER_ENTRY: entry.name, HEADER_TICK: int(tick_ms), "celery_beat_task": True})
    if trigger:
        headers[HEADER_TRIGGER] = True
    if instance:
        headers[HEADER_INSTANCE] = instance
    options["headers"] = headers
    options["task_id"] = task_id_for(prefix, entry.name, tick_ms)
    return options


def confirming(app: Celery) -> dict[str, Any]:
    """Transport options for publishing ticks: publisher confirms on an AMQP broker.

    Without confirms, RabbitMQ's ``basic_publish`` returns before the broker
    has the message, so a tick could be acknowledged as published and then
    lost with the broker. Celery leaves them off; beats turn them on unless
    ``broker_transport_options`` says ``confirm_publish`` either way.
    """
    if "confirm_publish" in (app.conf.broker_transport_options or {}):
        return {}
    conn = app.connection_for_write()
    try:
        driver = conn.transport.driver_type
    finally:
        conn.release()
    return {"confirm_publish": True} if driver == "amqp" else {}


def publish(
    app: Celery, entry: EntryDef, prefix: str, tick_ms: int, producer: Any = None, trigger: bool = False, instance: str | None = None,
    default_expiry: int | str | None = None,
) -> str:
    """Send one tick the way Celery beat does (the registered task if any, else by name)."""
    options = message_options(entry, prefix, tick_ms, trigger, instance, default_expiry)
    task = app.tasks.get(entry.task)
    if task is not None:
        result = task.apply_async(list(entry.args), dict(entry.kwargs), producer=producer, **options)
    else:
        result = app.send_task(entry.task, list(entry.args), dict(entry.kwargs), producer=producer, **options)
    return str(result.id)
