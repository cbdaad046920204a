"""Real processes for the tests: a private redis-server, celery beat instances, and a
reader for the messages that landed on the Redis broker."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A redis-server of our own on a free port, in a temp dir (never the shared default port)."""

    def __init__(self, workdir: Path, appendonly: bool = True, args: list[str] | None = None, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.args = list(args or [])  #: extra redis-server arguments (cluster mode, replicaof, ...)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10)

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (bash .ci/run installs it)"
        args = [
            exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--daemonize", "no", "--logfile", str(self.workdir / "redis.log"), *self.args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._ping, 10, what=f"redis-server on port {self.port}")
        return self

    def _ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Message:
    entry: str
    tick: int
    task_id: str
    task: str
    args: Any
    kwargs: Any
    headers: dict[str, Any]
    properties: dict[str, Any]


def decode(raw: bytes) -> Message:
    envelope = json.loads(raw)
    headers = envelope["headers"]
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, _embed = json.loads(body)
    return Message(
        entry=headers.get("redbeat_safe_entry"),
        tick=headers.get("redbeat_safe_tick_ms"),
        task_id=headers["id"],
        task=headers["task"],
        args=args,
        kwargs=kwargs,
        headers=headers,
        properties=envelope.get("properties", {}),
    )


class Broker:
    """Reads what beat published to one queue of the Redis broker, without consuming it."""

    def __init__(self, server: RedisServer, queue: str, db: int = 1) -> None:
        self.server, self.queue, self.db = server, queue, db
        self.url = f"redis://127.0.0.1:{server.port}/{db}"
        self._seen: list[Message] = []

    def messages(self) -> list[Message]:
        client = redis.Redis(port=self.server.port, db=self.db, socket_timeout=10)
        try:
            # kombu keeps one list per priority step: "<queue>" and "<queue>\x06\x16<n>"
            lists = [self.queue.encode()] + sorted(k for k in client.keys(self.queue + "\x06\x16*"))
            raw = [r for key in lists for r in reversed(client.lrange(key, 0, -1))]  # LPUSH: newest first
        finally:
            client.close()
        return [decode(r) for r in raw]

    def by_entry(self) -> dict[str, list[Message]]:
        out: dict[str, list[Message]] = {}
        for m in self.messages():
            out.setdefault(m.entry, []).append(m)
        return out


class Beat:
    """One real `celery beat` process running tests/beatapp.py."""

    def __init__(self, workdir: Path, env: dict[str, str], name: str, scheduler: str = "redbeat_safe.Scheduler", faketime: str | None = None,
                 app: str = "beatapp") -> None:
        self.workdir, self.env, self.name, self.scheduler, self.app = workdir, env, name, scheduler, app
        self.faketime = faketime
        self.log = workdir / f"beat-{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, extra: list[str] | None = None) -> Beat:
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT)])
        if self.faketime:
            env["LD_PRELOAD"] = faketime_library() or ""
            env["FAKETIME"] = self.faketime
            env["FAKETIME_NO_CACHE"] = "1"
        cmd = [sys.executable, "-m", "celery", "-A", self.app, "beat", "-S", self.scheduler, "--loglevel", "INFO",
               "--schedule", str(self.workdir / f"celerybeat-{self.name}"), *(extra or [])]
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 30) -> None:
        wait_for(lambda: text in self.output(), timeout, what=f"{text!r} in the log of beat {self.name}")


class Worker(Beat):
    """One real `celery worker` process running tests/beatapp.py (its pool's children in
    the same process group, so kill() takes them all)."""

    def __init__(self, workdir: Path, env: dict[str, str], name: str, pool: str = "prefork", concurrency: int = 2) -> None:
        super().__init__(workdir, env, name)
        self.pool, self.concurrency = pool, concurrency
        self.log = workdir / f"worker-{name}-{uuid.uuid4().hex[:6]}.log"

    def start(self, extra: list[str] | None = None) -> Worker:
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT)])
        cmd = [sys.executable, "-m", "celery", "-A", "beatapp", "worker", "--pool", self.pool, "-c", str(self.concurrency),
               "-Q", self.env["BEAT_QUEUE"], "-n", f"{self.name}-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO",
               "--without-gossip", "--without-mingle", "--without-heartbeat", "--prefetch-multiplier", "1", *(extra or [])]
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL the worker and its pool children: a host gone mid-run."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return super().stop(timeout)


def faketime_library() -> str | None:
    for candidate in (
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ):
        if os.path.exists(candidate):
            return candidate
    return None
