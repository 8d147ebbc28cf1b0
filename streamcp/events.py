"""The value types every other module speaks in: topic-partitions and events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Headers = Sequence[tuple[str, bytes | None]]


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    """One partition of one topic; hashable, ordered by topic then partition."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


class Event:
    """One Kafka record as a handler sees it.

    ``key`` and ``value`` are the record's raw bytes (``None`` for a missing
    key or a tombstone). ``timestamp_ms`` is the record timestamp in
    milliseconds since the epoch, or ``None`` when the broker gave none.
    ``run_id`` is set when the event is delivered by a replay run and is
    ``None`` for the live service, so handlers can tell the two apart.
    ``decoded_key`` and ``decoded_value`` are the key and value as the
    handler's codecs decoded them (the raw bytes when it declares none).
    """

    __slots__ = (
        "decoded_key",
        "decoded_value",
        "headers",
        "key",
        "offset",
        "partition",
        "run_id",
        "timestamp_ms",
        "topic",
        "value",
    )

    def __init__(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: Headers = (),
        timestamp_ms: int | None = None,
        run_id: str | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp_ms = timestamp_ms
        self.run_id = run_id
        self.decoded_key: Any = key
        self.decoded_value: Any = value

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def is_replay(self) -> bool:
        """True when a replay run delivered this event."""
        return self.run_id is not None

    def header(self, name: str) -> bytes | None:
        """The value of the first header called ``name``, or ``None``."""
        for header_name, header_value in self.headers:
            if header_name == name:
                return header_value
        return None

    def __repr__(self) -> str:
        return (
            f"Event(topic={self.topic!r}, partition={self.partition}, "
            f"offset={self.offset}, key={self.key!r})"
        )

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        fields = (
            "topic",
            "partition",
            "offset",
            "key",
            "value",
            "headers",
            "timestamp_ms",
            "run_id",
        )
        return all(getattr(self, f) == getattr(other, f) for f in fields)

    __hash__ = None  # type: ignore[assignment]  # mutable slots: not hashable
