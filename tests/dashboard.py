"""Test support: `celery -A beatapp schedules serve` as a real process, and plain HTTP to it."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import BeatGroup
from harness import free_port, wait_for

HERE = Path(__file__).parent


class Reply:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None, method: str | None = None) -> Reply:
    """One HTTP request; an error status is a Reply too, and redirects are not followed."""
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with opener.open(req, timeout=30) as r:
            return Reply(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.headers, e.read())


class Served:
    """The dashboard of a beat group's app, served by the real CLI on a free port."""

    def __init__(self, group: BeatGroup, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        full = dict(os.environ)
        full.update(group.env({}))
        full.update(env or {})
        full["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent)])
        self.log = group.workdir / f"serve-{self.port}.log"
        self._fh = open(self.log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "beatapp", "schedules", "serve", "--port", str(self.port),
                                      *args], env=full, cwd=group.workdir, stdout=self._fh, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self._up, 30, interval=0.1, what="the dashboard to listen")

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            request(self.url + "/healthz")
            return True
        except OSError:
            return False

    def get(self, path: str, **kwargs: Any) -> Reply:
        return request(self.url + path, **kwargs)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._fh.close()
