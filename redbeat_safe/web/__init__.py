"""The dashboard (the ``web`` extra: ``pip install 'redbeat-safe[web]'``): server-rendered
pages, /metrics and /healthz, as one WSGI app to serve alone (``celery -A proj
schedules serve``) or to mount in an existing app (docs/monitoring.md).

Depends on the core, never the reverse: nothing in the scheduler imports it.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from .app import Authorize, Dashboard

__all__ = ["Dashboard", "asgi_app", "wsgi_app"]


def wsgi_app(app: Celery, *, token: str | None = None, show_args: bool = False, authorize: Authorize | None = None,
             entry_series: str = "late") -> Dashboard:
    """The dashboard for ``app`` as a WSGI callable. Unset options are read from the
    app's configuration (``redbeat_safe_dashboard_token``, ``redbeat_safe_dashboard_show_args``)."""
    conf = app.conf
    return Dashboard(app, token=token if token is not None else conf.get("redbeat_safe_dashboard_token"),
                     show_args=show_args or bool(conf.get("redbeat_safe_dashboard_show_args")), authorize=authorize,
                     entry_series=entry_series)


def asgi_app(app: Celery, **options: Any) -> Any:
    """The same dashboard as an ASGI app (Starlette, FastAPI, Django's ASGI), through
    asgiref's WSGI adapter, which runs each request in a thread."""
    try:
        from asgiref.wsgi import WsgiToAsgi
    except ImportError as exc:
        raise ImportError("redbeat_safe.web.asgi_app needs asgiref: pip install 'redbeat-safe[web]'") from exc
    return WsgiToAsgi(wsgi_app(app, **options))  # type: ignore[no-untyped-call]
