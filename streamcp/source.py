"""The source: the confluent-kafka consumer, configured the one safe way.

Only the loop's thread calls it. Kafka's auto-commit and automatic offset
store are always off: positions are kept by the offset tracker and written to
the checkpoint store; Kafka's group offsets only mirror accepted checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import confluent_kafka
import structlog
from confluent_kafka import KafkaError, KafkaException

from streamcp.config import KafkaConfig, StartPolicy
from streamcp.errors import ConfigError
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


def check_properties(config: KafkaConfig, start_policy: StartPolicy) -> None:
    """Let librdkafka judge the settings without connecting anywhere.

    A client made without bootstrap servers has no broker to reach; making
    it is enough for librdkafka to refuse an unknown property or a bad
    value. Raises :class:`~streamcp.errors.ConfigError` naming
    ``kafka.properties``.
    """
    settings = consumer_settings(config, start_policy)
    settings.pop("bootstrap.servers", None)
    try:
        confluent_kafka.Consumer(settings).close()
    except KafkaException as exc:
        reason = exc.args[0].str() if exc.args else str(exc)
        raise ConfigError("kafka.properties", reason) from exc


def to_kafka(
    tp: TopicPartition, offset: int | None = None
) -> confluent_kafka.TopicPartition:
    if offset is None:
        return confluent_kafka.TopicPartition(tp.topic, tp.partition)
    return confluent_kafka.TopicPartition(tp.topic, tp.partition, offset)


def from_kafka(parts: Sequence[confluent_kafka.TopicPartition]) -> list[TopicPartition]:
    return [TopicPartition(p.topic, p.partition) for p in parts]


def split_errors(messages: Sequence[Any]) -> tuple[Sequence[Any], list[Any]]:
    """(messages without an error, messages with one), in order.

    The first is ``messages`` itself in the usual case that none has one.
    """
    try:
        if not any(map(_message_error, messages)):
            return messages, []
    except TypeError:  # not confluent-kafka's own messages (a test double)
        pass
    good: list[Any] = []
    errored: list[Any] = []
    for message in messages:
        (good if message.error() is None else errored).append(message)
    return good, errored


def group_by_partition(
    messages: Sequence[Any], run_id: str | None = None
) -> Iterator[tuple[TopicPartition, list[Event], int]]:
    """Yield (partition, events in offset order, value bytes) per partition.

    Consecutive messages of one partition form one run; a partition that
    comes back later in the same batch yields a second run.
    """
    if not messages:
        return
    topics, partitions = _topics_and_partitions(messages)
    for start, end in _runs(topics, partitions):
        topic, partition = topics[start], partitions[start]
        run = messages[start:end]
        yield (
            TopicPartition(topic, partition),
            _events(run, topic, partition, run_id),
            _value_bytes(run),
        )


# This loop runs for every event the service consumes, on the polling thread,
# so it is written for speed: the messages' accessors are looked up once and
# the events are made without the keyword constructor (three times slower).
# _events sets every slot that Event.__init__ sets.
_new_event = Event.__new__
_message_topic = confluent_kafka.Message.topic
_message_partition = confluent_kafka.Message.partition
_message_error = confluent_kafka.Message.error


def _topics_and_partitions(messages: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    try:
        return (
            list(map(_message_topic, messages)),
            list(map(_message_partition, messages)),
        )
    except TypeError:  # not confluent-kafka's own messages (a test double)
        return [m.topic() for m in messages], [m.partition() for m in messages]


def _runs(topics: list[Any], partitions: list[Any]) -> list[tuple[int, int]]:
    """(start, end) of each run of one topic-partition in a batch."""
    size = len(partitions)
    if partitions.count(partitions[0]) == size and topics.count(topics[0]) == size:
        return [(0, size)]  # the usual case: a fetch brings one partition
    starts = [0] + [
        index
        for index in range(1, size)
        if partitions[index] != partitions[index - 1]
        or topics[index] != topics[index - 1]
    ]
    return list(zip(starts, [*starts[1:], size], strict=True))


def _events(
    messages: Sequence[Any], topic: str, partition: int, run_id: str | None
) -> list[Event]:
    events: list[Event] = []
    append = events.append
    for message in messages:
        event = _new_event(Event)
        event.topic = topic
        event.partition = partition
        event.offset = message.offset()
        event.key = event.decoded_key = message.key()
        event.value = event.decoded_value = message.value()
        event.headers = message.headers() or ()
        timestamp_type, timestamp = message.timestamp()
        event.timestamp_ms = timestamp if timestamp_type else None
        event.run_id = run_id
        append(event)
    return events


def _value_bytes(messages: Sequence[Any]) -> int:
    try:
        return sum(map(len, messages))  # a message's len is its value's
    except TypeError:
        return sum(len(v) for m in messages if (v := m.value()) is not None)


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
    "split_errors",
    "to_kafka",
]
