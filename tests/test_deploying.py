"""docs/deploying.md's snippets, read from the page and run here: the systemd unit is
verified by systemd-analyze and its ExecStart run with its Environment; the Kubernetes
manifest's shape is checked and its readiness probe command run against a real beat;
the Compose beat service's command run with its environment. Real Redis, real
`celery beat` from the example project."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import ROOT, RedisServer, wait_for

PAGE = ROOT / "docs" / "deploying.md"
PROJECT = ROOT / "example_project"
BIN = Path(sys.executable).parent


def snippet(name: str) -> str:
    """The fenced block right after `<!-- snippet: NAME -->`."""
    found = re.search(rf"<!-- snippet: {name} -->\n```[a-z]*\n(.*?)```", PAGE.read_text(), re.S)
    assert found, f"no snippet {name!r} in {PAGE.name}"
    return found.group(1)


def _env(redis_server: RedisServer, prefix: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "REDBEAT"))}
    env.update(extra or {})
    env["REDIS_URL"] = redis_server.url  # the snippet's Redis is not here: ours is
    env["REDBEAT_SAFE_PREFIX"] = prefix
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "celery"), "-A", "proj", "schedules", "health", *args], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A copy of the example project, so nothing the beat writes lands in the repository."""
    copy = tmp_path / "proj"
    shutil.copytree(PROJECT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    yield copy


class Running:
    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise


def _argv(command: list[str]) -> list[str]:
    return [str(BIN / "celery"), *command[1:]] if command[0] == "celery" else command


def test_the_systemd_unit_verifies_and_its_command_runs_and_stops_cleanly(redis_server: RedisServer, prefix: str, workdir: Path,
                                                                          tmp_path: Path) -> None:
    unit = snippet("systemd")
    local = unit.replace("/srv/proj/.venv/bin/", f"{BIN}/").replace("WorkingDirectory=/srv/proj", f"WorkingDirectory={workdir}")
    path = tmp_path / "proj-beat.service"
    path.write_text(local)
    verified = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stderr
    fields = dict(re.findall(r"^(\w+)=(.*)$", local, re.M))
    assert fields["Restart"] == "always" and fields["KillSignal"] == "SIGTERM"
    extra = dict(v.split("=", 1) for v in re.findall(r"^Environment=(.*)$", local, re.M))
    env = _env(redis_server, prefix, extra)
    beat = Running(shlex.split(fields["ExecStart"]), workdir, env, tmp_path / "beat.log")
    try:
        wait_for(lambda: _health(env).returncode == 0, 60, interval=0.5, what="health to pass with the unit's beat")
    finally:
        code = beat.stop(signal.Signals[fields["KillSignal"]], timeout=float(fields["TimeoutStopSec"]))
    assert code == 0, beat.output()[-3000:]
    assert not (workdir / "celerybeat.pid").exists() and not list(workdir.glob("celerybeat-schedule*"))  # nothing on disk
    assert _health(env).returncode == 1  # a clean stop deregisters


def test_the_kubernetes_manifest_has_its_shape_and_its_readiness_probe_answers(redis_server: RedisServer, prefix: str,
                                                                               workdir: Path, tmp_path: Path) -> None:
    deployment, pdb = yaml.safe_load_all(snippet("kubernetes"))
    assert deployment["kind"] == "Deployment" and deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]
    assert pdb["kind"] == "PodDisruptionBudget" and pdb["spec"]["minAvailable"] >= 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert "livenessProbe" not in container  # on purpose: see the page
    probe = container["readinessProbe"]["exec"]["command"]
    env = _env(redis_server, prefix, {"HOSTNAME": socket.gethostname()})
    beat = Running(_argv(container["command"]), workdir, env, tmp_path / "beat.log")
    try:
        wait_for(lambda: subprocess.run(probe, cwd=workdir, env=env, capture_output=True, timeout=60).returncode == 0, 60,
                 interval=0.5, what="the readiness probe to pass")
        elsewhere = dict(env, HOSTNAME="proj-beat-7d9f-other")
        other = subprocess.run(probe, cwd=workdir, env=elsewhere, capture_output=True, text=True, timeout=60)
        assert other.returncode == 1 and "on host 'proj-beat-7d9f-other'" in other.stdout  # a pod answers for itself
    finally:
        assert beat.stop() == 0, beat.output()[-3000:]
    assert subprocess.run(probe, cwd=workdir, env=env, capture_output=True, timeout=60).returncode == 1


def test_the_compose_beat_service_runs_as_written(redis_server: RedisServer, prefix: str, workdir: Path, tmp_path: Path) -> None:
    services: dict[str, Any] = yaml.safe_load(snippet("compose"))["services"]
    beat_service = services["beat"]
    assert beat_service["deploy"]["replicas"] >= 2 and "--appendonly" in services["redis"]["command"]
    env = _env(redis_server, prefix, {k: str(v) for k, v in beat_service["environment"].items()})
    beats = [Running(_argv(beat_service["command"]), workdir, env, tmp_path / f"beat{i}.log") for i in range(2)]
    try:
        wait_for(lambda: _health(env, "--min-beats", "2").returncode == 0, 60, interval=0.5, what="two beats to be alive")
    finally:
        codes = [b.stop() for b in beats]
    assert codes == [0, 0], [b.output()[-2000:] for b in beats]
