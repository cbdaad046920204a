"""Running an entry by hand, outside its schedule, exactly once per request.

A trigger is claimed like a tick (in flight, under a lease held by the caller)
at a tick that is none of the schedule's own, then published, then
acknowledged. The request id pins the claimed tick for a day
(``store.REQUEST_TTL_MS``): the same request sent twice, whether by redis-py
after a lost reply or by a caller retrying after an exception, is one run with
one task id. If the caller dies before publishing, a beat's reaper publishes
the run after the lease; a retry of the request then finds it sent.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Callable

from .definitions import DefinitionError, EntryDef
from .dispatch import task_id_for
from .registry import ATTEMPTS, EntryDamaged, read_entry
from .schedules import every
from .store import Ack, RedisStore, member

#: (entry, entry name, tick ms) -> None: sends the message; raises if it was not sent.
Send = Callable[[EntryDef, str, int], None]
MAX_REQUEST_ID = 200


def new_request_id() -> str:
    return uuid.uuid4().hex


def check_request_id(request_id: str) -> str:
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_REQUEST_ID:
        raise DefinitionError(f"a trigger request id must be a non-empty string of at most {MAX_REQUEST_ID} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in request_id):
        raise DefinitionError("a trigger request id must not contain control characters")
    return request_id


def trigger(store: RedisStore, name: str, send: Send, *, lease_ms: int, caller: str, request_id: str | None = None) -> str:
    """Run ``name`` now, once for ``request_id`` (a new one when None); returns the task id."""
    request = check_request_id(request_id) if request_id is not None else new_request_id()
    for _ in range(ATTEMPTS):
        entry, st, stored = read_entry(store, name)
        sched = entry.schedule
        if isinstance(sched, every):
            anchor = stored.score or st.hold or st.last or sched.start_ms or 0
            step = sched.interval_ms
        else:
            step, anchor = 1000, 0  # pattern ticks fall on whole seconds
        got = store.trigger(name, request, caller, st.version, step, anchor, lease_ms)
        if got.outcome == "changed":
            continue  # changed between the read and the claim: read it again
        if got.tick is None:
            raise EntryDamaged(name, got.outcome)
        task_id = task_id_for(store.keys.prefix, name, got.tick)
        if got.outcome != "claimed":
            return task_id  # "sent" before, or "taken" over by a beat, which publishes it
        try:
            send(entry, name, got.tick)
        except BaseException:
            store.cancel_trigger(name, request, caller)  # not sent: a retry of this request sends the same tick
            raise
        store.ack([Ack(member(name, got.tick), task_id, "t")], caller)
        return task_id
    raise RuntimeError(f"entry {name!r} kept changing; trigger not sent")
