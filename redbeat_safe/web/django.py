"""The dashboard inside a Django project, behind Django's own staff login.

    # urls.py
    from django.urls import re_path
    from redbeat_safe.web.django import dashboard_view
    from proj.celery import app as celery_app

    urlpatterns = [re_path(r"^schedules/(?P<path>.*)$", dashboard_view(celery_app))]

Only signed-in staff get it (``staff_member_required``: others are sent to the admin
login). The pause/resume/trigger buttons still need the dashboard token
(``CELERY_REDBEAT_SAFE_DASHBOARD_TOKEN``), and their forms carry the dashboard's own
CSRF token, so the view is exempt from Django's CSRF middleware, not from CSRF checks.
Needs Django and the ``web`` extra; nothing else in redbeat_safe imports this.
"""

from __future__ import annotations

import io
from typing import Any

from celery import Celery

from . import wsgi_app


def dashboard_view(app: Celery, **options: Any) -> Any:
    """A Django view serving the dashboard under the URL it is routed at; the pattern
    captures the rest of the path as ``path``."""
    from django.contrib.admin.views.decorators import staff_member_required  # noqa: PLC0415 - Django is the caller's
    from django.http import HttpResponse  # noqa: PLC0415
    from django.views.decorators.csrf import csrf_exempt  # noqa: PLC0415

    dashboard = wsgi_app(app, **options)

    def view(request: Any, path: str = "") -> Any:
        environ = dict(request.META)
        environ["wsgi.input"] = io.BytesIO(request.body)
        environ["CONTENT_LENGTH"] = str(len(request.body))
        full = request.path
        environ["SCRIPT_NAME"] = full[: len(full) - len(path)].rstrip("/")
        environ["PATH_INFO"] = "/" + path
        said: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            said["status"], said["headers"] = status, headers
            return lambda data: None

        body = b"".join(dashboard(environ, start_response))
        response = HttpResponse(body, status=int(said["status"].split()[0]))
        for name, value in said["headers"]:
            response[name] = value
        return response

    return csrf_exempt(staff_member_required(view))
