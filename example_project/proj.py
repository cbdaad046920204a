"""The example project's Celery app and tasks.

    cd example_project
    celery -A proj beat --loglevel INFO          # as many of these as you like
    celery -A proj worker --loglevel INFO

The configuration module is ``celeryconfig`` unless ``CELERY_CONFIG_MODULE``
names another (the demo uses ``democonfig``).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

import journal

app = Celery("proj")
app.config_from_object(os.environ.get("CELERY_CONFIG_MODULE", "celeryconfig"))
journal.watch_publishes(app)


@app.task(bind=True, name="proj.heartbeat")
def heartbeat(self: Any) -> str:
    if not journal.first_delivery(self):
        return "repeat delivery of this tick: skipped"
    # every message redbeat_safe sends names its entry and nominal tick
    entry, tick = journal.tick_of(self.request.headers)
    return f"heartbeat of {entry} for tick {tick}"


@app.task(bind=True, name="proj.report")
def report(self: Any, kind: str = "daily") -> str:
    if not journal.first_delivery(self):
        return "repeat delivery of this tick: skipped"
    return f"{kind} report"


@app.task(bind=True, name="proj.cleanup")
def cleanup(self: Any) -> str:
    if not journal.first_delivery(self):
        return "repeat delivery of this tick: skipped"
    return "cleaned"
