"""Settings, read from the ordinary Celery configuration (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import Celery
from celery.exceptions import ImproperlyConfigured

from .schedules import CATCHUP_POLICIES, ScheduleError, zone_name

DEFAULT_PREFIX = "redbeat_safe"
DEFAULT_LEASE = 10.0
DEFAULT_CATCHUP_MAX = 100
REDIS_SCHEMES = ("redis", "rediss", "unix")


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

    @classmethod
    def from_app(cls, app: Celery) -> Settings:
        conf = app.conf
        url = conf.get("redbeat_safe_redis_url") or _redis_broker_url(app)
        if not url:
            raise ImproperlyConfigured(
                "redbeat_safe: set redbeat_safe_redis_url (e.g. 'redis://localhost:6379/0'); "
                "the broker URL is not a Redis URL, so it cannot be the default"
            )
        if urlsplit(str(url)).scheme not in REDIS_SCHEMES:
            raise ImproperlyConfigured(f"redbeat_safe_redis_url must be a redis://, rediss:// or unix:// URL, not {redact(str(url))!r}")
        prefix = conf.get("redbeat_safe_key_prefix") or DEFAULT_PREFIX
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix or len(prefix) > 100:
            raise ImproperlyConfigured(f"redbeat_safe_key_prefix must be a short string without braces, not {prefix!r}")
        options = conf.get("redbeat_safe_redis_options") or {}
        if not isinstance(options, dict):
            raise ImproperlyConfigured("redbeat_safe_redis_options must be a dict of redis-py connection options")
        lease = _positive(conf.get("redbeat_safe_lease"), DEFAULT_LEASE, "redbeat_safe_lease")
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
            redis_url=str(url),
            key_prefix=prefix,
            redis_options=dict(options),
            lease_ms=int(lease * 1000),
            catchup=catchup,
            catchup_max=catchup_max,
            starting_deadline_ms=None if deadline is None else int(_seconds(deadline, "beat_cron_starting_deadline", allow_zero=True) * 1000),
            timezone=tz,
        )


def _positive(value: Any, default: float, name: str) -> float:
    return default if value is None else _seconds(value, name)


def _seconds(value: Any, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
        raise ImproperlyConfigured(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number of seconds, not {value!r}")
    return float(value)


def _redis_broker_url(app: Celery) -> str | None:
    url = app.conf.broker_url or ""
    if isinstance(url, (list, tuple)):
        url = url[0] if url else ""
    url = str(url).split(";")[0]
    return url if urlsplit(url).scheme in REDIS_SCHEMES else None


def redact(url: str) -> str:
    """The URL without its password, for logs and banners."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        netloc = f"{user}:***@{netloc}"
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)
