"""Losing the store Redis: the beat keeps running, says so once, and resumes with the
misfire policy. The 30 s version of the same run is ``python -m bench.outage``."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import RedisServer
from outage import run


@pytest.mark.parametrize("mode", ["stop", "freeze"])
@pytest.mark.slow
def test_a_store_outage_longer_than_the_grace_is_survived_logged_once_and_coalesced(
    tmp_path: Path, redis_server: RedisServer, prefix: str, mode: str
) -> None:
    """8 s without Redis, lease 2 s (grace 3 s): ticks in the outage were missed, not slept through."""
    fig = run(tmp_path, mode=mode, outage=8, lease=2, before=3, after=5, broker=redis_server, prefix=prefix)
    print(fig)
    assert fig.alive and fig.exit_code == 0 and fig.tracebacks == 0, fig
    assert fig.outage_lines == 1 and fig.recovered_lines == 1, fig
    assert fig.resume_s is not None and fig.resume_s < 8, fig  # "freeze" may first wait out socket_timeout (5 s)
    assert fig.same_id_repeats == 0 and fig.missed_outside == 0, fig
    assert 3 <= fig.gap_ticks <= 9 and fig.late_ticks <= 1, fig  # coalesce: the missed run fires once
