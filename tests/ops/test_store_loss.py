"""Store loss: Redis flushed under a group whose Kafka offsets remember it."""

from __future__ import annotations

import threading
from collections.abc import Callable

from structlog.testing import capture_logs

from streamcp.admin import KafkaView
from streamcp.errors import StoreLost
from streamcp.events import Event, TopicPartition
from streamcp.services import RedisService
from tests.ops.conftest import Setup
from tests.recorder import read_handled
from tests.service.harness import (
    ServiceProcess,
    ServiceThread,
    checkpoints,
    produce,
    wait_for,
    write_config,
)


class Seen:
    def __init__(self) -> None:
        self.offsets: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.offsets.append((event.partition, event.offset))


def _kafka_offsets(setup: Setup) -> dict[int, int]:
    view = KafkaView(setup.config().kafka)
    try:
        parts = [TopicPartition(setup.topic, p) for p in range(3)]
        return {tp.partition: o for tp, o in view.committed(parts).items()}
    finally:
        view.close()


def _consume_then_flush(setup: Setup, private: RedisService) -> None:
    produce(setup.kafka.bootstrap_servers, setup.topic, 3, 10)
    with ServiceThread(setup.config(), Seen()):
        wait_for(
            lambda: checkpoints(setup.store, setup.group) == {0: 10, 1: 10, 2: 10},
            what="checkpoints at 10",
        )
    wait_for(
        lambda: _kafka_offsets(setup) == {0: 10, 1: 10, 2: 10},
        what="the checkpoints mirrored to Kafka",
    )
    private.flushall()
    assert checkpoints(setup.store, setup.group) == {}


def test_flushed_store_stops_the_service_with_store_lost_by_default(
    setup_factory: Callable[..., Setup],
    redis_factory: Callable[..., RedisService],
) -> None:
    """After FLUSHALL the next run handles nothing, applies no start policy,
    and stops with status 1 and a StoreLost naming the group and Kafka's
    offset of every partition."""
    private = redis_factory()
    setup = setup_factory(redis_url=private.url)
    _consume_then_flush(setup, private)

    seen = Seen()
    running = ServiceThread(setup.config(), seen)
    with running:
        status = running.join(60)
    assert status == 1
    failure = running.service.failure
    assert isinstance(failure, StoreLost)
    for partition in range(3):
        assert f"{setup.topic}[{partition}]=10" in str(failure)
    assert repr(setup.group) in str(failure)
    assert seen.offsets == []
    assert all(cp is None for cp in checkpoints(setup.store, setup.group).values())


def test_flushed_store_makes_the_cli_exit_1_with_a_clear_message(
    setup_factory: Callable[..., Setup],
    redis_factory: Callable[..., RedisService],
) -> None:
    """``streamcp run`` as a real process exits 1 after a flush and says on
    stderr that the store lost the group's checkpoints, and how to recover."""
    private = redis_factory()
    setup = setup_factory(redis_url=private.url)
    _consume_then_flush(setup, private)
    raw = setup.raw(
        handler={"options": {"path": str(setup.tmp / "handled.txt")}},
        log={"level": "info", "format": "json"},
    )
    proc = ServiceProcess(write_config(setup.tmp / "c.toml", raw), setup.tmp / "log")
    try:
        assert proc.wait(60) == 1
    finally:
        proc.kill()
    output = (setup.tmp / "log").read_text()
    assert "streamcp: stopped: the checkpoint store holds no checkpoints" in output
    assert "recover_from_kafka" in output
    assert proc.saw("checkpoint.store_lost")
    assert read_handled(setup.tmp / "handled.txt") == []


def test_flushed_store_recovers_from_kafka_offsets_when_configured(
    setup_factory: Callable[..., Setup],
    redis_factory: Callable[..., RedisService],
) -> None:
    """With on_store_loss = "recover_from_kafka" the service writes Kafka's
    offsets back to Redis, logs checkpoint.recovered for each partition,
    and handles only the events after them."""
    private = redis_factory()
    setup = setup_factory(redis_url=private.url)
    _consume_then_flush(setup, private)

    seen = Seen()
    config = setup.config(consumer={"on_store_loss": "recover_from_kafka"})
    with capture_logs() as logs, ServiceThread(config, seen):
        wait_for(
            lambda: checkpoints(setup.store, setup.group) == {0: 10, 1: 10, 2: 10},
            what="recovered checkpoints in Redis",
        )
        produce(setup.kafka.bootstrap_servers, setup.topic, 3, 2, start=10)
        wait_for(lambda: len(seen.offsets) == 6, what="the 6 new events")
        wait_for(
            lambda: checkpoints(setup.store, setup.group) == {0: 12, 1: 12, 2: 12},
            what="checkpoints at 12",
        )
    assert sorted(seen.offsets) == [(p, o) for p in range(3) for o in (10, 11)]
    recovered = [e for e in logs if e["event"] == "checkpoint.recovered"]
    assert sorted((e["partition"], e["checkpoint"]) for e in recovered) == [
        (0, 10),
        (1, 10),
        (2, 10),
    ]
    assert all(e["source"] == "kafka group offsets" for e in recovered)


def test_mirror_puts_accepted_checkpoints_into_kafka_group_offsets(
    setup: Setup,
) -> None:
    """With commit.mirror_to_kafka on (the default), another client of the
    group sees Kafka committed offsets equal to the Redis checkpoints."""
    produce(setup.kafka.bootstrap_servers, setup.topic, 3, 7)
    with ServiceThread(setup.config(), Seen()):
        wait_for(
            lambda: checkpoints(setup.store, setup.group) == {0: 7, 1: 7, 2: 7},
            what="checkpoints at 7",
        )
        wait_for(
            lambda: _kafka_offsets(setup) == {0: 7, 1: 7, 2: 7},
            what="the same offsets in Kafka while running",
        )


def test_mirror_off_commits_nothing_to_kafka(setup: Setup) -> None:
    """With commit.mirror_to_kafka = false, the group has no committed
    offsets in Kafka, while running and after a graceful stop."""
    produce(setup.kafka.bootstrap_servers, setup.topic, 3, 7)
    config = setup.config(
        commit={"every_events": 5, "every_seconds": 0.5, "mirror_to_kafka": False}
    )
    with ServiceThread(config, Seen()):
        wait_for(
            lambda: checkpoints(setup.store, setup.group) == {0: 7, 1: 7, 2: 7},
            what="checkpoints at 7",
        )
        assert _kafka_offsets(setup) == {}
    assert _kafka_offsets(setup) == {}
