"""Every ``redbeat_safe_*`` setting, declared once: name, type, default (as the docs
show it) and a one-line meaning. docs/configuration.md is checked against this by a
test, and a setting whose name is not here is refused with a suggestion (a typo that
passed silently would leave the default in force)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from .connection import DEFAULTS as CONNECTION_DEFAULTS

PREFIX = "redbeat_safe_"


@dataclass(frozen=True)
class Option:
    name: str
    type: str
    default: str  #: exactly as the configuration reference's default column shows it
    meaning: str


OPTIONS: tuple[Option, ...] = (
    Option("redbeat_safe_redis_url", "str", "the broker URL, if it is `redis://`, `rediss://`, `unix://` or `sentinel://`; "
           "for a list or a `;`-separated failover string, its first URL", "The Redis that holds the entries."),
    Option("redbeat_safe_key_prefix", "str", "`redbeat_safe`", "Every key is `{<prefix>}:<name>`: one hash tag per app."),
    Option("redbeat_safe_redis_options", "dict", "`{}`", "Extra keyword arguments for the redis-py client (TLS, Sentinel, Cluster), "
           "over the built-in " + ", ".join(f"`{k}={v}`" for k, v in CONNECTION_DEFAULTS.items()) + "."),
    Option("redbeat_safe_lease", "seconds", "`10` (seconds)", "How long a claimed tick may stay unpublished before a reaper re-publishes it."),
    Option("redbeat_safe_catchup", "str", "`coalesce`", "Misfire policy for ticks missed while no beat ran: coalesce, skip or all."),
    Option("redbeat_safe_catchup_max", "int", "`100`", "With `all`: at most this many of the latest missed ticks are published."),
    Option("redbeat_safe_wait_replicas", "int", "`0`", "Publish a claim only once this many replicas have it (Redis WAIT)."),
    Option("redbeat_safe_wait_timeout", "seconds", "`1` (seconds)", "How long one WAIT may block; at most half the lease."),
    Option("redbeat_safe_metrics_port", "int", "none", "Serve this beat's own Prometheus metrics on this port."),
    Option("redbeat_safe_metrics_address", "str", "`\"127.0.0.1\"`", "The address the metrics port listens on."),
    Option("redbeat_safe_dashboard_token", "str", "none", "Enables the dashboard's pause, resume and trigger buttons."),
    Option("redbeat_safe_dashboard_show_args", "bool", "`False`", "Show entry arguments on the dashboard."),
    Option("redbeat_safe_overlap", "str", "`allow`", "Overlap policy of entries that set none: allow, skip, buffer_one or replace."),
    Option("redbeat_safe_expires_after", "expiry", "none", "Default per-tick expiry: seconds after the nominal tick, or "
           "`\"interval\"` (one interval, `every` entries)."),
    Option("redbeat_safe_run_lease", "seconds", "`60` (seconds)", "How long a running task counts as running without a "
           "worker's refresh (run ledger)."),
    Option("redbeat_safe_queue_lease", "seconds", "`3600` (seconds)", "How long a published tick counts as queued before a "
           "worker reports it (overlap policies)."),
    Option("redbeat_safe_run_retention", "seconds", "`604800` (7 days)", "How long an entry's run ledger is kept after its "
           "last write."),
    Option("redbeat_safe_finished_retention", "seconds", "`604800` (7 days)", "How long a finished entry (a one-off `at` that "
           "ran, past its `end` or `limit`) is kept; `None` keeps it."),
)
#: Celery's own settings that this scheduler reads, with the default it gives them
#: where that differs from Celery's (the configuration reference lists them too).
CELERY_SETTINGS: tuple[Option, ...] = (
    Option("beat_max_loop_interval", "seconds", "**1 s** (Celery's own default is 300 s)",
           "The longest a beat goes without looking; changes made through the API wake it at once."),
    Option("beat_cron_starting_deadline", "seconds", "none", "Patterns only: a tick older than this is not published late."),
    Option("timezone", "str", "Celery's: UTC", "The zone of patterns that name none, fixed when the entry is registered."),
    Option("beat_schedule", "dict", "`{}`", "The static entries, registered by every beat at startup."),
    Option("result_expires", "seconds", "Celery's (1 day)", "As in Celery's beat: adds `celery.backend_cleanup` when the backend "
           "cannot expire results."),
    Option("broker_transport_options", "dict", "Celery's", "With RabbitMQ, beats publish with `confirm_publish: True` unless "
           "this sets it."),
    Option("beat_scheduler", "str", "Celery's", "`\"redbeat_safe.Scheduler\"` (or `-S redbeat_safe.Scheduler`)."),
)
NAMES = frozenset(o.name for o in OPTIONS)


def check_type(option: Option, value: object) -> str | None:
    """What is wrong with ``value``'s type for ``option`` (None: unset, or the right type).
    The finer rules (ranges, schemes) are the settings' own; this keeps a string
    "false" from passing where a bool is read, or 123 where a token is."""
    if value is None:
        return None
    kind = option.type
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "seconds":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "dict":
        ok = isinstance(value, dict)
    elif kind == "expiry":
        ok = value == "interval" or (isinstance(value, (int, float)) and not isinstance(value, bool))
    else:
        ok = True
    return None if ok else f"must be {_KINDS.get(kind, kind)}, not {value!r}"


_KINDS = {"bool": "True or False", "str": "a string", "int": "a whole number", "seconds": "a number of seconds", "dict": "a dict",
          "expiry": 'a number of seconds or "interval"'}


def setting_name(key: str, namespace: str | None) -> str | None:
    """A configuration key as the ``redbeat_safe_*`` name it sets, or None when it is not
    one: ``CELERY_REDBEAT_SAFE_LEASE`` under the Django namespace ``CELERY`` sets
    ``redbeat_safe_lease``."""
    if namespace:
        for lead in (f"{namespace}_", f"{namespace.lower()}_"):
            if key.startswith(lead):
                key = key[len(lead):]
                break
    low = key.lower()
    return low if low.startswith(PREFIX) else None


def _nearest(name: str) -> list[str]:
    """The known name a typo most likely meant: compared without the common prefix
    (which would make every name look near), or one that the key starts with
    (``redbeat_safe_lease_seconds``: ``redbeat_safe_lease``)."""
    tail, tails = name[len(PREFIX):], sorted(n[len(PREFIX):] for n in NAMES)
    close = difflib.get_close_matches(tail, tails, n=1, cutoff=0.6)
    if not close:
        close = sorted((t for t in tails if tail.startswith(t + "_") or t.startswith(tail + "_")), key=len, reverse=True)[:1]
    return [PREFIX + t for t in close]


def _read_form(name: str, key: str, namespace: str | None) -> str:
    """How Celery reads ``name`` given where ``key`` was written: ``NAMESPACE_NAME`` for a
    key under the namespace, else the lowercase name (the only forms ``conf.get`` finds)."""
    if namespace and key.upper().startswith(f"{namespace.upper()}_"):
        return f"{namespace}_{name.upper()}"
    return name


def unknown(keys: Iterable[str], namespace: str | None = None) -> list[str]:
    """One line per key that looks like one of ours and is not, or is one Celery would
    never read (``REDBEAT_SAFE_LEASE`` without a namespace), with the spelling it meant."""
    out = []
    for key in sorted(set(keys)):
        name = setting_name(key, namespace)
        if name is None:
            continue
        if name in NAMES:
            wanted = _read_form(name, key, namespace)
            if key != wanted and key != name:
                out.append(f"setting {key!r} is never read in this spelling; write it as {wanted!r}")
            continue
        near = _nearest(name)
        if near:
            out.append(f"unknown setting {key!r}; did you mean {_read_form(near[0], key, namespace)!r}?")
        else:
            out.append(f"unknown setting {key!r}; the known ones are in docs/configuration.md")
    return out


def reference_table() -> str:
    """The settings table of docs/configuration.md, exactly (a test compares them):
    ``python -m redbeat_safe.options`` prints it."""
    rows = ["| setting | type | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{o.name}` | {o.type} | {o.default} | {o.meaning} |" for o in OPTIONS + CELERY_SETTINGS]
    return "\n".join(rows)


if __name__ == "__main__":
    print(reference_table())
