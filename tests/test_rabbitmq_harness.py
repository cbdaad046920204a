"""The RabbitMQ harness itself: what a broker confirmed survives a crash of its VM, so the tests that kill
RabbitMQ under beat can trust that a lost message was lost by beat, not by the harness."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer, Queue

from rabbitmq import RabbitMQ


@pytest.fixture
def rabbit(tmp_path: Path) -> Iterator[RabbitMQ]:
    server = RabbitMQ(tmp_path / "rabbitmq").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_confirmed_persistent_messages_survive_a_kill(rabbit: RabbitMQ) -> None:
    queue = Queue("durable-q", Exchange("", type="direct"), routing_key="durable-q", durable=True)
    with Connection(rabbit.url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel())
        queue.declare(channel=producer.channel)
        for i in range(10):
            # with confirm_publish, publish() returns only once the broker has confirmed the message
            producer.publish(f"m{i}".encode(), routing_key="durable-q", delivery_mode=2,
                             headers={"id": f"id-{i}"}, content_type="application/octet-stream", content_encoding="binary")

    rabbit.kill()
    assert not rabbit.running
    rabbit.restart()

    left = rabbit.drain_raw("durable-q", remove=False)
    assert [d.body for d in left] == [f"m{i}".encode() for i in range(10)]
    assert [d.headers["id"] for d in left] == [f"id-{i}" for i in range(10)]
    assert {d.properties["delivery_mode"] for d in left} == {2}
    drained = rabbit.drain_raw("durable-q")
    assert [d.body for d in drained] == [d.body for d in left]  # peeking put them back, in order
    assert rabbit.drain_raw("durable-q") == []
