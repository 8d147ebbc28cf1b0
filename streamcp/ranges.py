"""Replay ranges: what a request asks for, and the offsets it resolves to.

A :class:`RangeRequest` names a topic, optionally some of its partitions,
and a start and an end, each as an offset or a time. Resolving it gives one
:class:`PartitionRange` per partition: the first offset to replay
(inclusive) and the offset to stop at (exclusive), both real offsets of the
partition's log, never the broker's "no offset" answer (-1).

How each bound resolves, per partition, between the log start ``low`` and
the high watermark ``high``:

* no start: ``low``; an offset: itself, raised to ``low`` when retention
  deleted it; a time: the first event in log order whose timestamp is at or
  after it, or ``high`` (nothing to replay) when there is none;
* no end: ``high``; an offset: itself (plus one with ``end_inclusive``),
  lowered to ``high`` when beyond it, or refused with ``strict_end``; a time:
  the first event whose timestamp is at or after it (after it, with
  ``end_inclusive``), or ``high`` when there is none.

The high watermark is the larger of the broker's ListOffsets answer and the
one a fetch response carries (some brokers answer ListOffsets wrongly for
multi-record batches; the fetch response is right). A time is found by
reading forward from a lower bound: the broker's ``offsets_for_times``
answer when it gives one, else the log start; the broker's answer alone is
not trusted, because some Kafka-compatible brokers answer imprecisely.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import confluent_kafka
import structlog

from streamcp.errors import ReplayError, RequestRefused
from streamcp.events import TopicPartition
from streamcp.source import to_kafka

log = structlog.get_logger("streamcp.ranges")

Clock = Callable[[], float]

# How long one broker request (metadata, ListOffsets, offsets_for_times)
# may take before the resolution gives up.
REQUEST_TIMEOUT_S = 10.0
# How long a forward read for a timestamp may see no progress before it
# gives up: a fetch normally answers within a few hundred milliseconds.
READ_IDLE_TIMEOUT_S = 15.0
# Events asked for per consume() call while reading forward.
READ_BATCH = 500


@dataclass(frozen=True, kw_only=True)
class RangeRequest:
    """What a replay asks for; validated on construction.

    ``partitions`` empty means every partition of the topic. Offsets must
    not be negative; a start may be an offset or a time, not both, and so
    may an end. Raises :class:`RequestRefused` naming the option at fault.
    """

    topic: str
    partitions: tuple[int, ...] = ()
    from_offset: int | None = None
    to_offset: int | None = None
    from_time: datetime | None = None
    to_time: datetime | None = None
    end_inclusive: bool = False
    strict_end: bool = False

    def __post_init__(self) -> None:
        if not self.topic:
            raise RequestRefused("--topic", "is missing: name the topic to replay")
        for name, value in (("--from", self.from_offset), ("--to", self.to_offset)):
            if value is not None and value < 0:
                raise RequestRefused(name, f"offsets are not negative, got {value!r}")
        for partition in self.partitions:
            if partition < 0:
                raise RequestRefused(
                    "--partition", f"partitions are not negative, got {partition!r}"
                )
        if self.from_offset is not None and self.from_time is not None:
            raise RequestRefused("--from", "give --from or --from-time, not both")
        if self.to_offset is not None and self.to_time is not None:
            raise RequestRefused("--to", "give --to or --to-time, not both")
        self._check_order()

    def _check_order(self) -> None:
        start, end = self.from_offset, self.to_offset
        if start is not None and end is not None and start > end:
            raise RequestRefused(
                "--from", f"start offset {start} is after end offset {end}"
            )
        since, until = self.from_time, self.to_time
        if since is not None and until is not None and since > until:
            raise RequestRefused(
                "--from-time",
                f"start time {since.isoformat()!r} is after end time "
                f"{until.isoformat()!r}",
            )

    def describe(self) -> dict[str, Any]:
        """The request as plain values, for the run record."""
        return {
            "topic": self.topic,
            "partitions": list(self.partitions) or "all",
            "from": self.from_offset,
            "to": self.to_offset,
            "from_time": self.from_time.isoformat() if self.from_time else None,
            "to_time": self.to_time.isoformat() if self.to_time else None,
            "end_inclusive": self.end_inclusive,
            "strict_end": self.strict_end,
        }


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """One partition's resolved range: offsets ``start`` up to ``end``.

    ``start`` is inclusive and ``end`` exclusive; ``start == end`` means
    nothing to replay. ``note`` says what resolution changed (an end lowered
    to the high watermark, a start raised to the log start).
    """

    partition: int
    start: int
    end: int
    note: str = ""

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(
                f"partition {self.partition}: invalid range [{self.start}, {self.end})"
            )

    @property
    def offsets(self) -> int:
        """Offsets in the range: the most events it can hold."""
        return self.end - self.start


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time; one without a UTC offset is taken as UTC.

    Raises :class:`RequestRefused` naming ``option`` when ``text`` is not
    ISO 8601.
    """
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise RequestRefused(
            option, f"not an ISO 8601 time, got {text!r} (e.g. 2024-05-01T12:00:00Z)"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if parsed < EPOCH:
        # Record timestamps start at the epoch; -1 would even mean "latest"
        # to the broker's time lookup.
        raise RequestRefused(option, f"before 1970-01-01T00:00:00Z, got {text!r}")
    return parsed


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class BrokerView:
    """What resolution asks the broker, through one assign-only consumer.

    The consumer is never subscribed and never commits; the caller owns and
    closes it. Every method blocks for at most a few request timeouts and
    raises :class:`ReplayError` when the broker does not answer.
    """

    def __init__(
        self,
        consumer: Any,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        read_idle_timeout_s: float = READ_IDLE_TIMEOUT_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._timeout_s = timeout_s
        self._idle_s = read_idle_timeout_s
        self._clock = clock

    def partitions(self, topic: str) -> list[int]:
        """The topic's partition numbers; refuses an unknown topic."""
        try:
            metadata = self._consumer.list_topics(topic, timeout=self._timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise ReplayError(f"could not read metadata of {topic!r}: {exc}") from exc
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise RequestRefused("--topic", f"no such topic: {topic!r}")
        return sorted(found.partitions)

    def watermarks(
        self, parts: Sequence[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]:
        """(log start, high watermark) of each partition.

        The high watermark is the larger of ListOffsets' answer and the one
        a fetch response carries, read by fetching near the end.
        """
        listed = {tp: self._list_offsets(tp) for tp in parts}
        self._consumer.assign(
            [to_kafka(tp, max(low, high - 1)) for tp, (low, high) in listed.items()]
        )
        fetched: dict[TopicPartition, int] = {}
        deadline = self._clock() + self._timeout_s
        while len(fetched) < len(parts) and self._clock() < deadline:
            self._consumer.consume(READ_BATCH, 0.1)
            for tp in parts:
                _, high = self._consumer.get_watermark_offsets(
                    to_kafka(tp), cached=True
                )
                if high is not None and high >= 0:
                    fetched[tp] = int(high)
        self._consumer.unassign()
        missing = [str(tp) for tp in parts if tp not in fetched]
        if missing:
            log.warning(
                "replay.watermark_unconfirmed",
                partitions=missing,
                reason="no fetch response carried a high watermark",
            )
        return {
            tp: (low, max(high, fetched.get(tp, high)))
            for tp, (low, high) in listed.items()
        }

    def _list_offsets(self, tp: TopicPartition) -> tuple[int, int]:
        try:
            low, high = self._consumer.get_watermark_offsets(
                to_kafka(tp), timeout=self._timeout_s
            )
        except confluent_kafka.KafkaException as exc:
            raise ReplayError(f"could not read the offsets of {tp}: {exc}") from exc
        return max(0, int(low)), max(0, int(high))

    def first_at_or_after(
        self,
        tp: TopicPartition,
        millis: int,
        bounds: tuple[int, int],
        *,
        strictly_after: bool = False,
    ) -> int | None:
        """The offset of the first event at or after ``millis`` in log order.

        ``bounds`` is (first offset to consider, high watermark). With
        ``strictly_after`` the event's timestamp must be later than
        ``millis``. ``None`` when no event below the high watermark
        qualifies. Reads forward from the broker's answer when it gives one
        inside the bounds.
        """
        floor, high = bounds
        if floor >= high:
            return None
        target = millis + 1 if strictly_after else millis
        start = max(floor, self._broker_lower_bound(tp, target, high))
        return self._read_forward(tp, target, start, high)

    def _broker_lower_bound(self, tp: TopicPartition, target: int, high: int) -> int:
        try:
            answer = self._consumer.offsets_for_times(
                [to_kafka(tp, target)], timeout=self._timeout_s
            )
        except confluent_kafka.KafkaException as exc:
            raise ReplayError(f"could not look up times of {tp}: {exc}") from exc
        offset = int(answer[0].offset) if answer else -1
        # -1 ("none") or an answer outside the log is no bound at all.
        return offset if 0 <= offset < high else 0

    def _read_forward(
        self, tp: TopicPartition, target: int, start: int, high: int
    ) -> int | None:
        self._consumer.assign([to_kafka(tp, start)])
        try:
            return self._scan(tp, target, start, high)
        finally:
            self._consumer.unassign()

    def _scan(
        self, tp: TopicPartition, target: int, start: int, high: int
    ) -> int | None:
        position = start
        moved_at = self._clock()
        while position < high:
            for message in self._consumer.consume(READ_BATCH, 0.2):
                if message.error() is not None or message.offset() >= high:
                    continue
                kind, stamp = message.timestamp()
                if kind and stamp >= target:
                    return int(message.offset())
            now_at = self._position(tp, position)
            if now_at > position:
                position, moved_at = now_at, self._clock()
            elif self._clock() - moved_at > self._idle_s:
                raise ReplayError(
                    f"reading {tp} for a timestamp made no progress at offset "
                    f"{position} for {self._idle_s}s (high watermark {high})"
                )
        return None

    def _position(self, tp: TopicPartition, fallback: int) -> int:
        (found,) = self._consumer.position([to_kafka(tp)])
        return int(found.offset) if found.offset >= 0 else fallback


def resolve(request: RangeRequest, broker: BrokerView) -> list[PartitionRange]:
    """Resolve ``request`` to one range per partition (see the module doc).

    Raises :class:`RequestRefused` for an unknown topic or partition, or
    an end beyond the high watermark with ``strict_end``.
    """
    known = broker.partitions(request.topic)
    chosen = list(request.partitions) or known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise RequestRefused(
            "--partition",
            f"topic {request.topic!r} has no partition {unknown[0]} "
            f"(it has {len(known)}: 0 to {len(known) - 1})",
        )
    parts = [TopicPartition(request.topic, p) for p in sorted(set(chosen))]
    marks = broker.watermarks(parts)
    return [_resolve_one(request, broker, tp, marks[tp]) for tp in parts]


def _resolve_one(
    request: RangeRequest,
    broker: BrokerView,
    tp: TopicPartition,
    marks: tuple[int, int],
) -> PartitionRange:
    high = marks[1]
    notes: list[str] = []
    start = _resolve_start(request, broker, tp, marks, notes)
    end = _resolve_end(request, broker, tp, (start, high), notes)
    if start > end:
        notes.append(f"start {start} is at or beyond the end {end}: nothing to replay")
        start = end
    return PartitionRange(tp.partition, start, end, "; ".join(notes))


def _resolve_start(
    request: RangeRequest,
    broker: BrokerView,
    tp: TopicPartition,
    marks: tuple[int, int],
    notes: list[str],
) -> int:
    low, high = marks
    if request.from_time is not None:
        found = broker.first_at_or_after(tp, to_millis(request.from_time), (low, high))
        if found is None:
            notes.append("no event at or after the start time")
            return high
        return found
    if request.from_offset is None:
        return low
    if request.from_offset < low:
        notes.append(
            f"start {request.from_offset} is below the log start {low} "
            f"(deleted): starting at {low}"
        )
        return low
    return request.from_offset


def _resolve_end(
    request: RangeRequest,
    broker: BrokerView,
    tp: TopicPartition,
    bounds: tuple[int, int],
    notes: list[str],
) -> int:
    start, high = bounds
    if request.to_time is not None:
        found = broker.first_at_or_after(
            tp,
            to_millis(request.to_time),
            (start, high),
            strictly_after=request.end_inclusive,
        )
        return high if found is None else found
    if request.to_offset is None:
        return high
    end = request.to_offset + 1 if request.end_inclusive else request.to_offset
    if end <= high:
        return end
    if request.strict_end:
        raise RequestRefused(
            "--to",
            f"end {end} of {tp} is beyond its high watermark {high} (--strict-end)",
        )
    notes.append(f"end {end} is beyond the high watermark {high}: stopping at {high}")
    return high


def ranges_from_record(raw: Mapping[str, Sequence[int]]) -> list[PartitionRange]:
    """Ranges from a run record's ``{"<partition>": [start, end]}``."""
    return [
        PartitionRange(int(partition), int(bounds[0]), int(bounds[1]))
        for partition, bounds in sorted(raw.items(), key=lambda item: int(item[0]))
    ]
