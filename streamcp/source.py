"""The source: the confluent-kafka consumer, configured the one safe way.

Only the loop's thread calls it. Kafka's auto-commit and automatic offset
store are always off: positions are kept by the offset tracker and written to
the checkpoint store; Kafka's group offsets only mirror accepted checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import logging
from typing import Any

import confluent_kafka
import structlog
from confluent_kafka import KafkaError, KafkaException

from streamcp.config import KafkaConfig, StartPolicy
from streamcp.events import Event, TopicPartition

RebalanceCallback = Callable[[list[TopicPartition]], None]

OFFSET_BEGINNING = confluent_kafka.OFFSET_BEGINNING
OFFSET_END = confluent_kafka.OFFSET_END
OFFSET_STORED = confluent_kafka.OFFSET_STORED

_ASSIGNORS = {
    "range": "range",
    "roundrobin": "roundrobin",
    "cooperative-sticky": "cooperative-sticky",
}
_RESET = {"earliest": "earliest", "latest": "latest", "fail": "error"}


class _LibrdkafkaLog(logging.Handler):
    """Forwards librdkafka's own log lines as structlog events."""

    def __init__(self) -> None:
        super().__init__()
        self._log = structlog.get_logger("streamcp.librdkafka")

    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno >= logging.WARNING else "debug"
        getattr(self._log, level)("kafka.client_log", message=record.getMessage())


def librdkafka_logger() -> logging.Logger:
    """A stdlib logger for librdkafka's ``logger`` property."""
    logger = logging.getLogger("streamcp.librdkafka")
    if not logger.handlers:
        logger.addHandler(_LibrdkafkaLog())
        logger.propagate = False
        logger.setLevel(logging.INFO)
    return logger


def consumer_settings(config: KafkaConfig, start_policy: StartPolicy) -> dict[str, Any]:
    """librdkafka settings for a group consumer (pass-through properties first)."""
    settings: dict[str, Any] = dict(config.properties)
    settings.update(
        {
            "bootstrap.servers": config.bootstrap_servers,
            "group.id": config.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "isolation.level": config.isolation_level,
            "partition.assignment.strategy": _ASSIGNORS[config.assignor],
            "session.timeout.ms": config.session_timeout_ms,
            "max.poll.interval.ms": config.max_poll_interval_ms,
            # A checkpoint outside the partition's log falls back to the
            # start policy; "error" surfaces it for the fail policy.
            "auto.offset.reset": _RESET[start_policy],
        }
    )
    settings.setdefault("fetch.queue.backoff.ms", 10)
    settings.setdefault("logger", librdkafka_logger())
    if config.group_instance_id:
        settings["group.instance.id"] = config.group_instance_id
    return settings


def to_kafka(tp: TopicPartition, offset: int | None = None) -> confluent_kafka.TopicPartition:
    if offset is None:
        return confluent_kafka.TopicPartition(tp.topic, tp.partition)
    return confluent_kafka.TopicPartition(tp.topic, tp.partition, offset)


def from_kafka(parts: Sequence[confluent_kafka.TopicPartition]) -> list[TopicPartition]:
    return [TopicPartition(p.topic, p.partition) for p in parts]


def group_by_partition(
    messages: Sequence[Any], run_id: str | None = None
) -> Iterator[tuple[TopicPartition, list[Event], int]]:
    """Yield (partition, events in offset order, value bytes) per partition.

    Consecutive messages of one partition form one run; a partition that
    comes back later in the same batch yields a second run.
    """
    current: TopicPartition | None = None
    topic: str | None = None
    partition = -1
    events: list[Event] = []
    nbytes = 0
    for message in messages:
        m_topic = message.topic()
        m_partition = message.partition()
        if m_partition != partition or m_topic != topic:
            if current is not None and events:
                yield current, events, nbytes
            topic, partition = m_topic, m_partition
            current = TopicPartition(m_topic, m_partition)
            events, nbytes = [], 0
        value = message.value()
        timestamp_type, timestamp = message.timestamp()
        events.append(
            Event(
                topic=m_topic,
                partition=m_partition,
                offset=message.offset(),
                key=message.key(),
                value=value,
                headers=message.headers() or (),
                timestamp_ms=timestamp if timestamp_type else None,
                run_id=run_id,
            )
        )
        if value is not None:
            nbytes += len(value)
    if current is not None and events:
        yield current, events, nbytes


def is_fatal(error: KafkaError) -> bool:
    return bool(error.fatal())


__all__ = [
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "OFFSET_STORED",
    "KafkaError",
    "KafkaException",
    "consumer_settings",
    "from_kafka",
    "group_by_partition",
    "to_kafka",
]
