"""The harness: one consumer's loop, run synchronously over fed events.

It drives a handler with the service's own parts: the dispatcher's
:func:`~streamcp.dispatcher.run_unit` (which applies the handler's failure
policy: retries with backoff, then pause, skip, dead-letter or stop), the
:class:`~streamcp.tracker.OffsetTracker` for the lowest unfinished offset of
each partition, the committer's :class:`~streamcp.committer.CommitTimer` and
:func:`~streamcp.committer.commit_requests` for when and what to commit, and
a checkpoint store (in memory unless one is given) with the same claim,
commit, pause and release calls. Everything runs on the caller's thread, in
the order events are fed: a retry's backoff moves the :class:`ManualClock`
instead of sleeping, so a test sees the same outcome every time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from streamcp.committer import Clock, CommitTimer, commit_requests
from streamcp.config import CommitConfig
from streamcp.dispatcher import Outcome as UnitOutcome
from streamcp.dispatcher import run_unit
from streamcp.errors import DeadLetterFailed, HandlerFailed
from streamcp.events import Event, TopicPartition
from streamcp.handlers import Handler, build, failure_policy, resolve
from streamcp.store import CheckpointStore, InMemoryCheckpointStore, Owner, Refusal
from streamcp.testing._clock import ManualClock
from streamcp.testing._events import EventFactory, KeySpec
from streamcp.testing._observe import DeadLetter, DeadLetterSink, Observed
from streamcp.tracker import OffsetTracker, PartitionTrack, Unit

OutcomeStatus = Literal[
    "succeeded", "failed", "skipped", "dead_lettered", "not_run", "not_assigned"
]
HarnessState = Literal["running", "stopped", "crashed", "closed"]
PartitionSpec = int | TopicPartition


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one fed event.

    ``status`` is one of:

    * ``succeeded``: the handler returned for it;
    * ``failed``: the last attempt failed and the failure policy paused the
      partition there (or stopped the consumer); ``error`` says why;
    * ``skipped`` / ``dead_lettered``: the last attempt failed and the policy
      passed over it (for ``dead_lettered``, after the dead-letter record was
      taken, see :attr:`Harness.dead_letters`);
    * ``not_run``: the handler never saw it: its partition was paused at an
      earlier failed event, or the consumer had stopped;
    * ``not_assigned``: its partition was not assigned to this consumer.

    ``attempts`` counts the handler calls that reached the event; ``errors``
    holds what each failed one raised (unwrapped from
    :class:`~streamcp.handlers.BatchFailed`), so ``attempts > 1`` means it
    was retried. An event that could not be decoded never reaches the
    handler: ``attempts`` is 0 and ``error`` the decoding error, when known.
    """

    event: Event
    status: OutcomeStatus
    error: BaseException | None = None
    attempts: int = 0
    errors: tuple[BaseException, ...] = ()

    @property
    def topic_partition(self) -> TopicPartition:
        return self.event.topic_partition

    @property
    def offset(self) -> int:
        return self.event.offset


class Harness:
    """Runs a handler as one consumer of the service would, without Kafka.

    ``handler`` is what the service accepts: an entry point name or
    ``module:attribute`` (built with ``options`` and checked as the service
    checks them), or a handler class, function or instance. ``policy`` holds
    the failure-handling settings of the handler's configuration table
    (``retry_attempts``, ``retry_backoff_s``, ``on_failure``,
    ``value_codec``...); unset ones come from the handler class, then the
    defaults, as in the service.

    The consumer is assigned ``partitions`` partitions of ``topic`` at once.
    The commit policy is ``commit_every_events`` / ``commit_every_seconds``
    (the service's defaults), measured on ``clock``: a :class:`ManualClock`
    unless given (with another clock, retry backoffs really sleep).
    ``batch_size`` events at most go to the handler per poll, as
    ``consumer.batch_size`` does. ``store`` defaults to a fresh
    :class:`~streamcp.store.InMemoryCheckpointStore`; give the store of
    another harness to play another consumer of the same group, or the
    restart of a crashed one.

    Building runs the handler's ``setup()`` unless ``setup=False``. Nothing
    here starts a thread, so handler timeouts (``timeout_s``) are not
    enforced; every call returns when its work is done.
    """

    def __init__(
        self,
        handler: object,
        *,
        options: Mapping[str, Any] | None = None,
        policy: Mapping[str, Any] | None = None,
        topic: str = "events",
        partitions: int = 1,
        batch_size: int = 500,
        commit_every_events: int = 1000,
        commit_every_seconds: float = 5.0,
        clock: Clock | None = None,
        store: CheckpointStore | None = None,
        group: str = "streamcp-test",
        setup: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be 1 or more, got {batch_size!r}")
        self.handler, self._target = _adapt(handler, options or {}, policy or {})
        self.topic = topic
        self.group = group
        self.clock: Clock = clock if clock is not None else ManualClock()
        self.store: CheckpointStore = store or InMemoryCheckpointStore()
        self.outcomes: list[Outcome] = []
        self.refusals: list[Refusal] = []
        self.failure: HandlerFailed | None = None
        self._sink = DeadLetterSink()
        self._observed = Observed(self.handler)
        self._events = EventFactory(topic, partitions)
        self._batch_size = batch_size
        self._owner = Owner.for_this_process()
        self._tracker = OffsetTracker()
        self._timer = CommitTimer(
            CommitConfig(
                every_events=commit_every_events,
                every_seconds=commit_every_seconds,
                mirror_to_kafka=False,
            ),
            self.clock,
        )
        self._epochs: dict[TopicPartition, int] = {}
        self._positions: dict[TopicPartition, int | None] = {}
        self._paused: dict[TopicPartition, int | None] = {}
        self._finished = 0
        self._state: HarnessState = "running"
        if setup:
            self.handler.setup()
        self.assign(range(partitions))

    # -- what a test looks at ---------------------------------------------------

    @property
    def instance(self) -> Any:
        """The handler object itself: the class instance, or the function."""
        return getattr(self.handler, "instance", self._target)

    @property
    def state(self) -> HarnessState:
        """``running``; ``stopped`` after a failure under the ``stop`` policy;
        ``crashed``; ``closed``."""
        return self._state

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """The dead-letter records taken so far, in order."""
        return list(self._sink.records)

    def paused(self) -> dict[TopicPartition, int | None]:
        """Partitions paused at a failed event, with that event's offset."""
        return dict(self._paused)

    def checkpoints(self) -> dict[TopicPartition, int]:
        """The committed checkpoint of each partition that has one.

        A checkpoint is the offset of the next event to process: after
        offset 41 succeeded and was committed, it is 42.
        """
        stored = self.store.read(self.group)
        return {tp: cp.offset for tp, cp in stored.items() if cp.offset is not None}

    # -- events ------------------------------------------------------------------

    def events_from_dicts(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        key: KeySpec = None,
        run_id: str | None = None,
    ) -> list[Event]:
        """Events of this harness's topic, each record's value as JSON.

        Offsets go on from the events this harness built before.
        """
        return self._events.from_dicts(records, key=key, run_id=run_id)

    def events_from_bytes(
        self,
        values: Iterable[bytes | None],
        *,
        keys: Iterable[bytes | None] | None = None,
        run_id: str | None = None,
    ) -> list[Event]:
        """Events of this harness's topic with raw values (and keys)."""
        return self._events.from_bytes(values, keys=keys, run_id=run_id)

    def events_from_ndjson(
        self, path: str | Path, *, key: KeySpec = None, run_id: str | None = None
    ) -> list[Event]:
        """Events of this harness's topic, one per line of a JSON-lines file."""
        return self._events.from_ndjson(path, key=key, run_id=run_id)

    # -- the loop ----------------------------------------------------------------

    def feed(self, events: Iterable[Event]) -> list[Outcome]:
        """Hand ``events`` to the handler as polls would bring them.

        Events are taken ``batch_size`` at a time; each poll's events go to
        the handler partition by partition, in the order fed, with retries
        and the failure policy applied; then the commit policy is asked
        whether to commit. Returns the outcome of each event, in the order
        fed (also appended to :attr:`outcomes`).

        A failed event pauses its partition, committed up to just before it,
        as the service does (``on_failure = "stop"`` stops the consumer
        instead, and :attr:`failure` says where). Raises ``ValueError`` for
        an event whose offset is not after the last one fed for its
        partition since assignment (a consumer never sees offsets go back),
        and ``RuntimeError`` after :meth:`close` or :meth:`crash`.
        """
        self._require_live("feed events")
        outcomes: list[Outcome] = []
        for batch in _chunks(events, self._batch_size):
            outcomes += self._poll(batch)
        self.outcomes += outcomes
        return outcomes

    def redeliver(self, events: Iterable[Event]) -> list[Outcome]:
        """Feed what this consumer would fetch of ``events`` now.

        That is, of each assigned and unpaused partition, the events at or
        after where the consumer stands: its checkpoint when it was
        assigned, or past the last event fed since. Use it after
        :meth:`assign` (or on a new harness over a crashed one's store) to
        read the log again from the checkpoints, as the service does after a
        rebalance or a restart.
        """
        self._require_live("redeliver events")
        return self.feed([event for event in events if self._would_fetch(event)])

    def poll(self) -> dict[TopicPartition, int]:
        """One idle poll: commit when the commit policy says so.

        Returns the checkpoints committed (none when nothing was due).
        """
        self._require_live("poll")
        if self._timer.due(self._finished):
            return self._commit(None)
        return {}

    def commit(self) -> dict[TopicPartition, int]:
        """Commit every changed checkpoint now, as revocation and shutdown do.

        Returns the checkpoints committed.
        """
        self._require_live("commit")
        return self._commit(None)

    def _poll(self, batch: Sequence[Event]) -> list[Outcome]:
        results: dict[int, Outcome] = {}
        for tp, indexed in _by_partition(batch):
            events = [event for _, event in indexed]
            outcomes = self._dispatch(tp, events)
            for (index, _), outcome in zip(indexed, outcomes, strict=True):
                results[index] = outcome
        if self.failure is not None and self._state == "running":
            # As the service does after a poll: commit what succeeded, stop.
            self._commit(None)
            self._state = "stopped"
        elif self._state == "running" and self._timer.due(self._finished):
            self._commit(None)
        return [results[index] for index in range(len(batch))]

    def _dispatch(self, tp: TopicPartition, events: list[Event]) -> list[Outcome]:
        if tp not in self._epochs:
            return [Outcome(event, "not_assigned") for event in events]
        track = self._tracker.get(tp)
        if track is None or self._state != "running":
            # Paused at a failed event, or the consumer stopped.
            return [Outcome(event, "not_run") for event in events]
        _check_order(track, events)
        unit = self._tracker.deliver(track, events, _nbytes(events))
        self._observed.start()
        status = self._run(unit)
        self._finished += unit.done
        outcomes = self._outcomes(unit, status)
        if status is UnitOutcome.FAILED:
            self._on_failed(unit)
        return outcomes

    def _run(self, unit: Unit) -> UnitOutcome:
        """Run the unit to its end, waiting out each retry's backoff."""
        while True:
            status = run_unit(self._observed, unit, self._sink, None, self.clock)
            if status is not UnitOutcome.RETRY:
                return status
            self._wait_until(unit.retry_at or 0.0)

    def _wait_until(self, at: float) -> None:
        delay = at - self.clock()
        if delay <= 0:
            return
        if isinstance(self.clock, ManualClock):
            self.clock.advance(delay)
        else:
            time.sleep(delay)

    def _outcomes(self, unit: Unit, status: UnitOutcome) -> list[Outcome]:
        events = unit.events
        failed_at = unit.done if status is UnitOutcome.FAILED else -1
        return [
            self._outcome(event, index, unit, failed_at)
            for index, event in enumerate(events)
        ]

    def _outcome(self, event: Event, index: int, unit: Unit, failed_at: int) -> Outcome:
        attempts, errors, last_failed = self._observed.record_of(event)
        if index == failed_at:
            error = unit.failure
            return Outcome(event, "failed", error, attempts, errors)
        if index >= unit.done:
            return Outcome(event, "not_run", None, attempts, errors)
        letter = self._sink.record_of(event)
        if letter is not None:
            return Outcome(event, "dead_lettered", letter.error, attempts, errors)
        if last_failed or attempts == 0:
            # Passed over after its last attempt failed (or it could not be
            # decoded, so the handler never saw it): the skip policy.
            error = errors[-1] if errors else None
            return Outcome(event, "skipped", error, attempts, errors)
        return Outcome(event, "succeeded", None, attempts, errors)

    def _on_failed(self, unit: Unit) -> None:
        failure = unit.failure
        offset = unit.next_offset()
        if failure is None or offset is None:
            return
        tp = unit.topic_partition
        if self.handler.policy.on_failure == "stop" and not isinstance(
            failure, DeadLetterFailed
        ):
            # The consumer stops after this poll (see _poll).
            if self.failure is None:
                self.failure = HandlerFailed(tp, offset, self.handler.name, failure)
            return
        self._pause(tp, offset, f"{type(failure).__name__}: {failure}")

    def _pause(self, tp: TopicPartition, offset: int, reason: str) -> None:
        # As the service does: commit up to the failed event, stop handing
        # the partition's events out, and record the pause in the store.
        self._commit([tp])
        self._tracker.forget(tp)
        self._paused[tp] = offset
        self.store.pause(self.group, self._owner, tp, self._epochs[tp], offset, reason)

    # -- commits -----------------------------------------------------------------

    def _commit(
        self, only: Iterable[TopicPartition] | None
    ) -> dict[TopicPartition, int]:
        wanted = None if only is None else set(only)
        tracks = [
            (track, self._epochs[track.topic_partition])
            for track in self._tracker
            if wanted is None or track.topic_partition in wanted
        ]
        pending = commit_requests(tracks)
        if not pending:
            self._timer.succeeded(self._finished)
            return {}
        result = self.store.commit(self.group, self._owner, [p[0] for p in pending])
        self._timer.succeeded(self._finished)
        accepted = set(result.accepted)
        committed: dict[TopicPartition, int] = {}
        for request, track, finished_then in pending:
            if request.topic_partition in accepted:
                self._tracker.committed(track, request.offset)
                track.finished_at_commit = finished_then
                committed[request.topic_partition] = request.offset
        for refusal in result.refused:
            # As the service does: a refused partition is no longer ours.
            self.refusals.append(refusal)
            self._forget(refusal.topic_partition)
        return committed

    # -- ownership ---------------------------------------------------------------

    def assign(
        self, partitions: Iterable[PartitionSpec]
    ) -> dict[TopicPartition, int | None]:
        """Assign partitions, as a rebalance does; returns where each starts.

        Each partition is claimed in the store (a new epoch) and resumes at
        its checkpoint (``None``: none yet, so from the first event). A
        partition whose pause is recorded in the store stays paused.
        """
        self._require_live("assign partitions")
        parts = [self._tp(p) for p in partitions]
        claimed = self.store.claim(self.group, parts, self._owner)
        for tp in parts:
            claim = claimed[tp]
            self._epochs[tp] = claim.epoch
            self._positions[tp] = claim.offset
            self._paused.pop(tp, None)
            if claim.paused:
                self._paused[tp] = (
                    claim.paused_offset
                    if claim.paused_offset is not None
                    else claim.offset
                )
                self._tracker.forget(tp)
            else:
                self._tracker.start(tp, claim.offset)
        return {tp: self._positions[tp] for tp in parts}

    def unpause(self, partitions: Iterable[PartitionSpec] | None = None) -> None:
        """Lift the pause of partitions (default all paused), as an operator
        does: they resume at their checkpoint, the failed event first."""
        self._require_live("unpause partitions")
        wanted = (
            list(self._paused)
            if partitions is None
            else [self._tp(p) for p in partitions]
        )
        for tp in wanted:
            if tp not in self._paused:
                continue
            self.store.unpause(self.group, tp, by=self._owner.instance_id)
            checkpoint = self.store.read(self.group, [tp]).get(tp)
            offset = checkpoint.offset if checkpoint is not None else None
            del self._paused[tp]
            self._positions[tp] = offset
            self._tracker.start(tp, offset)

    def revoke(self, partitions: Iterable[PartitionSpec] | None = None) -> None:
        """Revoke partitions (default all), as a rebalance does.

        What succeeded is committed, ownership is released, and events fed
        for them afterwards are ``not_assigned`` until :meth:`assign`.
        """
        self._require_live("revoke partitions")
        wanted = (
            list(self._epochs)
            if partitions is None
            else [self._tp(p) for p in partitions]
        )
        parts = [tp for tp in wanted if tp in self._epochs]
        self._commit(parts)
        self._release(parts)
        for tp in parts:
            self._forget(tp)

    def _release(self, parts: Iterable[TopicPartition]) -> None:
        # As the service does, only active partitions are released: a paused
        # one keeps its owner, and its pause, in the store.
        epochs = {
            tp: self._epochs[tp]
            for tp in parts
            if tp in self._epochs and tp not in self._paused
        }
        self.store.release(self.group, self._owner, epochs)

    def assigned(self) -> list[TopicPartition]:
        """The partitions this consumer holds now (paused ones included)."""
        return sorted(self._epochs)

    def _forget(self, tp: TopicPartition) -> None:
        self._tracker.forget(tp)
        self._epochs.pop(tp, None)
        self._positions.pop(tp, None)
        self._paused.pop(tp, None)

    def _would_fetch(self, event: Event) -> bool:
        tp = event.topic_partition
        track = self._tracker.get(tp)
        if track is None:
            return False
        start = track.delivered_next
        if start is None:
            start = self._positions.get(tp)
        return start is None or event.offset >= start

    def _tp(self, partition: PartitionSpec) -> TopicPartition:
        if isinstance(partition, TopicPartition):
            return partition
        return TopicPartition(self.topic, partition)

    # -- the end -----------------------------------------------------------------

    def crash(self) -> None:
        """Die as a killed process would: nothing is committed or closed.

        Work that was not committed is lost; the handler's ``close()`` is
        not called. Build a new :class:`Harness` with this one's
        :attr:`store` to play the restarted consumer.
        """
        self._require_live("crash")
        for tp in list(self._epochs):
            self._forget(tp)
        self._state = "crashed"

    def close(self) -> None:
        """Shut down as the service does on SIGTERM, then close the handler.

        Commits what succeeded, releases the partitions, and calls the
        handler's ``close()`` once; whatever that raises is raised here.
        Calling it again, or after :meth:`crash`, does nothing.
        """
        if self._state in ("closed", "crashed"):
            return
        self._commit(None)
        self._release(list(self._epochs))
        for tp in list(self._epochs):
            self._forget(tp)
        self._state = "closed"
        self.handler.close()

    def __enter__(self) -> Harness:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _require_live(self, action: str) -> None:
        if self._state in ("closed", "crashed"):
            raise RuntimeError(f"cannot {action}: the harness was {self._state}")


def _adapt(
    handler: object, options: Mapping[str, Any], policy: Mapping[str, Any]
) -> tuple[Handler, object]:
    """The handler adapted to the lifecycle, and the object it was made from."""
    if isinstance(handler, str):
        target: object = resolve(handler, field_name="handler.name")
        built = build(target, options, name=handler)
    elif isinstance(handler, Handler) and hasattr(handler, "per_event"):
        # Already built by streamcp.handlers.load or build: keep it.
        target, built = handler, handler
    else:
        target, built = handler, build(handler, options)
    if policy or isinstance(handler, str):
        built.policy = failure_policy(target, policy)
    return built, target


def _check_order(track: PartitionTrack, events: Sequence[Event]) -> None:
    last = track.delivered_next
    for event in events:
        if last is not None and event.offset < last:
            raise ValueError(
                f"offset {event.offset} of {track.topic_partition} comes after "
                f"offset {last - 1} was fed; a consumer never sees offsets go "
                f"back: revoke and assign the partition, then redeliver"
            )
        last = event.offset + 1


def _chunks(events: Iterable[Event], size: int) -> Iterator[list[Event]]:
    batch: list[Event] = []
    for event in events:
        batch.append(event)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _by_partition(
    batch: Sequence[Event],
) -> list[tuple[TopicPartition, list[tuple[int, Event]]]]:
    grouped: dict[TopicPartition, list[tuple[int, Event]]] = {}
    for index, event in enumerate(batch):
        grouped.setdefault(event.topic_partition, []).append((index, event))
    return list(grouped.items())


def _nbytes(events: Sequence[Event]) -> int:
    return sum(len(event.value or b"") for event in events)
