"""Settings, read from the ordinary Celery configuration (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery.exceptions import ImproperlyConfigured

from .connection import Topology, parse, redact
from .schedules import CATCHUP_POLICIES, ScheduleError, zone_name

__all__ = ["Settings", "redact"]

DEFAULT_PREFIX = "redbeat_safe"
DEFAULT_LEASE = 10.0
DEFAULT_CATCHUP_MAX = 100
#: Broker URLs the store may default to (kombu's Redis transport, Sentinel included).
BROKER_SCHEMES = ("redis", "rediss", "unix", "sentinel")
#: Options that say where Redis is without a URL.
_TOPOLOGY_OPTIONS = ("sentinels", "startup_nodes", "cluster")
DEFAULT_WAIT_TIMEOUT = 1.0


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

    @classmethod
    def from_app(cls, app: Celery) -> Settings:
        conf = app.conf
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
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix or len(prefix) > 100:
            raise ImproperlyConfigured(f"redbeat_safe_key_prefix must be a short string without braces, not {prefix!r}")
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
        return cls(
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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
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
