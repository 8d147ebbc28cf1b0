"""What the harness watches: the handler's calls and the dead-letter records.

:class:`Observed` stands between the dispatcher and the handler, passing
every call through unchanged and noting, per event, how many calls reached
it and what each failed one raised. :class:`DeadLetterSink` takes the
dead-letter records the dispatcher sends, in memory, instead of producing
them to Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamcp.deadletter import DeadLetters
from streamcp.events import Event, TopicPartition
from streamcp.failures import FailurePolicy
from streamcp.handlers import BatchFailed, Handler

_Position = tuple[TopicPartition, int]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter record: the event, where it went, and why.

    ``topic`` is the dead-letter topic; ``attempts`` the handler calls made
    before the event was given up; ``handler`` the handler's name.
    """

    topic: str
    event: Event
    error: BaseException
    attempts: int
    handler: str


class DeadLetterSink(DeadLetters):
    """Takes dead-letter records in memory; every send is acknowledged."""

    def __init__(self) -> None:
        # No producer: nothing here talks to a broker.
        self.records: list[DeadLetter] = []

    def send(
        self,
        topic: str,
        event: Event,
        error: BaseException,
        attempts: int,
        handler: str,
    ) -> bool:
        self.records.append(DeadLetter(topic, event, error, attempts, handler))
        return True

    def record_of(self, event: Event) -> DeadLetter | None:
        """The last record taken for the event at this position, if any."""
        for record in reversed(self.records):
            if (
                record.event.topic_partition == event.topic_partition
                and record.event.offset == event.offset
            ):
                return record
        return None

    def close(self) -> None:
        return None


class _Record:
    __slots__ = ("attempts", "errors", "last_failed")

    def __init__(self) -> None:
        self.attempts = 0
        self.errors: list[BaseException] = []
        self.last_failed = False


class Observed:
    """The handler as the dispatcher sees it, with each call noted.

    It runs the handler's own ``handle`` or ``handle_batch``, so dispatch
    takes the same path; only ``per_event`` is withheld, which makes the
    dispatcher call :meth:`handle` (the same function, one frame later).
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.name = handler.name
        self.batches = handler.batches
        self.policy: FailurePolicy = handler.policy
        self.per_event: Any = None
        self._records: dict[_Position, _Record] = {}

    def start(self) -> None:
        """Forget what was noted: a new unit begins."""
        self._records = {}

    def record_of(self, event: Event) -> tuple[int, tuple[BaseException, ...], bool]:
        """(calls that reached it, errors of the failed ones, last call failed)."""
        record = self._records.get((event.topic_partition, event.offset))
        if record is None:
            return 0, (), False
        return record.attempts, tuple(record.errors), record.last_failed

    def setup(self) -> None:
        self._handler.setup()

    def close(self) -> None:
        self._handler.close()

    def handle(self, event: Event) -> None:
        call = getattr(self._handler, "per_event", None) or self._handler.handle
        try:
            call(event)
        except Exception as exc:
            self._note([event], failed=exc)
            raise
        self._note([event])

    def handle_batch(self, events: Sequence[Event]) -> None:
        try:
            self._handler.handle_batch(events)
        except BatchFailed as exc:
            index = _index_of(events, exc.offset)
            cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
            self._note(events[:index])
            if index < len(events):
                self._note(events[index : index + 1], failed=cause)
            raise
        except Exception as exc:
            # The dispatcher holds the first event of the batch for it.
            self._note(events[:1], failed=exc)
            raise
        self._note(events)

    def _note(
        self, events: Sequence[Event], failed: BaseException | None = None
    ) -> None:
        for event in events:
            position = (event.topic_partition, event.offset)
            record = self._records.setdefault(position, _Record())
            record.attempts += 1
            record.last_failed = failed is not None
            if failed is not None:
                record.errors.append(failed)


def _index_of(events: Sequence[Event], offset: int) -> int:
    for index, event in enumerate(events):
        if event.offset >= offset:
            return index
    return len(events)
