"""The ceiling for one Python publisher: a bare `send_task` loop through one reused
producer, sending the same message shape a beat sends (task id, args, headers).

    python -m bench.ceiling SECONDS          (BENCH_BROKER_URL set): as fast as it can, for SECONDS
    python -m bench.ceiling --count N        N messages as fast as it can: a burst's shape
"""

from __future__ import annotations

import sys
import time
import uuid

from bench.benchapp import app


def main(seconds: float | None, count: int | None = None) -> None:
    end = time.monotonic() + (seconds if seconds is not None else 1e9)
    i = 0
    with app.producer_or_acquire() as producer:
        while time.monotonic() < end and (count is None or i < count):
            app.send_task("bench.noop", [i], {}, producer=producer, task_id=str(uuid.uuid4()), headers={"celery_beat_task": True})
            i += 1


if __name__ == "__main__":
    if sys.argv[1] == "--count":
        main(None, int(sys.argv[2]))
    else:
        main(float(sys.argv[1]))
