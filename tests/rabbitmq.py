"""A private RabbitMQ node for the tests: own ports, own epmd, own data and logs in a temp dir,
killable like a crashed host and restartable on the same data; and a reader for its queues.

The node never touches a system RabbitMQ (5672) or the system epmd (4369) that may be running:
everything it needs is passed in the environment, /etc/rabbitmq is not read, and every process
it starts carries a marker in its environment so that kill() and stop() find exactly those."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Any

import amqp

from harness import Message, free_port, wait_for

#: the real start script; /usr/sbin/rabbitmq-server on Debian is a wrapper that, run as root,
#: re-runs it through `su rabbitmq`: the node could not write our temp dir, and the pid we hold
#: would be su's, not the VM's
REAL_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
#: Seconds after a (re)start in which a missing queue is taken for one still being recovered.
RECOVERY = 15.0
MARKER = "REDBEAT_SAFE_TEST_RABBITMQ"  #: environment variable every process of one node carries


def _script() -> str:
    if REAL_SCRIPT.exists():
        return str(REAL_SCRIPT)
    exe = shutil.which("rabbitmq-server")  # a generic-unix or Homebrew install has no wrapper
    assert exe, "rabbitmq-server is not installed (scripts/setup installs it)"
    return exe


def _epmd() -> str:
    exe = shutil.which("epmd") or next(iter(sorted(glob("/usr/lib/erlang/erts-*/bin/epmd"))), None)
    assert exe, "epmd is not installed (it comes with erlang-base, a dependency of rabbitmq-server)"
    return exe


def _distinct_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _pids_marked(value: str) -> list[int]:
    """Live processes whose environment holds MARKER=value (a zombie's environment reads empty)."""
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:  # gone meanwhile, or another user's
            continue
    return found


def _kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Delivery:
    """One message as it sits in a queue: AMQP headers, the other basic properties, the raw body."""

    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any]  #: content_type, delivery_mode, priority, correlation_id, ...
    delivery_info: dict[str, Any]  #: exchange, routing_key, redelivered

    def celery(self) -> Message:
        """The Celery protocol 2 message: headers carry id/task, the JSON body is [args, kwargs, embed]."""
        content_type = self.properties.get("content_type")
        if content_type != "application/json":
            raise ValueError(f"not a JSON Celery message (content_type {content_type!r})")
        args, kwargs, _embed = json.loads(self.body.decode(self.properties.get("content_encoding") or "utf-8"))
        return Message(
            entry=self.headers.get("redbeat_safe_entry"),
            tick=self.headers.get("redbeat_safe_tick_ms"),
            task_id=self.headers["id"],
            task=self.headers["task"],
            args=args,
            kwargs=kwargs,
            headers=self.headers,
            properties={**self.properties, "delivery_info": self.delivery_info},
        )


class RabbitMQ:
    """A rabbitmq-server of our own on free ports, in a temp dir, with its own epmd."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.dist_port, self.epmd_port = _distinct_ports(3)
        self.nodename = f"rabbit-{self.port}@localhost"
        self.tag = uuid.uuid4().hex  #: the MARKER value of this node's processes
        self.log_file = workdir / "log" / f"{self.nodename}.log"
        self.stdout_file = workdir / "stdout.log"  #: early boot output and boot failures
        self.pid_file = workdir / "rabbit.pid"
        self.proc: subprocess.Popen[bytes] | None = None  #: the start script, parent of the VM
        self.epmd: subprocess.Popen[bytes] | None = None
        self.beam_pid: int | None = None  #: the Erlang VM (beam.smp) that is the broker
        self.start_seconds: float | None = None  #: how long the last start() took
        self.started_at = 0.0  #: when the last start() returned (monotonic)
        self._write_config()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _write_config(self) -> None:
        for sub in ("home", "mnesia", "log", "conf.d"):
            (self.workdir / sub).mkdir(exist_ok=True)
        # no listener but ours; a near-full CI disk must not trip the 50 MB free-disk alarm
        # (it blocks publishers); no console logging, the log file is enough
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "log.console = false\n"
            "log.file.level = info\n"
            "disk_free_limit.absolute = 1MB\n"
        )
        (self.workdir / "enabled_plugins").write_text("[].\n")  # no management plugin: it is slow to start
        # our own, empty env file: the system one names the node rabbit@localhost and sets ERL_FLAGS
        (self.workdir / "rabbitmq-env.conf").write_text("# the tests pass everything in the environment\n")

    def _env(self) -> dict[str, str]:
        # nothing of the caller's RabbitMQ/Erlang settings; NOTIFY_SOCKET would make it talk to systemd
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_")) and k != "NOTIFY_SOCKET"}
        d = self.workdir
        env.update({
            MARKER: self.tag,
            "HOME": str(d / "home"),  # the Erlang cookie goes here
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_CONFIG_FILES": str(d / "conf.d"),  # instead of /etc/rabbitmq/conf.d
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),  # absent
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins-expand"),
            "RABBITMQ_MOTD_FILE": str(d / "motd"),  # absent
        })
        return env

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> RabbitMQ:
        """Start the node (on the data already in workdir, if any); return once it takes AMQP logins."""
        assert not self.running, f"{self.nodename} is already running"
        began = time.monotonic()
        env = self._env()
        try:
            if self.epmd is None or self.epmd.poll() is not None:
                # our own epmd, started first so that the node does not daemonize one we cannot track
                self.epmd = subprocess.Popen([_epmd(), "-port", str(self.epmd_port), "-address", "127.0.0.1"], env=env,
                                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             start_new_session=True)
                wait_for(lambda: _port_open(self.epmd_port), 10, what=f"epmd on port {self.epmd_port}")
            with open(self.stdout_file, "ab") as out:
                self.proc = subprocess.Popen([_script()], cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = began + timeout
            while not self._accepts_logins():
                if self.proc.poll() is not None:
                    # its status says nothing: the script ends with `wait ... || true`, a failed boot exits 0 too
                    raise AssertionError(f"rabbitmq-server exited before {self.nodename} took connections")
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out after {timeout}s waiting for {self.nodename} on port {self.port}")
                time.sleep(0.1)
            self.beam_pid = self._find_beam()
        except AssertionError as e:
            self._teardown(clean=False)
            raise AssertionError(f"{e}\n--- {self.stdout_file}:\n{_tail(self.stdout_file)}\n--- {self.log_file}:\n{_tail(self.log_file)}") from None
        except BaseException:
            self._teardown(clean=False)
            raise
        self.start_seconds = time.monotonic() - began
        self.started_at = time.monotonic()
        return self

    def _accepts_logins(self) -> bool:
        conn = amqp.Connection(f"127.0.0.1:{self.port}", connect_timeout=2, read_timeout=5, write_timeout=5)
        try:
            conn.connect()
            return True
        except Exception:  # refused, reset, or the broker still booting
            return False
        finally:
            try:
                conn.close()
            except Exception:
                pass

    def _find_beam(self) -> int:
        """The VM's pid: the start script forks it (sh -> erl -> erlexec -> beam.smp, all exec)."""
        assert self.proc is not None
        mine = set(_pids_marked(self.tag))
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = -1
        if pid not in mine:  # no pid file yet (or a stale one): the VM is the script's child
            pid = next((p for p in mine if _ppid(p) == self.proc.pid), -1)
        assert pid > 0 and _comm(pid).startswith("beam"), f"cannot find the Erlang VM of {self.nodename}"
        return pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Crash the broker: SIGKILL the Erlang VM and its helpers, nothing flushed. Its epmd stays, like a host's."""
        if self.beam_pid is not None:
            _kill([self.beam_pid])
        self._reap(signal.SIGKILL)

    def stop(self, timeout: float = 30) -> None:
        """Stop the broker cleanly (SIGTERM: the VM shuts down rabbit in order), then its epmd; leave nothing behind."""
        self._teardown(clean=True, timeout=timeout)

    def restart(self, timeout: float = 60) -> RabbitMQ:
        """Start again on the same ports and the same data directory (after kill(), or stopping it cleanly first)."""
        if self.running:
            self._stop_broker(timeout=30)
        return self.start(timeout)

    def _stop_broker(self, timeout: float) -> None:
        if self.running and self.beam_pid is not None:
            _kill([self.beam_pid], signal.SIGTERM)  # OTP >= 23 maps SIGTERM to init:stop(); the script just waits
            assert self.proc is not None
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._reap(signal.SIGKILL)

    def _reap(self, sig: int) -> None:
        """Signal whatever of the broker is left (script, VM, erl_child_setup, inet_gethost, disk monitor) and wait it out."""
        keep = {self.epmd.pid} if self.epmd is not None and self.epmd.poll() is None else set()
        _kill([p for p in _pids_marked(self.tag) if p not in keep], sig)
        if self.proc is not None:
            self.proc.wait(10)
            self.proc = None
        self.beam_pid = None
        # the VM's helpers are orphans now: init reaps them, we only wait until none is alive
        wait_for(lambda: not [p for p in _pids_marked(self.tag) if p not in keep], 10, what=f"the processes of {self.nodename} to exit")

    def _teardown(self, clean: bool, timeout: float = 30) -> None:
        if clean:
            self._stop_broker(timeout)
        else:
            self._reap(signal.SIGKILL)
        if self.epmd is not None:
            if self.epmd.poll() is None:
                self.epmd.terminate()
                try:
                    self.epmd.wait(5)
                except subprocess.TimeoutExpired:
                    self.epmd.kill()
                    self.epmd.wait()
            self.epmd = None
        self._reap(signal.SIGKILL)  # anything the VM daemonized (an epmd -daemon of its own, say)

    # -- reading queues --------------------------------------------------------------------

    def drain_raw(self, queue: str, remove: bool = True) -> list[Delivery]:
        """Every message now in `queue`, oldest first, read with basic.get (no consumer needed).

        remove=False puts them all back, in their places, by closing the channel without an ack;
        they come back marked redelivered. A queue that does not exist reads as empty; one
        missing in the first RECOVERY seconds after a (re)start is waited for, since the node
        takes logins before it has recovered its durable queues (seen under load in CI)."""
        while True:
            try:
                return self._drain_raw(queue, remove)
            except amqp.exceptions.NotFound:
                if time.monotonic() - self.started_at > RECOVERY:
                    return []
                time.sleep(0.2)

    def _drain_raw(self, queue: str, remove: bool) -> list[Delivery]:
        conn = amqp.Connection(f"127.0.0.1:{self.port}", connect_timeout=10, read_timeout=10, write_timeout=10)
        conn.connect()
        out: list[Delivery] = []
        try:
            channel = conn.channel()
            last_tag: int | None = None
            while True:
                msg = channel.basic_get(queue, no_ack=False)
                if msg is None:
                    break
                props = dict(msg.properties)
                headers = dict(props.pop("application_headers", None) or {})
                body = msg.body if isinstance(msg.body, bytes) else str(msg.body).encode(props.get("content_encoding") or "utf-8")
                info = {k: msg.delivery_info.get(k) for k in ("exchange", "routing_key", "redelivered")}
                out.append(Delivery(body=body, headers=headers, properties=props, delivery_info=info))
                last_tag = msg.delivery_tag
            if remove and last_tag is not None:
                channel.basic_ack(last_tag, multiple=True)
            channel.close()  # without the ack: everything goes back to the queue
        finally:
            conn.close()
        return out

    def drain(self, queue: str, remove: bool = True) -> list[Message]:
        """drain_raw() decoded as Celery task messages, the same records as harness.Broker.messages()."""
        return [d.celery() for d in self.drain_raw(queue, remove=remove)]

    def peek(self, queue: str) -> list[Message]:
        """The Celery messages in `queue`, left in the queue."""
        return self.drain(queue, remove=False)


class RabbitBroker:
    """harness.Broker for a RabbitMQ broker: what beat published to one queue, without consuming it."""

    def __init__(self, server: RabbitMQ, queue: str) -> None:
        self.server, self.queue = server, queue
        self.url = server.url

    def messages(self) -> list[Message]:
        return self.server.peek(self.queue)

    def by_entry(self) -> dict[str, list[Message]]:
        out: dict[str, list[Message]] = {}
        for m in self.messages():
            out.setdefault(m.entry, []).append(m)
        return out


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""
