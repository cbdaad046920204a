"""RabbitMQ, Celery's default broker: two real beats publish with publisher
confirms to a private RabbitMQ node that is SIGKILLed mid-run and restarted on
the same data; every tick is in the queue exactly once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue

from conftest import BeatGroup
from history import check
from rabbitmq import RabbitBroker, RabbitMQ
from redbeat_safe import every, pattern
from redbeat_safe.scheduler import Scheduler

SCHEDULE = {"e1": {"every": 1}, "e07": {"every": 0.7}, "p1": {"pattern": "*/1 * * * * *"}}
SCHEDULES = {"e1": every(1), "e07": every(0.7), "p1": pattern("*/1 * * * * *", tz="UTC")}


@pytest.fixture
def rabbit(tmp_path: Path) -> Iterator[RabbitMQ]:
    node = RabbitMQ(tmp_path / "rabbit").start()
    yield node
    node.stop()


def ms() -> int:
    return int(time.time() * 1000)


@pytest.mark.slow
def test_two_beats_through_a_rabbitmq_crash_put_every_tick_in_the_queue_once(rabbit: RabbitMQ, beats: BeatGroup) -> None:
    queue = beats.queue
    with Connection(rabbit.url) as conn:  # what a worker would declare: durable, so it outlives a crash
        Queue(queue, Exchange(queue, type="direct"), routing_key=queue, durable=True)(conn.channel()).declare()
    env = {"BEAT_BROKER_URL": rabbit.url, "BEAT_LEASE": "3"}
    a = beats.start(SCHEDULE, "a", **env)
    b = beats.start(SCHEDULE, "b", **env)
    a.wait_log("registered 3 static entries", timeout=60)
    b.wait_log("registered 3 static entries", timeout=60)
    time.sleep(5)
    killed = ms()
    rabbit.kill()  # SIGKILL: whatever it had not confirmed is gone
    time.sleep(3)
    rabbit.restart()
    back = ms()
    time.sleep(10)
    a.stop()
    b.stop()
    stopped = ms()
    messages = RabbitBroker(rabbit, queue).messages()
    reports = check(messages, beats.prefix, SCHEDULES)  # one task id per (entry, tick), the derived one
    counts = Counter((m.entry, m.tick) for m in messages)
    repeats = {k: n for k, n in counts.items() if n > 1}
    print(f"\n{len(messages)} messages, killed at {killed}, back at {back}; same-id repeats: {repeats}")
    for name, rep in reports.items():
        assert rep.ticks, name
        # no gap: every tick from the first to the end made it into the queue, the broker's crash included
        assert not rep.gaps, f"{name}: ticks missing between {rep.gaps}"
        assert rep.ticks[0] < killed - 2000 and rep.ticks[-1] > stopped - 3000, (name, rep.ticks[0], rep.ticks[-1])
    # a repeat can only be a tick whose publish the broker had when it died, but had not confirmed
    # (the beat then sent it again after the lease, same id): within the crash window
    for (entry, tick), n in repeats.items():
        assert n == 2 and killed - 5000 <= tick <= back, (entry, tick, n)
    logs = a.output() + b.output()
    assert "Traceback" not in logs
    # neither beat sat in Celery's own wait for the broker (minutes, without a heartbeat)
    assert "beat: Connection error" not in logs


def _scheduler(broker: str, **conf: object) -> Scheduler:
    app = Celery("confirms", set_as_current=False)
    app.conf.update(broker_url=broker, redbeat_safe_redis_url="redis://127.0.0.1:1/0", result_expires=None, **conf)
    return Scheduler(app=app, lazy=True)


def test_beats_ask_an_amqp_broker_for_publisher_confirms_unless_told_otherwise() -> None:
    assert _scheduler("amqp://guest@127.0.0.1:1//").connection.transport_options["confirm_publish"] is True
    off = _scheduler("amqp://guest@127.0.0.1:1//", broker_transport_options={"confirm_publish": False})
    assert off.connection.transport_options["confirm_publish"] is False
    assert "confirm_publish" not in _scheduler("redis://127.0.0.1:1/0").connection.transport_options
