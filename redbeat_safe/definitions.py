"""Entry definitions: validation, canonical JSON and Celery ``beat_schedule`` import.

Everything is checked before anything is written: a definition that cannot be
stored as plain JSON and read back identically is refused with a message
that names the entry and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import tzinfo
from functools import cached_property
from typing import Any, Union

from .schedules import Schedule, ScheduleError, from_celery, pattern

MAX_NAME_LENGTH = 200
MAX_DEFINITION_BYTES = 256 * 1024
#: Deeper than this is refused (and Python's JSON would hit its recursion limit anyway).
MAX_DEPTH = 64
#: The run options' keys in a stored schedule.
RUN_OPTION_JSON = frozenset({"overlap", "terminate", "expires_after_ms", "jitter_ms"})
#: Run options a beat_schedule item may give beside its schedule (see Schedule._run_options).
RUN_OPTION_KEYS = ("overlap", "terminate", "expires_after", "jitter")
BEAT_ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative", *RUN_OPTION_KEYS})

_STR = (str,)
_NUM = (int, float)
#: apply_async options an entry may carry, with the types each accepts.
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "queue": _STR,
    "routing_key": _STR,
    "exchange": _STR,
    "exchange_type": _STR,
    "priority": (int,),
    "expires": _NUM,
    "headers": (dict,),
    "serializer": _STR,
    "compression": _STR,
    "time_limit": _NUM,
    "soft_time_limit": _NUM,
    "ignore_result": (bool,),
    "shadow": _STR,
    "retry": (bool,),
    "retry_policy": (dict,),
    "delivery_mode": (int, str),
    "countdown": _NUM,
}


#: Characters a name may not hold: they are invisible or change how the text around
#: them is shown (U+202E reverses it), so a displayed name could be spoofed.
_REFUSED_CATEGORIES = {"Cc": "control character", "Cs": "invalid character", "Cf": "format character",
                       "Zl": "line separator", "Zp": "paragraph separator"}
HIDDEN_CATEGORIES = frozenset(_REFUSED_CATEGORIES)


#: Message headers Celery itself writes (task protocol 2) and the ones redbeat_safe
#: adds. A user header of the same name would replace them when Celery sends the
#: message (its send_task_message applies ``headers`` over its own), so the worker
#: would run another task or id than the entry shows: refused.
RESERVED_HEADERS = frozenset({
    # the protocol-2 headers of every task message
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit", "root_id",
    "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting", "stamped_headers",
    "stamps", "celery_beat_task",
    # what a worker copies from the headers into task.request (celery.app.task.Context): a header
    # "headers" there is passed on by Task.retry(), whose message would carry its task and id
    "args", "kwargs", "headers", "callbacks", "errbacks", "chain", "chord", "children", "correlation_id",
    "delivery_info", "reply_to", "hostname", "is_eager", "called_directly", "properties", "taskset", "utc",
    "logfile", "loglevel", "time_limit", "soft_time_limit", "compression", "clear", "get", "update",
    "as_execution_options",
})
RESERVED_HEADER_PREFIX = "redbeat_safe_"
#: Routing options. On a Redis broker a queue name is a key name, so one that
#: looks like ours (braces: ``{prefix}:...``) or like kombu's own bookkeeping
#: could write into keys that are not queues.
ROUTING_OPTIONS = ("queue", "exchange", "routing_key")
_KOMBU_KEYS = ("unacked", "unacked_index", "unacked_mutex")


def _check_headers(headers: Mapping[str, Any], where: str) -> None:
    for key in headers:
        if not isinstance(key, str):
            raise DefinitionError(f"{where}: header names must be strings, not {key!r:.40}")
        if key in RESERVED_HEADERS or key.startswith(RESERVED_HEADER_PREFIX):
            raise DefinitionError(
                f"{where}: header {key!r} is Celery's or redbeat_safe's own and cannot be set by an entry "
                f"(reserved: {', '.join(sorted(RESERVED_HEADERS))}, and every {RESERVED_HEADER_PREFIX}* name)"
            )


#: kombu's publish retry runs inside the beat's publish: a policy without bounds
#: (max_retries None, hour-long intervals) would hold every other entry of that beat,
#: then of the beat that reaps the tick. At most ~10 s in all, the default lease.
RETRY_POLICY_BOUNDS = {"max_retries": 10, "interval_start": 1.0, "interval_step": 1.0, "interval_max": 1.0}


def _check_retry_policy(policy: Mapping[str, Any], where: str) -> None:
    for key, value in policy.items():
        bound = RETRY_POLICY_BOUNDS.get(key)
        if bound is None:
            raise DefinitionError(f"{where}: retry_policy key {key!r} is not one of {', '.join(RETRY_POLICY_BOUNDS)}")
        whole = key == "max_retries"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or not 0 <= value <= bound:
            raise DefinitionError(f"{where}: retry_policy {key!r} must be a {'whole ' if whole else ''}number from 0 to {bound:g}"
                                  f"{'' if whole else ' seconds'} (a publish retry holds the beat), not {value!r:.40}")


def _check_routing(key: str, value: str, where: str) -> None:
    if "{" in value or "}" in value:
        raise DefinitionError(f"{where}: option {key!r} {value!r:.80} contains a brace; braces mark redbeat_safe's keys and are refused")
    if value.startswith("_kombu.") or value in _KOMBU_KEYS:
        raise DefinitionError(f"{where}: option {key!r} {value!r:.80} is one of kombu's own Redis keys")
    if value.isascii() and value.isprintable():  # the usual name: no character of those categories (fast path)
        return
    bad = next((c for c in value if unicodedata.category(c) in _REFUSED_CATEGORIES), None)
    if bad is not None:
        raise DefinitionError(f"{where}: option {key!r} contains the {_REFUSED_CATEGORIES[unicodedata.category(bad)]} U+{ord(bad):04X}")


class DefinitionError(ValueError):
    """An entry that cannot be stored; the message names the entry and the problem."""


def _check_text(value: Any, what: str, limit: int = MAX_NAME_LENGTH) -> str:
    if not isinstance(value, str):
        raise DefinitionError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise DefinitionError(f"{what} is empty")
    if len(value) > limit:
        raise DefinitionError(f"{what} is {len(value)} characters long; the limit is {limit}")
    if value.isascii() and value.isprintable():  # the usual name: no character of those categories (fast path)
        return value
    bad = next((c for c in value if unicodedata.category(c) in _REFUSED_CATEGORIES), None)
    if bad is not None:
        kind = _REFUSED_CATEGORIES[unicodedata.category(bad)]
        raise DefinitionError(f"{what} contains the {kind} U+{ord(bad):04X} ({unicodedata.name(bad, 'unnamed')})")
    return value


def check_name(name: Any) -> str:
    return _check_text(name, "the entry name")


def check_stored_name(name: Any) -> str:
    """A name to look up, show or remove: also one that is not UTF-8 in Redis (planted by
    hand), which reads as text with lone surrogates."""
    if isinstance(name, str) and any(unicodedata.category(c) == "Cs" for c in name):
        if not name or len(name) > MAX_NAME_LENGTH * 4:
            raise DefinitionError("the entry name is empty or too long")
        return name
    return check_name(name)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` as JSON would give it back; refuse what JSON cannot carry exactly."""
    if depth > MAX_DEPTH:
        raise DefinitionError(f"{where} is nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise DefinitionError(f"{where} contains text that is not valid UTF-8") from None
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DefinitionError(f"{where} contains {value!r}, which JSON cannot carry")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where, depth + 1) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise DefinitionError(f"{where} has a non-string key {key!r:.60}; JSON keys are strings")
            out[_plain(key, where, depth + 1)] = _plain(item, where, depth + 1)
        return out
    raise DefinitionError(
        f"{where} contains a {type(value).__name__} ({value!r:.60}); "
        "definitions are stored as JSON, so use plain lists, dicts, strings, numbers, booleans and None"
    )


def _check_options(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in options.items():
        allowed = OPTION_TYPES.get(key)
        if allowed is None:
            known = ", ".join(sorted(OPTION_TYPES))
            raise DefinitionError(f"{where}: unknown option {key!r} (known: {known})")
        if value is None:
            continue
        if isinstance(value, bool) and bool not in allowed:
            raise DefinitionError(f"{where}: option {key!r} must be {allowed[0].__name__}, not bool")
        if not isinstance(value, allowed):
            names = " or ".join(t.__name__ for t in allowed)
            raise DefinitionError(f"{where}: option {key!r} must be {names}, not {type(value).__name__}")
        number: Any = value  # its type was checked just above
        if key == "priority" and not 0 <= number <= 255:
            raise DefinitionError(f"{where}: priority must be between 0 and 255")
        if key in ("expires", "time_limit", "soft_time_limit", "countdown") and number < 0:
            raise DefinitionError(f"{where}: option {key!r} must not be negative")
        if key == "headers":
            _check_headers(number, where)
        if key in ROUTING_OPTIONS:
            _check_routing(key, number, where)
        if key == "retry_policy":
            _check_retry_policy(number, where)
        out[key] = _plain(value, f"{where}: option {key!r}")
    return out


@dataclass(frozen=True)
class EntryDef:
    """One entry as stored: what to send and when."""

    name: str
    task: str
    schedule: Schedule
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "schedule": self.schedule.to_json(),
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
        }

    def to_json(self) -> str:
        return self._json

    @cached_property
    def _json(self) -> str:
        """Computed once: an entry is written, hashed and compared several times (a million
        of them in one upsert_many)."""
        return canonical_json(self.body())

    @cached_property
    def definition_hash(self) -> str:
        return hashlib.sha1(self.to_json().encode("utf-8")).hexdigest()[:16]

    @cached_property
    def schedule_hash(self) -> str:
        """What decides when it fires: a change of it restarts the phase. The run options
        (overlap, expiry, jitter) are not part of it: changing them keeps the next tick."""
        spec = {k: v for k, v in self.schedule.to_json().items() if k not in RUN_OPTION_JSON}
        return hashlib.sha1(canonical_json(spec).encode("utf-8")).hexdigest()[:16]

    @classmethod
    def from_json(cls, name: str, raw: Union[str, bytes]) -> EntryDef:
        """Parse a stored definition; anything malformed raises DefinitionError."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise DefinitionError(f"entry {name!r}: stored definition is not JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("schedule"), dict):
            raise DefinitionError(f"entry {name!r}: stored definition is not an entry object")
        try:
            schedule = Schedule.from_json(data["schedule"])
        except (ScheduleError, KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
            raise DefinitionError(f"entry {name!r}: stored schedule is invalid ({exc})") from None
        return build(name, data.get("task"), schedule, data.get("args", []), data.get("kwargs"), data.get("options"))


def build(
    name: Any,
    task: Any,
    schedule: Any,
    args: Any = (),
    kwargs: Any = None,
    options: Any = None,
    *,
    relative: bool = False,
    default_tz: Union[str, tzinfo, None] = None,
) -> EntryDef:
    """Validate one entry; raises DefinitionError naming it."""
    check_name(name)
    where = f"entry {name!r}"
    try:
        _check_text(task, "the task name", limit=1024)
    except DefinitionError as exc:
        raise DefinitionError(f"{where}: {exc}") from None
    try:
        sched = from_celery(schedule, relative=relative)
        if isinstance(sched, pattern) and sched.tz_name is None:
            if default_tz is None:
                raise ScheduleError("the pattern has no time zone and no default was given")
            sched = sched.with_zone(default_tz)
    except ScheduleError as exc:
        raise DefinitionError(f"{where}: {exc}") from None
    if args is None:
        args = []
    if not isinstance(args, (list, tuple)):
        raise DefinitionError(f"{where}: args must be a list or tuple, not {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise DefinitionError(f"{where}: kwargs must be a dict, not {type(kwargs).__name__}")
    if options is not None and not isinstance(options, dict):
        raise DefinitionError(f"{where}: options must be a dict, not {type(options).__name__}")
    entry = EntryDef(
        name=name,
        task=task,
        schedule=sched,
        args=_plain(list(args), f"{where}: args"),
        kwargs=_plain(kwargs or {}, f"{where}: kwargs"),
        options=_check_options(options or {}, where),
    )
    size = len(entry.to_json().encode("utf-8"))
    if size > MAX_DEFINITION_BYTES:
        raise DefinitionError(f"{where}: the definition is {size} bytes; the limit is {MAX_DEFINITION_BYTES}")
    return entry


def from_beat_entry(name: Any, spec: Any, default_tz: Union[str, tzinfo]) -> EntryDef:
    """One ``beat_schedule`` item (a dict with task, schedule, ...)."""
    check_name(name)
    if not isinstance(spec, Mapping):
        raise DefinitionError(f"entry {name!r}: a beat_schedule item must be a dict, not {type(spec).__name__}")
    unknown = sorted(set(spec) - BEAT_ENTRY_KEYS)
    if unknown:
        raise DefinitionError(f"entry {name!r}: unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(sorted(BEAT_ENTRY_KEYS))})")
    if "task" not in spec or "schedule" not in spec:
        raise DefinitionError(f"entry {name!r}: needs both 'task' and 'schedule'")
    schedule = spec["schedule"]
    beside = {k: spec[k] for k in RUN_OPTION_KEYS if spec.get(k) is not None}
    if beside:
        try:
            schedule = from_celery(schedule, relative=bool(spec.get("relative", False))).with_run_options(**beside)
        except ScheduleError as exc:
            raise DefinitionError(f"entry {name!r}: {exc}") from None
    return build(
        name,
        spec["task"],
        schedule,
        spec.get("args", ()),
        spec.get("kwargs"),
        spec.get("options"),
        relative=bool(spec.get("relative", False)),
        default_tz=default_tz,
    )
