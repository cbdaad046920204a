"""What the demo measures: every publish and every execution, written to Redis.

Both records carry the entry and the nominal tick read from the message
headers, and a timestamp taken from the Redis server's clock (the same clock
the scheduler decides "due" with), so lateness is measured on one clock even
when the processes run on different hosts.

The tasks also deduplicate on the task id, as a consumer should where a rare
repeat matters: redbeat_safe re-publishes a tick with the *same* task id when
an instance dies between publishing and recording the publish (see
docs/guarantees.md). A repeat delivery is journaled as such and not run.

Nothing is recorded unless the app's ``journal_key`` setting is set, so the
example tasks stay ordinary tasks outside the demo.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery
from celery.signals import after_task_publish

#: One round trip: stamp the record with the server's clock and append it.
_PUBLISHED = """
local t = redis.call('TIME')
local rec = cjson.decode(ARGV[1])
rec.t = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('RPUSH', KEYS[1], cjson.encode(rec))
"""

#: The same, for an execution: the first delivery of a task id claims it
#: (SET NX, kept a day); a repeat is journaled under ``repeated`` instead.
_EXECUTED = """
local t = redis.call('TIME')
local rec = cjson.decode(ARGV[1])
rec.t = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', 86400) then
  redis.call('RPUSH', KEYS[2], cjson.encode(rec))
  return 1
end
redis.call('RPUSH', KEYS[3], cjson.encode(rec))
return 0
"""

_clients: dict[str, redis.Redis] = {}


def tick_of(headers: dict[str, Any] | None) -> tuple[str | None, int | None]:
    """(entry, nominal tick ms) from a beat message's headers.

    redbeat_safe sets ``redbeat_safe_entry`` and ``redbeat_safe_tick_ms``; other
    schedulers have no nominal tick, so the demo tags their entries with a
    ``demo_entry`` header of its own and infers ticks from the spacing.
    """
    headers = headers or {}
    entry = headers.get("redbeat_safe_entry") or headers.get("demo_entry")
    tick = headers.get("redbeat_safe_tick_ms")
    return (None if entry is None else str(entry)), (None if tick is None else int(tick))


def _client(app: Celery) -> redis.Redis:
    url = str(app.conf.broker_url)
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = redis.Redis.from_url(url, socket_timeout=5)
    return client


def first_delivery(task: Any) -> bool:
    """Called first thing by each example task: journal the run; False for a repeated task id."""
    request = task.request
    # Celery 5.7 hands custom message headers to the task both as
    # request.headers and as attributes of the request.
    headers = dict(request.headers or {})
    for name in ("redbeat_safe_entry", "redbeat_safe_tick_ms", "demo_entry"):
        if name not in headers and getattr(request, name, None) is not None:
            headers[name] = getattr(request, name)
    entry, tick = tick_of(headers)
    key = task.app.conf.get("journal_key")
    if not key or entry is None:
        return True
    record = {"entry": entry, "tick": tick, "id": request.id, "pid": os.getpid()}
    keys = (f"{key}:seen:{request.id}", f"{key}:executed", f"{key}:repeated")
    return bool(_client(task.app).eval(_EXECUTED, len(keys), *keys, json.dumps(record)))


def watch_publishes(app: Celery) -> None:
    """Record every message a beat publishes (in the beat's own process)."""

    @after_task_publish.connect(weak=False)
    def _published(sender: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        entry, tick = tick_of(headers)
        key = app.conf.get("journal_key")
        if key and entry is not None and headers is not None:
            record = {"entry": entry, "tick": tick, "id": headers.get("id"), "pid": os.getpid()}
            _client(app).eval(_PUBLISHED, 1, f"{key}:published", json.dumps(record))
