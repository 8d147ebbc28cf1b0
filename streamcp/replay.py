"""The replay loop: one run over fixed offset ranges, beside the live service.

A replay reads with ``assign()`` only: it never joins or subscribes as the
live consumer group (its consumer's ``group.id`` is unique to the run and is
never used for a commit), and it never reads or writes the group's
checkpoints. Its own checkpoints live in the namespace ``replay:<run id>``
of the same checkpoint store, claimed at start and on every resume to get
epochs, and committed with the same commit policy and the same rule as the
service: a checkpoint moves only past events whose handler succeeded.

A partition is finished when the consumer's fetch position reaches its end
offset and every delivered event of it succeeded, whether or not the last
offsets of the range held an event (compaction and transaction markers
leave gaps). Its checkpoint is then the end offset. A partition whose
position stops short of the end for ``idle_timeout_s`` ends there when the
log itself ends there (the high watermark of the last fetch), and fails the
run otherwise; a replay never waits forever.

Outcomes (see :class:`ReplayOutcome`): ``completed``, ``failed`` (a handler
failed, or the run could not go on), ``cancelled`` (``streamcp runs
cancel``, SIGTERM or SIGINT), each recorded in the run after committing
what succeeded; and ``fenced`` when another process resumed the run, which
is left to that process to record.
"""

from __future__ import annotations

import threading
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import confluent_kafka
import structlog

from streamcp.committer import Clock, CommitTimer, commit_requests, record_accepted
from streamcp.config import Config, KafkaConfig
from streamcp.dispatcher import Dispatcher
from streamcp.errors import (
    HandlerFailed,
    ReplayError,
    StoreUnavailable,
    StreamcpError,
)
from streamcp.events import TopicPartition
from streamcp.handlers import Handler
from streamcp.loop import (
    bound_wants_commit,
    commit_until,
    deliver,
    drain,
    log_consumer_errors,
    make_dispatcher,
    over_bound,
    poll_timeout,
    set_paused,
)
from streamcp.progress import Progress
from streamcp.ranges import BrokerView, PartitionRange, RangeRequest, resolve
from streamcp.runs import RunRecord, RunStatus, RunStore
from streamcp.source import (
    consumer_settings,
    group_by_partition,
    split_errors,
    to_kafka,
)
from streamcp.store import CheckpointStore, Owner
from streamcp.tracker import OffsetTracker

OutcomeStatus = Literal["completed", "failed", "cancelled", "fenced"]
ConsumerFactory = Callable[[dict[str, Any]], Any]

# Default of --idle-timeout: how long a partition's fetch position may stand
# still below its end, with nothing in flight, before the replay stops
# waiting. Fetches answer within fetch.wait.max.ms (500 ms by default).
IDLE_TIMEOUT_S = 30.0
# How often the run's heartbeat is written and a cancellation looked for;
# `runs cancel` is noticed within about this long.
WATCH_INTERVAL_S = 0.5


def replay_consumer_settings(kafka: KafkaConfig, label: str) -> dict[str, Any]:
    """librdkafka settings of an assign-only replay consumer.

    The live settings (pass-through properties for SASL/SSL included) with
    a ``group.id`` of its own, because librdkafka wants one; the replay
    never subscribes and never commits, so that group never exists.
    """
    settings = consumer_settings(kafka, "earliest")
    settings["group.id"] = f"streamcp-replay-{label}"
    settings.pop("group.instance.id", None)
    return settings


def resolve_ranges(
    config: Config,
    request: RangeRequest,
    *,
    consumer_factory: ConsumerFactory = confluent_kafka.Consumer,
) -> list[PartitionRange]:
    """Resolve ``request`` against the broker; see :mod:`streamcp.ranges`.

    Blocks while it reads; raises :class:`~streamcp.errors.RequestRefused`
    for what the broker shows to be a bad request, and
    :class:`ReplayError` when the broker does not answer.
    """
    label = f"resolve-{uuid.uuid4().hex[:12]}"
    consumer = consumer_factory(replay_consumer_settings(config.kafka, label))
    try:
        return resolve(request, BrokerView(consumer))
    finally:
        consumer.close()


@dataclass(frozen=True)
class ReplayOutcome:
    """How a replay process ended."""

    status: OutcomeStatus
    error: str = ""
    handled: int = 0
    notes: dict[int, str] = field(default_factory=dict)


@dataclass
class _Part:
    """One partition of the run, as this process replays it."""

    range: PartitionRange
    epoch: int
    begin: int
    position: int
    moved_at: float
    done: bool = False
    note: str = ""


class Replay:
    """Replays one recorded run until its ranges are done, or it stops.

    :meth:`run` blocks; :meth:`request_stop` may be called from any thread
    or a signal handler and makes the run end ``cancelled``.

    ``before_commit``, when given, is called on the loop's thread before
    each commit, once the checkpoints to commit are known: what it records
    is stored before any checkpoint passes the events it covers. When it
    raises :class:`StoreUnavailable` the commit counts as failed and is
    retried.
    """

    def __init__(
        self,
        run: RunRecord,
        config: Config,
        *,
        store: CheckpointStore,
        runs: RunStore,
        handler: Handler,
        owner: Owner | None = None,
        clock: Clock = time.monotonic,
        consumer_factory: ConsumerFactory = confluent_kafka.Consumer,
        progress: Progress | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        self._run = run
        self._config = config
        self._store = store
        self._runs = runs
        self._handler = handler
        self._owner = owner or Owner.for_this_process()
        self._clock = clock
        self._consumer_factory = consumer_factory
        self._progress = progress
        self._idle_timeout_s = idle_timeout_s
        self._before_commit = before_commit
        self._namespace = run.namespace
        self._tracker = OffsetTracker()
        self._timer = CommitTimer(config.commit, clock)
        self._parts: dict[TopicPartition, _Part] = {}
        self._assigned: list[TopicPartition] = []
        self._paused: set[TopicPartition] = set()
        self._stop = threading.Event()
        self._failure: StreamcpError | None = None
        self._failed_events = 0
        self._fenced = False
        self._watch_at = 0.0
        self._committed_ok = True
        self._consumer: Any = None
        self._dispatcher: Dispatcher | None = None
        self.log = structlog.get_logger("streamcp.replay").bind(
            run_id=run.id, topic=run.topic
        )

    @property
    def owner(self) -> Owner:
        return self._owner

    def request_stop(self) -> None:
        """Ask the run to stop gracefully (status cancelled); returns at once."""
        self._stop.set()

    def run(self) -> ReplayOutcome:
        """Replay until done or stopped; records the outcome in the run."""
        self._dispatcher = make_dispatcher(self._config, [self._handler])
        try:
            self._setup_handler()
            self._claim()
            self._assign()
            self.log.info(
                "replay.started",
                owner=self._owner.instance_id,
                partitions=[str(tp) for tp in self._assigned],
            )
            while not self._stop.is_set() and not self._all_done():
                self._iterate()
        except StreamcpError as exc:
            self._fail(exc)
        finally:
            self._shutdown()
        return self._record_outcome()

    # -- the loop --------------------------------------------------------------

    def _iterate(self) -> None:
        limits = self._config.consumer
        messages = self._consumer.consume(
            limits.batch_size, poll_timeout(self._dispatcher, limits)
        )
        if messages:
            self._dispatch(messages)
        if self._dispatcher is not None:
            self._dispatcher.run_ready()  # inline: handle them now
        self._check_failures()
        self._follow_positions()
        if self._timer.due(self._finished_events()) or bound_wants_commit(
            self._tracker, limits, self._timer.retrying
        ):
            self._commit()
        self._watch_run()
        self._apply_pauses()
        self._show_progress()

    def _dispatch(self, messages: Sequence[Any]) -> None:
        good, errored = split_errors(messages)
        if errored:
            log_consumer_errors(self.log, errored, ReplayError)
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        for tp, events, nbytes in group_by_partition(
            good, run_id=self._run.id, topic=self._run.topic
        ):
            part = self._parts.get(tp)
            track = self._tracker.get(tp)
            if part is None or part.done or track is None:
                continue
            # A fetch may bring events past the end; they are not the run's.
            end = part.range.end
            wanted = (
                events
                if events[-1].offset < end
                else events[: bisect_left(events.offsets(), end)]
            )
            if wanted:
                deliver(dispatcher, self._tracker, track, self._handler, wanted, nbytes)

    def _check_failures(self) -> None:
        if self._failure is not None:
            return
        for unit in self._tracker.failures():
            cause = unit.failure
            if cause is None:
                continue
            offset = unit.next_offset()
            where = offset if offset is not None else unit.last_offset
            self._failed_events += 1
            self.log.error(
                "handler.failed",
                partition=unit.topic_partition.partition,
                offset=where,
                handler=self._handler.name,
                error=repr(cause),
            )
            self._fail(
                HandlerFailed(unit.topic_partition, where, self._handler.name, cause)
            )
            return

    def _follow_positions(self) -> None:
        """Advance each partition by its fetch position; finish or time out."""
        active = [tp for tp in self._assigned if not self._parts[tp].done]
        if not active:
            return
        found = self._consumer.position([to_kafka(tp) for tp in active])
        now = self._clock()
        for tp, kafka_part in zip(active, found, strict=True):
            part = self._parts[tp]
            # Before the first fetch answered the position is "invalid"; the
            # fetch then still stands where the partition was assigned.
            position = int(kafka_part.offset) if kafka_part.offset >= 0 else part.begin
            if position > part.position:
                part.position, part.moved_at = position, now
            self._judge(tp, part, now)

    def _judge(self, tp: TopicPartition, part: _Part, now: float) -> None:
        track = self._tracker.get(tp)
        if track is None:
            return
        if not all(unit.finished for unit in track.units):
            part.moved_at = now  # work in flight is progress, not idleness
            return
        end = part.range.end
        if part.position >= end:
            self._finish_partition(tp, part, end)
            return
        # Everything below the fetch position was delivered or holds no
        # event, so the checkpoint may move over gaps as it goes.
        self._tracker.advance(track, part.position)
        if now - part.moved_at >= self._idle_timeout_s:
            self._stalled(tp, part)

    def _stalled(self, tp: TopicPartition, part: _Part) -> None:
        _, high = self._consumer.get_watermark_offsets(to_kafka(tp), cached=True)
        end = part.range.end
        if high is not None and 0 <= high <= part.position:
            part.note = (
                f"the log ends at {part.position}, before the end {end}: "
                f"stopped there after {self._idle_timeout_s:g}s idle"
            )
            self.log.warning(
                "partition.ended_early",
                partition=tp.partition,
                position=part.position,
                end=end,
                high_watermark=high,
            )
            self._finish_partition(tp, part, part.position)
            return
        raise ReplayError(
            f"{tp} made no progress at offset {part.position} for "
            f"{self._idle_timeout_s:g}s, below its end {end} (high watermark {high})"
        )

    def _finish_partition(self, tp: TopicPartition, part: _Part, offset: int) -> None:
        track = self._tracker.get(tp)
        if track is not None:
            self._tracker.advance(track, offset)
        part.done = True
        self.log.info("partition.replayed", partition=tp.partition, end=offset)

    def _all_done(self) -> bool:
        return all(part.done for part in self._parts.values())

    def _finished_events(self) -> int:
        dispatcher = self._dispatcher
        return dispatcher.finished_events() if dispatcher is not None else 0

    def _fail(self, error: StreamcpError) -> None:
        if self._failure is None:
            self._failure = error
        self._stop.set()

    # -- ownership -------------------------------------------------------------

    def _setup_handler(self) -> None:
        try:
            self._handler.setup()
        except Exception as exc:  # a setup error fails the run, whatever it is
            raise ReplayError(
                f"handler {self._handler.name!r} failed to set up: {exc!r}"
            ) from exc

    def _claim(self) -> None:
        parts = [TopicPartition(self._run.topic, r.partition) for r in self._run.ranges]
        claims = self._store.claim(self._namespace, parts, self._owner)
        now = self._clock()
        for tp, part_range in zip(parts, self._run.ranges, strict=True):
            claim = claims[tp]
            begin = part_range.start if claim.offset is None else claim.offset
            begin = min(max(begin, part_range.start), part_range.end)
            track = self._tracker.start(tp, claim.offset)
            done = begin >= part_range.end
            if done:
                # record it as replayed, to its end
                self._tracker.advance(track, begin)
            self._parts[tp] = _Part(
                part_range, claim.epoch, begin, begin, now, done=done
            )
            if claim.offset is not None:
                self.log.info(
                    "partition.resumed",
                    partition=tp.partition,
                    checkpoint=claim.offset,
                    end=part_range.end,
                    epoch=claim.epoch,
                )

    def _assign(self) -> None:
        settings = replay_consumer_settings(self._config.kafka, self._run.id)
        self._consumer = self._consumer_factory(settings)
        self._assigned = [tp for tp, part in self._parts.items() if not part.done]
        if self._assigned:
            self._consumer.assign(
                [to_kafka(tp, self._parts[tp].begin) for tp in self._assigned]
            )

    def _release(self) -> None:
        epochs = {tp: part.epoch for tp, part in self._parts.items()}
        try:
            self._store.release(self._namespace, self._owner, epochs)
        except StreamcpError as exc:
            # The next resume's claim bumps the epochs anyway.
            self.log.warning("partition.release_failed", error=str(exc))

    # -- commits ---------------------------------------------------------------

    def _commit(self) -> bool:
        """Commit every changed checkpoint; True when the store answered."""
        tracks = [
            (track, self._parts[track.topic_partition].epoch)
            for track in self._tracker
            if track.topic_partition in self._parts
        ]
        pending = commit_requests(tracks)
        finished = self._finished_events()
        if not pending:
            self._timer.succeeded(finished)
            return True
        try:
            if self._before_commit is not None:
                self._before_commit()
            result = self._store.commit(
                self._namespace, self._owner, [p[0] for p in pending]
            )
        except StoreUnavailable as exc:
            delay = self._timer.failed()
            self.log.warning(
                "checkpoint.commit_failed", error=str(exc), retry_in_s=delay
            )
            return False
        self._timer.succeeded(finished)
        accepted = record_accepted(self._tracker, pending, result.accepted)
        progress = {r.topic_partition.partition: r.offset for r in accepted}
        events = sum(r.events for r in accepted)
        if result.refused:
            self._fence(
                f"the store refused {len(result.refused)} checkpoint(s): "
                f"{result.refused[0].reason}"
            )
        self._record_progress(progress, events)
        self.log.debug(
            "checkpoint.committed",
            partitions=len(accepted),
            refused=len(result.refused),
        )
        return True

    def _record_progress(self, progress: dict[int, int], events: int) -> None:
        if not progress:
            return
        try:
            owned = self._runs.record_commit(
                self._run.id, self._owner, progress, events
            )
        except StoreUnavailable as exc:
            self.log.warning("run.progress_failed", error=str(exc))
            return
        if not owned:
            self._fence("the run record names another owner")

    def _commit_until(self, deadline: float) -> bool:
        return commit_until(
            self._commit, deadline, self._clock, self.log, lambda: self._fenced
        )

    def _fence(self, reason: str) -> None:
        if not self._fenced:
            self.log.warning("replay.fenced", reason=reason)
        self._fenced = True
        self._stop.set()

    # -- watching, flow control ------------------------------------------------

    def _watch_run(self) -> None:
        now = self._clock()
        if now < self._watch_at:
            return
        self._watch_at = now + WATCH_INTERVAL_S
        try:
            owned, cancel = self._runs.heartbeat(self._run.id, self._owner)
        except StoreUnavailable as exc:
            self.log.warning("run.heartbeat_failed", error=str(exc))
            return
        if not owned:
            self._fence("the run record names another owner")
        elif cancel:
            self.log.info("replay.cancel_requested")
            self._stop.set()

    def _apply_pauses(self) -> None:
        over = over_bound(self._tracker, self._config.consumer)
        stopping = self._stop.is_set()
        wanted = {
            tp for tp in self._assigned if over or stopping or self._parts[tp].done
        }
        self._paused = set_paused(
            self._consumer,
            self._paused,
            wanted,
            self._assigned,
            self.log,
            self._tracker.in_flight_events,
        )

    def _show_progress(self) -> None:
        if self._progress is not None:
            self._progress.update(self._run.events_handled + self._finished_events())

    # -- the end ---------------------------------------------------------------

    def _shutdown(self) -> None:
        drain_s = self._config.consumer.drain_timeout_s
        if self._consumer is not None:
            self._stop.set()
            self._apply_pauses()
            self._cancel_in_flight()
            self._drain(drain_s)
            if not self._fenced:
                self._committed_ok = self._commit_until(self._clock() + drain_s)
                self._release()
            try:
                self._consumer.close()
            except (RuntimeError, confluent_kafka.KafkaException) as exc:
                self.log.warning("consumer.close_failed", error=str(exc))
        if self._dispatcher is not None:
            self._dispatcher.close(drain_s)
        try:
            self._handler.close()
        except Exception as exc:  # noqa: BLE001  # a close error must not mask the end
            self.log.warning("handler.close_failed", error=repr(exc))

    def _cancel_in_flight(self) -> None:
        # A stopping replay does not finish the units it handed out: each
        # worker stops after its current event, and the checkpoint holds at
        # the first event not handled, so a resume starts there.
        for track in self._tracker:
            for unit in track.units:
                if not unit.finished:
                    unit.cancelled = True

    def _drain(self, timeout_s: float) -> None:
        drain(
            self._tracker,
            self._dispatcher,
            None,
            self._clock() + timeout_s,
            self._clock,
            lambda: self.log.warning(
                "replay.drain_timeout", in_flight=self._tracker.in_flight_events
            ),
        )

    def _outcome_status(self) -> tuple[OutcomeStatus, str]:
        if self._fenced:
            return "fenced", "another process took the run over (resumed elsewhere)"
        if self._failure is not None:
            return "failed", str(self._failure)
        if not self._committed_ok:
            return "failed", "the last checkpoints did not reach the store"
        if self._all_done():
            return "completed", ""
        return "cancelled", ""

    def _record_outcome(self) -> ReplayOutcome:
        status, error = self._outcome_status()
        notes = {tp.partition: p.note for tp, p in self._parts.items() if p.note}
        handled = self._finished_events()
        if self._progress is not None:
            self._progress.finish(self._run.events_handled + handled, status)
        self.log.info("replay.stopped", status=status, handled=handled, error=error)
        if status == "fenced":
            return ReplayOutcome(status, error, handled, notes)
        recorded: RunStatus = status
        try:
            self._runs.finish(
                self._run.id,
                self._owner,
                recorded,
                error=error,
                failed_events=self._failed_events,
                notes=notes,
            )
        except StoreUnavailable as exc:
            self.log.error("run.finish_failed", error=str(exc), status=status)
            return ReplayOutcome(
                "failed", f"could not record the outcome: {exc}", handled, notes
            )
        return ReplayOutcome(status, error, handled, notes)
