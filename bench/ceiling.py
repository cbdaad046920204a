"""The ceiling for one Python publisher: a bare `send_task` loop through one reused
producer, sending the same message shape a beat sends (task id, args, headers).

    python -m bench.ceiling SECONDS    (BENCH_BROKER_URL set)
"""

from __future__ import annotations

import sys
import time
import uuid

from bench.benchapp import app


def main(seconds: float) -> None:
    end = time.monotonic() + seconds
    i = 0
    with app.producer_or_acquire() as producer:
        while time.monotonic() < end:
            app.send_task("bench.noop", [i], {}, producer=producer, task_id=str(uuid.uuid4()), headers={"celery_beat_task": True})
            i += 1


if __name__ == "__main__":
    main(float(sys.argv[1]))
