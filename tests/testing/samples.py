"""Sample handlers for the kit's own tests: one correct, and one made wrong
for each conformance check.

They count words (``{"word": ...}`` JSON values) into a :class:`Ledger`,
which stands for the database a real handler writes to: it outlives every
handler object, as a database outlives a crashed process.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from streamcp.errors import NonRetryable
from streamcp.events import Event
from streamcp.handlers import BatchFailed
from streamcp.testing import events_from_bytes, events_from_dicts

WORDS = ["apple", "fig", "apple", "kiwi", "fig", "apple", "date", "apple", "plum"]
EVENTS = events_from_dicts([{"word": w} for w in WORDS], partitions=2, key="word")
BAD_EVENT = events_from_bytes([b"not json"])[0]


@dataclass
class Ledger:
    """Word counts, and per partition the offset of the next event counted."""

    counts: dict[str, int] = field(default_factory=dict)
    applied: dict[tuple[str, int], int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


class InvalidEvent(NonRetryable):
    """The event is not a word record; retrying cannot help."""


def word_of(event: Event) -> str:
    try:
        record = json.loads(event.value or b"")
        word = record["word"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidEvent(f"not a word record: {event.value!r}") from exc
    if not isinstance(word, str):
        raise InvalidEvent(f"'word' is not a string: {word!r}")
    return word


class WordCount:
    """Correct: idempotent per partition offset, skips replays, closes all."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.closed = 0

    def handle(self, event: Event) -> None:
        word = word_of(event)
        if event.is_replay:
            return
        position = (event.topic, event.partition)
        if event.offset < self.ledger.applied.get(position, 0):
            return
        self.ledger.counts[word] = self.ledger.counts.get(word, 0) + 1
        self.ledger.applied[position] = event.offset + 1

    def close(self) -> None:
        self.closed += 1


class BatchWordCount(WordCount):
    """Correct, with handle_batch: counts up to a bad event, then BatchFailed."""

    def handle_batch(self, events: Sequence[Event]) -> None:
        for event in events:
            try:
                self.handle(event)
            except InvalidEvent as exc:
                raise BatchFailed(event.offset) from exc


class CountsRedeliveries(WordCount):
    """Wrong for at_least_once: counts an event again when it comes again."""

    def handle(self, event: Event) -> None:
        word = word_of(event)
        if not event.is_replay:
            self.ledger.counts[word] = self.ledger.counts.get(word, 0) + 1


class CountsReplays(WordCount):
    """Wrong for replay='skip': applies replayed events too."""

    def handle(self, event: Event) -> None:
        word = word_of(event)
        position = (event.topic, event.partition)
        if event.offset < self.ledger.applied.get(position, 0):
            return
        self.ledger.counts[word] = self.ledger.counts.get(word, 0) + 1
        self.ledger.applied[position] = event.offset + 1


class RetriesBadEvents(WordCount):
    """Wrong for errors (declared final): raises a plain, retryable error."""

    def handle(self, event: Event) -> None:
        try:
            super().handle(event)
        except InvalidEvent as exc:
            raise ValueError(str(exc)) from None


class AcceptsBadEvents(WordCount):
    """Wrong for errors: passes over a bad event as if it succeeded."""

    def handle(self, event: Event) -> None:
        try:
            super().handle(event)
        except InvalidEvent:
            return


class CachesState(WordCount):
    """Wrong for rebalance: works on a copy of the ledger loaded in setup()."""

    def setup(self) -> None:
        self.cache = Ledger(dict(self.ledger.counts), dict(self.ledger.applied))

    def handle(self, event: Event) -> None:
        word = word_of(event)
        if event.is_replay:
            return
        position = (event.topic, event.partition)
        if event.offset < self.cache.applied.get(position, 0):
            return
        self.cache.counts[word] = self.cache.counts.get(word, 0) + 1
        self.cache.applied[position] = event.offset + 1
        # Write-through of the whole copy: what the other consumer wrote
        # meanwhile is overwritten.
        self.ledger.counts = dict(self.cache.counts)
        self.ledger.applied = dict(self.cache.applied)


class LeavesThread(WordCount):
    """Wrong for close: its flusher thread outlives close()."""

    def setup(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._stop.wait, name="word-flusher", daemon=True
        )
        self._thread.start()

    def release(self) -> None:
        """What close() should have done (the tests clean up with it)."""
        self._stop.set()
        self._thread.join()


class LeavesSocket(WordCount):
    """Wrong for close: the socket opened in setup() stays open."""

    def setup(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def release(self) -> None:
        self.sock.close()


class RaisesOnClose(WordCount):
    """Wrong for close: close() raises."""

    def close(self) -> None:
        raise OSError("flush failed: disk full")
