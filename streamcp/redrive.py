"""Redrive: dead-letter records back through a handler, as a recorded run.

A redrive is a run (see :mod:`streamcp.runs`, kind ``redrive``) over a
dead-letter topic, driven by the replay loop (:class:`~streamcp.replay.Replay`):
the same offset or time ranges, its own checkpoints in the namespace
``redrive:<run id>``, cancel and resume. What differs is what each record
becomes and what a failure does:

* the record is turned back into the event it was made from
  (:func:`original_event`): topic, partition, offset and timestamp from the
  ``streamcp.original.*`` headers, the key and value as they are, the
  headers without streamcp's, and ``run_id`` set;
* the handler's retry settings apply (attempts, backoff, ``timeout_s``,
  ``non_retryable``, its codecs); an event that still fails after its
  attempts is recorded as still failing and the redrive goes on; it is
  produced to ``dead_letter_to`` only when that is given, and the
  checkpoint passes it only once that topic acknowledged it (the run fails
  at that record otherwise, and a resume retries it);
* a record without those headers is recorded as not a streamcp
  dead-letter record and passed over.

Outcomes are kept per record in Redis (:mod:`streamcp.redrive_ledger`),
written before each commit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import confluent_kafka
import structlog

from streamcp.codecs import codec_by_name
from streamcp.committer import Clock
from streamcp.config import Config, HandlerConfig
from streamcp.deadletter import HEADER_PREFIX, DeadLetters
from streamcp.dispatcher import decode_fields
from streamcp.errors import (
    ConfigError,
    DeadLetterFailed,
    HandlerTimeout,
    NonRetryable,
    NotADeadLetter,
    StoreUnavailable,
)
from streamcp.events import Event
from streamcp.failures import FailurePolicy
from streamcp.handlers import BatchFailed, Handler, load
from streamcp.progress import Progress
from streamcp.redrive_ledger import (
    RedriveLedger,
    RedriveSummary,
    Refused,
    StillFailing,
)
from streamcp.replay import IDLE_TIMEOUT_S, ConsumerFactory, Replay, ReplayOutcome
from streamcp.runs import RunRecord, RunStore
from streamcp.store import CheckpointStore, Owner

ORIGINAL_PREFIX = f"{HEADER_PREFIX}original."
_BYTES_KEY = codec_by_name("bytes", "key")
_BYTES_VALUE = codec_by_name("bytes", "value")

log = structlog.get_logger("streamcp.redrive")


def original_event(record: Event) -> Event:
    """The event a dead-letter record was made from, as its handler saw it.

    Raises :class:`NotADeadLetter` when the record lacks the
    ``streamcp.original.topic``, ``.partition`` or ``.offset`` header, or
    one of them (or ``.timestamp``) does not parse.
    """
    topic = _original(record, "topic")
    partition = _number(record, "partition")
    offset = _number(record, "offset")
    stamp = _original(record, "timestamp", required=False)
    timestamp_ms = _number(record, "timestamp") if stamp else None
    headers = tuple(
        (name, value)
        for name, value in record.headers
        if not name.startswith(HEADER_PREFIX)
    )
    return Event(
        topic=topic,
        partition=partition,
        offset=offset,
        key=record.key,
        value=record.value,
        headers=headers,
        timestamp_ms=timestamp_ms,
        run_id=record.run_id,
    )


def _original(record: Event, name: str, *, required: bool = True) -> str:
    header = ORIGINAL_PREFIX + name
    # The last one: an event that carried streamcp headers of its own when
    # it failed keeps them in front of the ones added for its failure.
    found = [value for key, value in record.headers if key == header]
    raw = found[-1] if found else None
    if raw is None:
        if not required:
            return ""
        raise NotADeadLetter(
            record.topic, record.partition, record.offset, f"it has no {header} header"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NotADeadLetter(
            record.topic,
            record.partition,
            record.offset,
            f"its {header} header is not UTF-8 text",
        ) from None


def _number(record: Event, name: str) -> int:
    text = _original(record, name)
    if not text.isdigit():
        raise NotADeadLetter(
            record.topic,
            record.partition,
            record.offset,
            f"its {ORIGINAL_PREFIX}{name} header is not a number: {text!r}",
        )
    return int(text)


def redrive_handler(
    config: Config, topic: str, name: str | None
) -> tuple[Handler, str]:
    """The handler to redrive ``topic`` through, and its name; nothing connects.

    The configured handler whose dead-letter topic is ``topic`` (a
    ``[handlers.<t>]`` table, or ``[handler]`` for one of ``kafka.topics``),
    else ``[handler]``. With ``name``: the configured table of that name
    (the one whose dead-letter topic is ``topic`` first), with its options
    and failure policy, or else that handler with none and the default
    policy. Raises :class:`ConfigError` naming the field.
    """
    tables: list[tuple[str, HandlerConfig, tuple[str, ...]]] = [
        (f"handlers.{source}", table, (source,))
        for source, table in config.handlers.items()
    ]
    if config.handler is not None:
        tables.append(("handler", config.handler, config.kafka.topics))
    loaded: list[tuple[str, Handler, str]] = []
    for field_name, table, sources in tables:
        if table.name == "-" or name not in (None, table.name):
            continue
        handler = load(
            table.name, table.options, field_name=field_name, policy=table.policy
        )
        if any(handler.policy.dead_letter_topic_for(t) == topic for t in sources):
            return handler, table.name
        loaded.append((field_name, handler, table.name))
    for field_name, handler, table_name in loaded:
        if name is not None or field_name == "handler":
            return handler, table_name
    if name is None:
        raise ConfigError(
            "handler.name",
            f"no handler dead-letters to {topic!r}: configure one or give --handler",
        )
    return load(name, {}, field_name="--handler"), name


class DeadLetterNotTaken(DeadLetterFailed, NonRetryable):
    """The ``dead_letter_to`` topic did not take a still-failing event."""


class RedriveHandler:
    """Adapts a handler to dead-letter records: the event it sees is the
    original one, and a failure after the last attempt is an outcome.

    The dispatcher retries what this raises, with the handler's backoff;
    it never decodes or times the call itself (this does both, so that
    every failure is seen and counted here), and its policy stops the run
    only when ``dead_letter_to`` did not take an event.
    """

    batches = False

    def __init__(
        self,
        handler: Handler,
        ledger: RedriveLedger,
        *,
        dead_letter_to: str = "",
        dead_letters: DeadLetters | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = handler.name
        self._handler = handler
        self._retries: FailurePolicy = handler.policy
        self.policy = replace(
            handler.policy,
            on_failure="stop",
            dead_letter_topic=None,
            timeout_s=None,
            key_codec=_BYTES_KEY,
            value_codec=_BYTES_VALUE,
        )
        self._ledger = ledger
        self._dead_letter_to = dead_letter_to
        self._dead_letters = dead_letters
        self._clock = clock
        self._attempts: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    def setup(self) -> None:
        self._handler.setup()

    def close(self) -> None:
        try:
            self._handler.close()
        finally:
            if self._dead_letters is not None:
                self._dead_letters.close()

    def handle_batch(self, events: Sequence[Event]) -> None:
        for event in events:
            self.handle(event)

    def handle(self, event: Event) -> None:
        """Redrive one dead-letter record; raises only to be retried."""
        try:
            original = original_event(event)
        except NotADeadLetter as exc:
            self._refuse(event, exc)
            return
        error = self._call(original)
        where = (event.partition, event.offset)
        with self._lock:
            attempts = self._attempts.pop(where, 0) + 1
            again = (
                error is not None
                and self._retries.retryable(error)
                and attempts < self._retries.attempts
            )
            if again:
                self._attempts[where] = attempts
        if error is None:
            self._ledger.note(event.partition, event.offset, None)
            log.debug("dead_letter.redriven", **_context(event, original))
        elif again:
            raise error
        else:
            self._give_up(event, original, error, attempts)

    def _call(self, event: Event) -> BaseException | None:
        """One call of the handler; the error it made, if any."""
        started = self._clock()
        try:
            decode_fields(self._retries, event)
            self._handler.handle(event)
        except BatchFailed as exc:
            return exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
        except Exception as exc:  # noqa: BLE001  # any handler error is an outcome
            return exc
        limit = self._retries.timeout_s
        if limit is not None and self._clock() - started > limit:
            return HandlerTimeout(
                event.topic,
                event.partition,
                event.offset,
                f"handler call overran its timeout of {limit}s",
            )
        return None

    def _give_up(
        self, record: Event, event: Event, error: BaseException, attempts: int
    ) -> None:
        target = self._dead_letter_to
        if target and not (
            self._dead_letters is not None
            and self._dead_letters.send(target, event, error, attempts, self.name)
        ):
            raise DeadLetterNotTaken(
                record.topic,
                record.partition,
                record.offset,
                f"dead-letter topic {target!r} did not take the still-failing "
                f"event {event.topic}[{event.partition}] offset {event.offset}",
            )
        entry = StillFailing(
            partition=record.partition,
            offset=record.offset,
            original_topic=event.topic,
            original_partition=event.partition,
            original_offset=event.offset,
            error_type=type(error).__name__,
            error_message=str(error),
            attempts=attempts,
            failed_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            dead_lettered_to=target,
        )
        self._ledger.note(record.partition, record.offset, entry)
        log.warning(
            "dead_letter.still_failing",
            attempts=attempts,
            error=f"{type(error).__name__}: {error}",
            **_context(record, event),
        )

    def _refuse(self, record: Event, exc: NotADeadLetter) -> None:
        entry = Refused(
            partition=record.partition, offset=record.offset, reason=exc.reason
        )
        self._ledger.note(record.partition, record.offset, entry)
        log.warning(
            "dead_letter.refused",
            partition=record.partition,
            offset=record.offset,
            reason=str(exc),
        )


def _context(record: Event, event: Event) -> dict[str, Any]:
    return {
        "partition": record.partition,
        "offset": record.offset,
        "original_topic": event.topic,
        "original_partition": event.partition,
        "original_offset": event.offset,
    }


@dataclass(frozen=True)
class RedriveOutcome:
    """How a redrive process ended, and what the run's records came to.

    ``summary`` is None when Redis did not answer at the end.
    """

    replay: ReplayOutcome
    summary: RedriveSummary | None


class Redrive:
    """Redrives one recorded run of kind ``redrive`` until done, or stopped.

    :meth:`run` blocks and records the outcome in the run, as a replay
    does; :meth:`request_stop` may be called from any thread or a signal
    handler and makes the run end ``cancelled``.
    """

    def __init__(
        self,
        run: RunRecord,
        config: Config,
        *,
        store: CheckpointStore,
        runs: RunStore,
        ledger: RedriveLedger,
        handler: Handler,
        dead_letter_to: str = "",
        dead_letters: DeadLetters | None = None,
        owner: Owner | None = None,
        progress: Progress | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        consumer_factory: ConsumerFactory = confluent_kafka.Consumer,
    ) -> None:
        self._run = run
        self._runs = runs
        self._ledger = ledger
        wrapped = RedriveHandler(
            handler, ledger, dead_letter_to=dead_letter_to, dead_letters=dead_letters
        )
        self._replay = Replay(
            run,
            config,
            store=store,
            runs=runs,
            handler=wrapped,
            owner=owner,
            consumer_factory=consumer_factory,
            progress=progress,
            idle_timeout_s=idle_timeout_s,
            before_commit=ledger.flush,
        )

    @property
    def owner(self) -> Owner:
        return self._replay.owner

    def request_stop(self) -> None:
        """Ask the run to stop gracefully (status cancelled); returns at once."""
        self._replay.request_stop()

    def run(self) -> RedriveOutcome:
        """Redrive until done or stopped; then read what the records came to."""
        outcome = self._replay.run()
        return RedriveOutcome(outcome, self._summary())

    def _summary(self) -> RedriveSummary | None:
        try:
            record = self._runs.get(self._run.id)
            return None if record is None else self._ledger.summary(record)
        except StoreUnavailable as exc:
            log.error("run.summary_failed", run_id=self._run.id, error=str(exc))
            return None
