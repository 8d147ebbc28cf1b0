"""The value types every other module speaks in: topic-partitions and events."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

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


class Batch(Sequence[Event]):
    """Events of one partition in offset order, as ``handle_batch`` gets them.

    A batch is a read-only sequence of :class:`Event`. Besides indexing,
    slicing (which gives a batch) and iteration, it offers its fields as
    columns: :meth:`values`, :meth:`keys` and :meth:`offsets` return one
    list each without making an event per record, the fast way for a batch
    handler that needs only those.

    The service's batches are made from the consumed records on demand:
    each indexing or iteration step makes a fresh :class:`Event`, so keep
    the event, not its position, when it has to be looked at twice.
    """

    __slots__ = ("_events",)

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self._events: list[Event] = list(events)

    def __len__(self) -> int:
        return len(self._events)

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> Batch: ...

    def __getitem__(self, index: int | slice) -> Event | Batch:
        if isinstance(index, slice):
            return Batch(self._events[index])
        return self._events[index]

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def values(self) -> list[bytes | None]:
        """Each event's raw value, in order."""
        return [event.value for event in self]

    def keys(self) -> list[bytes | None]:
        """Each event's raw key, in order."""
        return [event.key for event in self]

    def offsets(self) -> list[int]:
        """Each event's offset, in order."""
        return [event.offset for event in self]

    def take(self, indexes: Iterable[int]) -> Batch:
        """A batch of the events at ``indexes`` (ascending), in that order."""
        return Batch([self[index] for index in indexes])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Batch | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compares by content

    def __repr__(self) -> str:
        if not len(self):
            return "Batch([])"
        first, last = self[0], self[-1]
        return (
            f"Batch({first.topic}[{first.partition}] offsets "
            f"{first.offset}..{last.offset}, {len(self)} events)"
        )
