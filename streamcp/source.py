"""The source: the confluent-kafka consumer, configured the one safe way.

Only the loop's thread calls it. Kafka's auto-commit and automatic offset
store are always off: positions are kept by the offset tracker and written to
the checkpoint store; Kafka's group offsets only mirror accepted checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, overload

import confluent_kafka
import structlog
from confluent_kafka import KafkaError, KafkaException

from streamcp.config import KafkaConfig, StartPolicy
from streamcp.errors import ConfigError
from streamcp.events import Batch, Event, Headers, TopicPartition

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
    settings.setdefault("queued.max.messages.kbytes", 8192)
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
    messages: Sequence[Any], run_id: str | None = None, topic: str | None = None
) -> Iterator[tuple[TopicPartition, MessageBatch, int]]:
    """Yield (partition, its events in offset order, value bytes) per run.

    Consecutive messages of one partition form one run; a partition that
    comes back later in the same batch yields a second run. The events are
    a :class:`MessageBatch`: nothing is made per record until it is read.
    ``topic``, when the consumer reads that one topic only, spares reading
    each message's topic.
    """
    if not messages:
        return
    if topic is None:
        topics, partitions = _topics_and_partitions(messages)
    else:
        partitions = _partitions(messages)
        topics = [topic] * len(partitions)
    for start, end in _runs(topics, partitions, topic is not None):
        topic, partition = topics[start], partitions[start]
        run = messages[start:end] if end - start < len(messages) else messages
        yield (
            TopicPartition(topic, partition),
            MessageBatch(run, topic, partition, run_id),
            _value_bytes(run),
        )


# The code below runs for every event the service consumes, so it is
# written for speed: a batch keeps confluent-kafka's own message objects and
# reads them through their unbound accessors (a test double without them
# takes the slower path), and an event is made only when it is read.
_message_topic = confluent_kafka.Message.topic
_message_partition = confluent_kafka.Message.partition
_message_error = confluent_kafka.Message.error
_message_offset = confluent_kafka.Message.offset
_message_key = confluent_kafka.Message.key
_message_value = confluent_kafka.Message.value
_UNDECODED: Any = object()  # a consumed event's decoded field not yet set


class ConsumedEvent(Event):
    """An event read from a consumed message when a field is first asked for.

    It is an :class:`~streamcp.events.Event` in every respect; only the
    storage differs (the message itself, not copies of its fields).
    """

    __slots__ = ("_decoded_key", "_decoded_value", "_message")
    _decoded_key: Any
    _decoded_value: Any
    _message: Any

    @property
    def offset(self) -> int:  # type: ignore[override]
        offset: int = self._message.offset()
        return offset

    @property
    def key(self) -> bytes | None:  # type: ignore[override]
        key: bytes | None = self._message.key()
        return key

    @property
    def value(self) -> bytes | None:  # type: ignore[override]
        value: bytes | None = self._message.value()
        return value

    @property
    def headers(self) -> Headers:  # type: ignore[override]
        headers: Headers = self._message.headers() or ()
        return headers

    @property
    def timestamp_ms(self) -> int | None:  # type: ignore[override]
        timestamp_type, timestamp = self._message.timestamp()
        return int(timestamp) if timestamp_type else None

    @property
    def decoded_key(self) -> Any:
        decoded = self._decoded_key
        return self._message.key() if decoded is _UNDECODED else decoded

    @decoded_key.setter
    def decoded_key(self, decoded: Any) -> None:
        self._decoded_key = decoded

    @property
    def decoded_value(self) -> Any:
        decoded = self._decoded_value
        return self._message.value() if decoded is _UNDECODED else decoded

    @decoded_value.setter
    def decoded_value(self, decoded: Any) -> None:
        self._decoded_value = decoded

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled and copied as a plain Event: the message is not picklable.
        return (_plain_event, (self._fields(), self.decoded_key, self.decoded_value))

    def _fields(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "value": self.value,
            "headers": self.headers,
            "timestamp_ms": self.timestamp_ms,
            "run_id": self.run_id,
        }


def _plain_event(fields: dict[str, Any], decoded_key: Any, decoded_value: Any) -> Event:
    event = Event(**fields)
    event.decoded_key = decoded_key
    event.decoded_value = decoded_value
    return event


_new_event = ConsumedEvent.__new__


class MessageBatch(Batch):
    """A run of one partition's consumed messages, seen as a :class:`Batch`."""

    __slots__ = ("_messages", "_partition", "_run_id", "_topic")

    def __init__(
        self,
        messages: Sequence[Any],
        topic: str,
        partition: int,
        run_id: str | None = None,
    ) -> None:
        self._messages = messages
        self._topic = topic
        self._partition = partition
        self._run_id = run_id

    def __len__(self) -> int:
        return len(self._messages)

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> MessageBatch: ...

    def __getitem__(self, index: int | slice) -> Event | MessageBatch:
        if isinstance(index, slice):
            return self._with(self._messages[index])
        return self._event(self._messages[index])

    def __iter__(self) -> Iterator[Event]:
        return self.events_from(0)

    def events_from(self, start: int) -> Iterator[Event]:
        """The events from position ``start`` on, each made as it is reached."""
        # What _event does, written out: this is the per-event path, where a
        # method call per event would cost a tenth of the handler's budget.
        new, cls = _new_event, ConsumedEvent
        topic, partition, run_id = self._topic, self._partition, self._run_id
        messages = self._messages
        for message in islice(messages, start, None) if start else messages:
            event = new(cls)
            event._message = message
            event.topic = topic
            event.partition = partition
            event.run_id = run_id
            event._decoded_key = event._decoded_value = _UNDECODED
            yield event

    def _event(self, message: Any) -> ConsumedEvent:
        event = _new_event(ConsumedEvent)
        event._message = message
        event.topic = self._topic
        event.partition = self._partition
        event.run_id = self._run_id
        event._decoded_key = event._decoded_value = _UNDECODED
        return event

    def _with(self, messages: Sequence[Any]) -> MessageBatch:
        return MessageBatch(messages, self._topic, self._partition, self._run_id)

    def values(self) -> list[bytes | None]:
        values: list[bytes | None] = _column(_message_value, "value", self._messages)
        return values

    def keys(self) -> list[bytes | None]:
        keys: list[bytes | None] = _column(_message_key, "key", self._messages)
        return keys

    def offsets(self) -> list[int]:
        offsets: list[int] = _column(_message_offset, "offset", self._messages)
        return offsets

    def take(self, indexes: Iterable[int]) -> MessageBatch:
        messages = self._messages
        return self._with([messages[index] for index in indexes])


def _column(accessor: Callable[[Any], Any], name: str, messages: Sequence[Any]) -> Any:
    try:
        return list(map(accessor, messages))
    except TypeError:  # not confluent-kafka's own messages (a test double)
        return [getattr(message, name)() for message in messages]


def _topics_and_partitions(messages: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    try:
        return (
            list(map(_message_topic, messages)),
            list(map(_message_partition, messages)),
        )
    except TypeError:  # not confluent-kafka's own messages (a test double)
        return [m.topic() for m in messages], [m.partition() for m in messages]


def _partitions(messages: Sequence[Any]) -> list[Any]:
    try:
        return list(map(_message_partition, messages))
    except TypeError:  # not confluent-kafka's own messages (a test double)
        return [m.partition() for m in messages]


def _runs(
    topics: list[Any], partitions: list[Any], one_topic: bool = False
) -> list[tuple[int, int]]:
    """(start, end) of each run of one topic-partition in a batch."""
    size = len(partitions)
    if partitions.count(partitions[0]) == size and (
        one_topic or topics.count(topics[0]) == size
    ):
        return [(0, size)]  # the usual case: a fetch brings one partition
    starts = [0] + [
        index
        for index in range(1, size)
        if partitions[index] != partitions[index - 1]
        or topics[index] != topics[index - 1]
    ]
    return list(zip(starts, [*starts[1:], size], strict=True))


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
    "ConsumedEvent",
    "KafkaError",
    "KafkaException",
    "MessageBatch",
    "consumer_settings",
    "from_kafka",
    "group_by_partition",
    "split_errors",
    "to_kafka",
]
