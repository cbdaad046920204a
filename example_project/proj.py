"""The example project's Celery app and tasks.

    cd example_project
    celery -A proj beat --loglevel INFO          # as many of these as you like
    celery -A proj worker --loglevel INFO
"""

from __future__ import annotations

from typing import Any

from celery import Celery

app = Celery("proj")
app.config_from_object("celeryconfig")


@app.task(bind=True, name="proj.heartbeat")
def heartbeat(self: Any) -> str:
    headers = self.request.headers or {}
    return f"heartbeat for tick {headers.get('redbeat_safe_tick_ms')}"


@app.task(name="proj.report")
def report(kind: str = "daily") -> str:
    return f"{kind} report"


@app.task(name="proj.cleanup")
def cleanup() -> str:
    return "cleaned"
