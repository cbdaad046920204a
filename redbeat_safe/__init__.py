"""redbeat_safe: a Celery beat scheduler that is safe to run in many instances at once."""

from __future__ import annotations

__version__ = "0.1.0"

from .definitions import DefinitionError  # noqa: E402
from .schedules import ScheduleError, at, every, pattern, solar  # noqa: E402

if "celery" in __import__("sys").modules:  # imported by a Celery app: mask our URL in its reports
    from .reports import hide_in_celery_reports

    hide_in_celery_reports()


def __getattr__(name: str) -> object:
    # Celery is imported only when the scheduler or the API is used.
    if name == "Scheduler":
        from .scheduler import Scheduler

        return Scheduler
    if name == "Schedules":
        from .api import Schedules

        return Schedules
    if name in ("EntryNotFound", "EntryDamaged", "StaticEntry"):
        from . import registry

        return getattr(registry, name)
    raise AttributeError(name)


__all__ = ["Scheduler", "Schedules", "every", "pattern", "at", "solar", "DefinitionError", "ScheduleError", "EntryNotFound", "EntryDamaged",
           "StaticEntry", "__version__"]
