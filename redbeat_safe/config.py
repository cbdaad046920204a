"""Settings, read from the ordinary Celery configuration (no I/O here)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from celery import Celery
from celery.exceptions import ImproperlyConfigured

from . import options as declared
from .connection import Topology, parse, redact
from .reports import hide_in_celery_reports
from .schedules import CATCHUP_POLICIES, OVERLAP_POLICIES, ScheduleError, zone_name

__all__ = ["Settings", "redact"]

DEFAULT_PREFIX = "redbeat_safe"
MAX_PREFIX = 100
#: A plain name: the ACL recipe grants `~{<prefix>}:*`, a glob, so a `*`, `?`,
#: `[` or a backslash in the prefix would open other apps' keys; braces would break the
#: hash tag, and a newline or NUL has no place in a key name.
PREFIX = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_PREFIX}}}")
DEFAULT_LEASE = 10.0
DEFAULT_CATCHUP_MAX = 100
#: Broker URLs the store may default to (kombu's Redis transport, Sentinel included).
BROKER_SCHEMES = ("redis", "rediss", "unix", "sentinel")
#: Options that say where Redis is without a URL.
_TOPOLOGY_OPTIONS = ("sentinels", "startup_nodes", "cluster")
DEFAULT_WAIT_TIMEOUT = 1.0
DEFAULT_METRICS_ADDRESS = "127.0.0.1"
hide_in_celery_reports()


@dataclass(frozen=True)
class Settings:
    redis_url: str
    key_prefix: str = DEFAULT_PREFIX
    redis_options: dict[str, Any] = field(default_factory=dict)
    lease_ms: int = int(DEFAULT_LEASE * 1000)
    catchup: str = "coalesce"
    catchup_max: int = DEFAULT_CATCHUP_MAX
    starting_deadline_ms: int | None = None
    timezone: str = "UTC"
    topology: Topology = field(default_factory=lambda: Topology("standalone"))
    wait_replicas: int = 0  #: publish a claim only once this many replicas have it (WAIT)
    wait_timeout_ms: int = int(DEFAULT_WAIT_TIMEOUT * 1000)
    metrics_port: int | None = None  #: serve this beat's own metrics on this port (the ``metrics`` extra)
    metrics_address: str = DEFAULT_METRICS_ADDRESS
    overlap: str = "allow"  #: overlap policy of entries that set none
    expires_after: int | str | None = None  #: default per-tick expiry: ms, "interval", or none
    run_lease_ms: int = 60_000  #: a running task's marker lasts this long without a worker's refresh
    queue_lease_ms: int = 3_600_000  #: a published tick counts as queued this long before a worker reports it
    run_retention_ms: int = 7 * 86_400_000  #: an entry's run ledger is kept this long after its last write
    finished_retention_ms: int | None = 7 * 86_400_000  #: a finished entry is removed this long after it finished
    #: What a beat logs at start (once): TLS that does not verify the server, a
    #: store in the broker's database. Settings are still accepted.
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_app(cls, app: Celery) -> Settings:
        conf = app.conf
        typos = declared.unknown(conf.keys(), getattr(app, "namespace", None))
        if typos:
            raise ImproperlyConfigured("redbeat_safe: " + "; ".join(typos))
        for option in declared.OPTIONS:  # each declared type, before any value is used
            problem = declared.check_type(option, conf.get(option.name))
            if problem:
                raise ImproperlyConfigured(f"redbeat_safe: {option.name} {problem}")
        options = conf.get("redbeat_safe_redis_options") or {}
        if not isinstance(options, dict):
            raise ImproperlyConfigured("redbeat_safe_redis_options must be a dict of redis-py connection options")
        url = conf.get("redbeat_safe_redis_url")
        if not url and not any(options.get(k) for k in _TOPOLOGY_OPTIONS):
            url, options = _from_broker(app, options)
            if not url:
                raise ImproperlyConfigured(
                    "redbeat_safe: set redbeat_safe_redis_url (e.g. 'redis://localhost:6379/0'); "
                    "the broker URL is not a Redis URL, so it cannot be the default"
                )
        topology = parse(str(url or ""), options)
        wait_replicas = conf.get("redbeat_safe_wait_replicas") or 0
        if isinstance(wait_replicas, bool) or not isinstance(wait_replicas, int) or wait_replicas < 0:
            raise ImproperlyConfigured(f"redbeat_safe_wait_replicas must be a whole number >= 0, not {wait_replicas!r}")
        wait_timeout = _positive(conf.get("redbeat_safe_wait_timeout"), DEFAULT_WAIT_TIMEOUT, "redbeat_safe_wait_timeout")
        prefix = conf.get("redbeat_safe_key_prefix") or DEFAULT_PREFIX
        if not isinstance(prefix, str) or not PREFIX.fullmatch(prefix):
            raise ImproperlyConfigured(
                f"redbeat_safe_key_prefix must be a plain name of at most {MAX_PREFIX} characters (ASCII letters, digits, "
                f"'-', '_', '.'), not {prefix!r}: it is a Redis Cluster hash tag and part of ACL key patterns, "
                "where '*', '?' and '[' are wildcards"
            )
        lease = _positive(conf.get("redbeat_safe_lease"), DEFAULT_LEASE, "redbeat_safe_lease")
        if wait_replicas and wait_timeout > lease / 2:
            raise ImproperlyConfigured(
                f"redbeat_safe_wait_timeout ({wait_timeout}s) must be at most half of redbeat_safe_lease ({lease}s): "
                "a claim must still be leased when its replicas confirm it"
            )
        catchup = conf.get("redbeat_safe_catchup") or "coalesce"
        if catchup not in CATCHUP_POLICIES:
            raise ImproperlyConfigured(f"redbeat_safe_catchup must be one of {', '.join(CATCHUP_POLICIES)}, not {catchup!r}")
        catchup_max = conf.get("redbeat_safe_catchup_max")
        if catchup_max is None:
            catchup_max = DEFAULT_CATCHUP_MAX
        if isinstance(catchup_max, bool) or not isinstance(catchup_max, int) or catchup_max < 0:
            raise ImproperlyConfigured(f"redbeat_safe_catchup_max must be a whole number >= 0, not {catchup_max!r}")
        deadline = conf.get("beat_cron_starting_deadline")
        try:
            tz = zone_name(app.timezone)
        except ScheduleError as exc:
            raise ImproperlyConfigured(f"redbeat_safe: the app's timezone cannot be used: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - Celery resolves the name itself: ZoneInfoNotFoundError, ValueError, ...
            raise ImproperlyConfigured(f"redbeat_safe: the app's timezone {conf.get('timezone')!r} is not a time zone "
                                       f"({type(exc).__name__}); use an IANA name such as 'Europe/Berlin'") from None
        shared = _shared_with_broker(app, topology)
        metrics_port = conf.get("redbeat_safe_metrics_port")
        if metrics_port is not None and (isinstance(metrics_port, bool) or not isinstance(metrics_port, int)
                                         or not 0 <= metrics_port <= 65535):
            raise ImproperlyConfigured(f"redbeat_safe_metrics_port must be a port number (0-65535; 0 picks a free one), "
                                       f"not {metrics_port!r}")
        overlap = conf.get("redbeat_safe_overlap") or "allow"
        if overlap not in OVERLAP_POLICIES:
            raise ImproperlyConfigured(f"redbeat_safe_overlap must be one of {', '.join(OVERLAP_POLICIES)}, not {overlap!r}")
        expiry = conf.get("redbeat_safe_expires_after")
        expires_after: int | str | None = None
        if expiry == "interval":
            expires_after = "interval"
        elif expiry is not None:
            expires_after = int(_seconds(expiry, "redbeat_safe_expires_after") * 1000)
        run_lease = _positive(conf.get("redbeat_safe_run_lease"), 60.0, "redbeat_safe_run_lease")
        queue_lease = _positive(conf.get("redbeat_safe_queue_lease"), 3600.0, "redbeat_safe_queue_lease")
        retention = _positive(conf.get("redbeat_safe_run_retention"), 7 * 86400.0, "redbeat_safe_run_retention")
        keep_finished = conf.get("redbeat_safe_finished_retention", 7 * 86400.0)
        finished_retention = None if keep_finished is None else _seconds(keep_finished, "redbeat_safe_finished_retention")
        metrics_address = conf.get("redbeat_safe_metrics_address") or DEFAULT_METRICS_ADDRESS
        if not isinstance(metrics_address, str):
            raise ImproperlyConfigured(f"redbeat_safe_metrics_address must be a host or address string, not {metrics_address!r}")
        return cls(
            overlap=overlap,
            expires_after=expires_after,
            run_lease_ms=max(1000, int(run_lease * 1000)),
            queue_lease_ms=max(1000, int(queue_lease * 1000)),
            run_retention_ms=max(1000, int(retention * 1000)),
            finished_retention_ms=None if finished_retention is None else max(1000, int(finished_retention * 1000)),
            metrics_port=metrics_port,
            metrics_address=metrics_address,
            warnings=topology.warnings + ((shared,) if shared else ()),
            redis_url=str(url or ""),
            key_prefix=prefix,
            redis_options=dict(options),
            lease_ms=int(lease * 1000),
            catchup=catchup,
            catchup_max=catchup_max,
            starting_deadline_ms=None if deadline is None else int(_seconds(deadline, "beat_cron_starting_deadline", allow_zero=True) * 1000),
            timezone=tz,
            topology=topology,
            wait_replicas=wait_replicas,
            wait_timeout_ms=max(1, int(wait_timeout * 1000)),  # WAIT 0 would block for ever
        )


def _positive(value: Any, default: float, name: str) -> float:
    return default if value is None else _seconds(value, name)


def _seconds(value: Any, name: str, allow_zero: bool = False) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            or (value == 0 and not allow_zero)):
        raise ImproperlyConfigured(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number of seconds, not {value!r}")
    return float(value)


def _from_broker(app: Celery, options: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The broker's URL when it is Redis, with the broker's SSL and Sentinel settings."""
    conf = app.conf
    url = conf.broker_url or ""
    if isinstance(url, (list, tuple)):
        url = ";".join(str(u) for u in url)
    url = str(url)
    scheme = urlsplit(url.split(";")[0]).scheme
    if scheme not in BROKER_SCHEMES:
        return None, options
    options = dict(options)
    if scheme != "sentinel":
        url = url.split(";")[0]  # kombu's failover list: the store needs one server
    if scheme == "rediss" and isinstance(conf.broker_use_ssl, dict):
        options.setdefault("ssl", conf.broker_use_ssl)
    if scheme == "sentinel":
        transport = conf.broker_transport_options or {}
        if transport.get("master_name"):
            options.setdefault("service_name", transport["master_name"])
        if transport.get("sentinel_kwargs"):
            options.setdefault("sentinel_kwargs", transport["sentinel_kwargs"])
    return url, options


_LOOPBACK = ("", "localhost", "127.0.0.1", "::1")


def _standalone_db(url: str, options: Mapping[str, Any]) -> tuple[str, str, int, int] | None:
    """Where a redis://, rediss:// or unix:// URL points, down to the database, as
    redis-py (``?db=`` first, then the path, then the db option) or kombu
    (``?virtual_host=``) reads it; None when it cannot be told without I/O."""
    try:
        parts = urlsplit(url.strip())
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.scheme == "unix":
            where, port, path = ("unix", unquote(parts.path), 0), 0, ""
        elif parts.scheme in ("redis", "rediss"):
            host = (parts.hostname or "").lower()
            where, port, path = ("tcp", "localhost" if host in _LOOPBACK else host, 0), parts.port or 6379, unquote(parts.path).strip("/")
        else:
            return None
        db = query.get("db") or query.get("virtual_host") or path or options.get("db") or 0
        return where[0], where[1], port, int(db)
    except (TypeError, ValueError):
        return None


def _broker_urls(app: Celery) -> list[str]:
    """Every URL the broker may use: kombu's failover lists, the write URL."""
    out: list[str] = []
    for value in (app.conf.broker_url, app.conf.get("broker_write_url")):
        for url in value if isinstance(value, (list, tuple)) else [value or ""]:
            out.extend(u.strip() for u in str(url).split(";") if u.strip())
    return out


def _shared_with_broker(app: Celery, topology: Topology) -> str | None:
    """A warning when the store is a database the Celery broker uses too.

    Nothing enforces the separation, but a shared database is one that an
    operator clears (FLUSHDB) or bounds with an eviction policy for the
    broker's sake, taking the schedules along, and one whose Redis user (the
    workers') reaches the schedule keys. Host names are compared as written
    (localhost and 127.0.0.1 are the same); no DNS.
    """
    brokers = _broker_urls(app)
    found: str | None = None
    if topology.kind == "standalone":
        store = _standalone_db(topology.url, topology.options)
        for url in brokers:
            if store is not None and _standalone_db(url, {}) == store:
                found, db = url, store[3]
    elif topology.kind == "sentinel":
        transport = app.conf.broker_transport_options or {}
        nodes = {(h.lower(), p) for h, p in topology.nodes}
        db = int(topology.options.get("db") or 0)
        for url in brokers:
            parts = urlsplit(url)
            try:
                node, broker_db = ((parts.hostname or "localhost").lower(), parts.port or 26379), int(parts.path.strip("/") or 0)
            except ValueError:
                continue
            if parts.scheme == "sentinel" and transport.get("master_name") == topology.service_name and node in nodes and broker_db == db:
                found = url
    if found is None:
        return None
    return (f"redbeat_safe: the schedule store is the same Redis database as the Celery broker ({redact(found)}); "
            f"give it a database of its own (e.g. /{db + 1} instead of /{db} in redbeat_safe_redis_url): clearing or evicting "
            "the broker's database would take the schedules with it, and the broker's Redis user reaches them")
