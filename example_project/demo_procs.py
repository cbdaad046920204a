"""Real processes for the demo: celery beats and workers, each in its own session.

A SIGKILL goes to the whole process group, so ``celery worker -B`` loses its
embedded beat and its pool with it, as when a host dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Proc:
    """One `celery` command line; start, SIGKILL, restart, stop."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name, self.args, self.env, self.workdir = name, args, env, workdir
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._mark = 0  #: log offset at the last start: readiness is judged on the new output

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> Proc:
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
        self._mark = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as fh:
            fh.write(f"--- start {self.starts + 1}: celery {' '.join(self.args)}\n".encode())
            fh.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", *self.args],
                cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.starts += 1
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self, since_start: bool = True) -> str:
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as fh:
            fh.seek(self._mark if since_start else 0)
            return fh.read().decode(errors="replace")

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL, no cleanup: the host died."""
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL whatever is left of the group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)
        self.proc.wait()


def wait_until(predicate: object, timeout: float, what: str, procs: list[Proc]) -> None:
    """Poll ``predicate`` (a callable); on timeout or a dead process, fail with the log's tail."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        dead = [p for p in procs if p.proc is not None and not p.alive()]
        if dead or time.monotonic() > deadline:
            culprit = dead[0] if dead else procs[0]
            tail = "\n".join(culprit.output(since_start=False).splitlines()[-25:])
            reason = f"{culprit.name} exited with {culprit.proc.returncode}" if dead and culprit.proc else f"timed out after {timeout:.0f}s"
            raise RuntimeError(f"waiting for {what}: {reason}; the end of {culprit.log}:\n{tail}")
        time.sleep(0.1)
