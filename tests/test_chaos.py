"""The chaos harness's short profile: real beats, real faults, every message checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.run import Config, run


@pytest.mark.timeout(400)
@pytest.mark.slow
def test_a_short_chaos_run_keeps_every_guarantee(tmp_path: Path) -> None:
    lines: list[str] = []
    verdict = run(Config(seconds=50, seed=11, beats=3, lease=5.0), tmp_path, say=lines.append)
    print("\n".join(lines) + "\n\n" + verdict.table())
    assert verdict.ok, verdict.table()
    assert sum(verdict.faults.values()) >= 10 and len(verdict.faults) >= 9, verdict.faults  # it really was chaotic
    assert verdict.faults["reply_lost"] and verdict.faults["damage"], verdict.faults
    assert verdict.figures["ticks expected (static)"] > 150
    assert int(str(verdict.figures["script replies lost (all proxies)"])) > 20, verdict.figures
    assert int(str(verdict.figures["trigger requests (returned)"]).split()[0]) > 10, verdict.figures
