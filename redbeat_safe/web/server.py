"""A small threaded HTTP server for ``celery schedules serve`` (the standard library's
WSGI server, one thread per request: a dashboard has a handful of users)."""

from __future__ import annotations

import logging
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

logger = logging.getLogger("redbeat_safe")


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        logger.debug("dashboard: " + format, *args)


def make(app: Any, host: str, port: int) -> WSGIServer:
    """Bound and ready (``port`` 0 picks a free one: ``server.server_port`` says which)."""
    return make_server(host, port, app, server_class=_Server, handler_class=_Quiet)
