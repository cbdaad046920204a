"""Celery configuration of the example project: an ordinary celeryconfig plus beat_scheduler."""

import os

from celery.schedules import crontab

from redbeat_safe import every, pattern

broker_url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
# redbeat_safe keeps its entries in this Redis (it defaults to the broker URL when that is Redis)
redbeat_safe_redis_url = broker_url
redbeat_safe_key_prefix = os.environ.get("REDBEAT_SAFE_PREFIX", "example")
beat_scheduler = "redbeat_safe.Scheduler"
timezone = "Europe/Berlin"
result_backend = None
result_expires = None  # no result backend, so no celery.backend_cleanup entry

beat_schedule = {
    # every 5 seconds, anchored: 5 s, 10 s, 15 s after registration, never drifting
    "heartbeat": {"task": "proj.heartbeat", "schedule": every(seconds=5)},
    # a cron pattern with a seconds field (seconds first), in the app's zone
    "quarter-minute-report": {
        "task": "proj.report",
        "schedule": pattern("*/15 * * * * *"),
        "kwargs": {"kind": "quarter-minute"},
    },
    # Celery's own crontab works too (its day fields keep Celery's AND semantics)
    "nightly-cleanup": {"task": "proj.cleanup", "schedule": crontab(hour=3, minute=30), "options": {"expires": 3600}},
}
