"""Configuration of the demo (``scripts/demo``): celeryconfig's ideas, with
second-scale entries and one private key prefix and queue per run.

The driver sets the environment: REDIS_URL, DEMO_RUN (a run id) and
DEMO_SCHEDULER (``redbeat_safe`` or ``redbeat`` for the comparison).
"""

import os
from datetime import timedelta

from redbeat_safe import every, pattern

broker_url = os.environ["REDIS_URL"]
run = os.environ["DEMO_RUN"]
scheduler = os.environ.get("DEMO_SCHEDULER", "redbeat_safe")

task_default_queue = f"demo-{run}"
journal_key = f"demo-{run}:journal"  # journal.py records publishes and executions here
timezone = "Europe/Berlin"
result_backend = None
result_expires = None  # no result backend, so no celery.backend_cleanup entry
broker_connection_retry_on_startup = True
worker_prefetch_multiplier = 1  # a killed worker takes as few reserved messages with it as possible

if scheduler == "redbeat":
    # celery-redbeat, configured the way its users commonly run it: a 5 s loop
    # and a lock of five loops (its own default rule; with Celery's default
    # 300 s loop the lock would be 25 minutes).
    beat_scheduler = "redbeat.RedBeatScheduler"
    redbeat_redis_url = broker_url
    redbeat_key_prefix = f"demo-{run}-redbeat:"
    beat_max_loop_interval = 5
    redbeat_lock_timeout = 25
    # redbeat has no seconds-resolution cron and sends no entry header: plain
    # intervals, each tagged so the journal knows which entry a message is
    beat_schedule = {
        "heartbeat-1s": {"task": "proj.heartbeat", "schedule": timedelta(seconds=1), "options": {"headers": {"demo_entry": "heartbeat-1s"}}},
        "report-2s": {
            "task": "proj.report",
            "schedule": timedelta(seconds=2),
            "kwargs": {"kind": "two-second"},
            "options": {"headers": {"demo_entry": "report-2s"}},
        },
    }
else:
    beat_scheduler = "redbeat_safe.Scheduler"
    redbeat_safe_redis_url = broker_url
    redbeat_safe_key_prefix = f"demo-{run}"
    beat_schedule = {
        "heartbeat-1s": {"task": "proj.heartbeat", "schedule": every(seconds=1)},
        "report-2s": {"task": "proj.report", "schedule": every(seconds=2), "kwargs": {"kind": "two-second"}},
        "cron-3s": {"task": "proj.report", "schedule": pattern("*/3 * * * * *"), "kwargs": {"kind": "cron"}},
    }
