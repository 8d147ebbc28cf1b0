"""The consumer service: the loop that owns the consumer.

One iteration polls a batch, hands its events to the dispatcher, looks at
failures, retries claims that waited for Redis, commits when the commit
policy says so, and pauses or resumes partitions against the in-flight
bound. Rebalance callbacks run inside the poll, on this same thread.

Exit status of :meth:`Service.run`: 0 after a graceful stop (SIGTERM,
SIGINT, :meth:`Service.request_stop`, or catching up when asked to), 1 when
a handler failed or the service could not go on, 2 when librdkafka refused a
property of the configuration (before connecting); in both cases the
checkpoints of everything that succeeded were committed first, when Redis
answered within the drain timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import confluent_kafka
import structlog

from streamcp.committer import Clock, CommitTimer, commit_requests, record_accepted
from streamcp.config import Config, split_address
from streamcp.dispatcher import Dispatcher
from streamcp.errors import (
    CheckpointStoreError,
    ConfigError,
    DeadLetterFailed,
    HandlerFailed,
    ServiceError,
    StoreLost,
    StoreUnavailable,
    StreamcpError,
)
from streamcp.events import TopicPartition
from streamcp.health import Health, HealthServer
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
from streamcp.metrics import Metrics
from streamcp.observe import KAFKA_STALE_S, STATS_INTERVAL_MS, LoopObserver
from streamcp.recovery import StoreLossGuard
from streamcp.router import HandlerRouter
from streamcp.source import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_STORED,
    consumer_settings,
    from_kafka,
    group_by_partition,
    split_errors,
    to_kafka,
)
from streamcp.store import Checkpoint, CheckpointStore, Owner, Refusal
from streamcp.tracker import OffsetTracker, Unit

PartitionStatus = Literal["waiting", "active", "paused", "fenced"]

# How often partitions that wait for Redis at assignment retry their claim.
CLAIM_RETRY_S = 0.5
# How often a partition paused at a failed event asks the store whether an
# operator lifted the pause.
PAUSE_CHECK_S = 2.0
# How often --stop-when-caught-up asks the broker for high watermarks when
# fetch responses have not brought one yet.
WATERMARK_QUERY_S = 1.0


@dataclass
class _Owned:
    """A partition this consumer was assigned."""

    epoch: int = 0
    status: PartitionStatus = "waiting"
    paused_offset: int | None = None


class Service:
    """A long-running consumer of one group.

    :meth:`run` blocks until stopped; :meth:`request_stop` may be called from
    any thread or a signal handler.
    """

    def __init__(
        self,
        config: Config,
        *,
        store: CheckpointStore,
        router: HandlerRouter,
        owner: Owner | None = None,
        clock: Clock = time.monotonic,
        stop_when_caught_up: bool = False,
        retry_paused: bool = False,
        consumer_factory: Callable[[dict[str, Any]], Any] = confluent_kafka.Consumer,
    ) -> None:
        self._config = config
        self._store = store
        self._router = router
        # Subscribed to one topic by name: every message is of that topic.
        kafka = config.kafka
        self._one_topic = (
            kafka.topics[0]
            if kafka.topic_pattern is None and len(kafka.topics) == 1
            else None
        )
        self._owner = owner or Owner.for_this_process()
        self._clock = clock
        self._stop_when_caught_up = stop_when_caught_up
        self._retry_paused = retry_paused
        self._pause_check_at = 0.0
        self._pending_pauses: dict[TopicPartition, tuple[int, int, str]] = {}
        self._consumer_factory = consumer_factory
        self._group = config.kafka.group_id
        self._cooperative = config.kafka.assignor == "cooperative-sticky"
        self._tracker = OffsetTracker()
        self._timer = CommitTimer(config.commit, clock)
        self._partitions: dict[TopicPartition, _Owned] = {}
        self._paused: set[TopicPartition] = set()
        self._stop = threading.Event()
        self._failure: StreamcpError | None = None
        self._claim_retry_at = 0.0
        self._watermark_at = 0.0
        self._watermarks: dict[TopicPartition, int] = {}
        self._ever_assigned = False
        self._consumer: Any = None
        self._dispatcher: Dispatcher | None = None
        self.log = structlog.get_logger("streamcp.service").bind(group=self._group)
        self.metrics = Metrics()
        self.health = Health(
            liveness_timeout_s=config.metrics.liveness_timeout_s,
            kafka_stale_s=KAFKA_STALE_S,
        )
        self._observer = LoopObserver(self.metrics, self.health, store)
        self._tracker.on_release = self._observer.released
        self._store_loss = StoreLossGuard(
            self._group, store, config.consumer.on_store_loss
        )
        self._http: HealthServer | None = None

    @property
    def owner(self) -> Owner:
        return self._owner

    def request_stop(self) -> None:
        """Ask the loop to stop gracefully; returns at once."""
        self._stop.set()

    def run(self) -> int:
        """Consume until stopped; returns the exit status (see module doc)."""
        try:
            self._dispatcher = make_dispatcher(
                self._config, list(self._router), self._clock
            )
        except ConfigError as exc:
            self._fail(exc)
            return 2
        self._serve_http()
        self._dispatcher.on_unit_ran = (
            self._unit_ran_inline
            if self._dispatcher.inline
            else self._observer.unit_ran
        )
        try:
            self._setup_handlers()
        except ServiceError as exc:
            self._fail(exc)
            self._shutdown()
            return 1
        try:
            self._consumer = self._consumer_factory(self._consumer_settings())
        except confluent_kafka.KafkaException as exc:
            # librdkafka refuses a property when the client is made, before
            # it connects: a configuration error like any other.
            self._fail(
                ConfigError(
                    "kafka.properties", str(exc.args[0].str() if exc.args else exc)
                )
            )
            self._shutdown()
            return 2
        self._consumer.subscribe(
            self._config.kafka.subscription(),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.log.info(
            "service.started",
            owner=self._owner.instance_id,
            topics=self._config.kafka.subscription(),
        )
        try:
            while not self._stop.is_set():
                self._iterate()
        except StreamcpError as exc:
            self._fail(exc)
        finally:
            self._shutdown()
        return 0 if self._failure is None else 1

    @property
    def failure(self) -> StreamcpError | None:
        """Why the service stopped with status 1, if it did."""
        return self._failure

    def _unit_ran_inline(self, unit: Unit, seconds: float) -> None:
        # Handling a poll's events is the loop's work too: it is alive.
        self._observer.unit_ran(unit, seconds)
        self.health.iterated()

    def _iterate(self) -> None:
        messages = self._consumer.consume(
            self._batch_limit(), poll_timeout(self._dispatcher, self._config.consumer)
        )
        if messages:
            self._dispatch(messages)
        if self._dispatcher is not None:
            self._dispatcher.run_ready()  # inline: handle them now
        self._check_failures()
        if self._waiting() and self._clock() >= self._claim_retry_at:
            self._retry_claims()
        if self._clock() >= self._pause_check_at:
            self._check_pauses()
        if self._timer.due(self._dispatcher_finished()) or bound_wants_commit(
            self._tracker, self._config.consumer, self._timer.retrying
        ):
            self._commit()
        self._apply_pauses()
        self._observe()
        if self._stop_when_caught_up and self._caught_up():
            self.log.info("service.caught_up")
            self._stop.set()

    def _batch_limit(self) -> int:
        """At most a batch, and never more than the in-flight bound has room for."""
        limits = self._config.consumer
        room = limits.max_in_flight_events - self._tracker.in_flight_events
        return max(1, min(limits.batch_size, room))

    def _dispatch(self, messages: Sequence[Any]) -> None:
        good, errored = split_errors(messages)
        self.log.debug("batch.polled", events=len(good), errors=len(errored))
        if errored:
            log_consumer_errors(self.log, errored, ServiceError)
        dispatcher = self._dispatcher
        assert dispatcher is not None  # set by run() before polling
        for tp, events, nbytes in group_by_partition(good, topic=self._one_topic):
            owned = self._partitions.get(tp)
            track = self._tracker.get(tp)
            if owned is None or owned.status != "active" or track is None:
                # Waiting or fenced: the partition is sought again when it
                # becomes active, so these events come back then.
                continue
            handler = self._router.for_topic(tp.topic)
            deliver(dispatcher, self._tracker, track, handler, events, nbytes)

    def _dispatcher_finished(self) -> int:
        dispatcher = self._dispatcher
        return dispatcher.finished_events() if dispatcher is not None else 0

    def _check_failures(self) -> None:
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        if dispatcher.crashed is not None:
            self._fail(
                ServiceError(f"a handler worker thread died: {dispatcher.crashed!r}")
            )
            return
        while dispatcher.failed:
            unit = dispatcher.failed.popleft()
            tp = unit.topic_partition
            track = self._tracker.get(tp)
            if track is None or track.generation != unit.generation or unit.cancelled:
                continue  # the partition moved on since; the outcome is stale
            failure = unit.failure
            offset = unit.next_offset()
            assert failure is not None and offset is not None  # FAILED
            handler = self._router.for_topic(tp.topic)
            if handler.policy.on_failure == "stop" and not isinstance(
                failure, DeadLetterFailed
            ):
                self._fail(HandlerFailed(tp, offset, handler.name, failure))
                return
            self._pause_at_failure(tp, offset, f"{type(failure).__name__}: {failure}")

    def _pause_at_failure(self, tp: TopicPartition, offset: int, reason: str) -> None:
        """Stop ``tp`` at the failed event; the other partitions go on."""
        owned = self._partitions.get(tp)
        if owned is None or owned.status != "active":
            return
        self._commit_until([tp], self._clock() + self._config.consumer.drain_timeout_s)
        self._tracker.forget(tp)
        if self._dispatcher is not None:
            self._dispatcher.discard(tp)
        owned.status = "paused"
        owned.paused_offset = offset
        self._pending_pauses[tp] = (owned.epoch, offset, reason)
        self._record_pauses()
        self._apply_pauses()
        self.log.error(
            "partition.paused",
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
            reason=reason,
        )

    def _record_pauses(self) -> None:
        for tp, (epoch, offset, reason) in list(self._pending_pauses.items()):
            try:
                self._store.pause(self._group, self._owner, tp, epoch, offset, reason)
            except StoreUnavailable:
                return  # retried with the next pause check
            del self._pending_pauses[tp]

    def _check_pauses(self) -> None:
        """Look in the store for what operators changed, every few seconds.

        A paused partition whose pause was lifted resumes at its checkpoint;
        an active one whose checkpoint an operator set is sought there at
        once, even when it is idle and would not commit for a while.
        """
        self._pause_check_at = self._clock() + PAUSE_CHECK_S
        self._record_pauses()
        watched = [
            tp
            for tp, o in self._partitions.items()
            if o.status in ("paused", "active") and tp not in self._pending_pauses
        ]
        if not watched:
            return
        try:
            stored = self._store.read(self._group, watched)
        except StoreUnavailable:
            return
        for tp in watched:
            checkpoint = stored.get(tp)
            owned = self._partitions.get(tp)
            if checkpoint is None or owned is None:
                continue
            if owned.status == "active":
                if checkpoint.epoch != owned.epoch:
                    self._adopt(tp, checkpoint)
                continue
            if checkpoint.paused:
                continue
            offset = (
                checkpoint.offset
                if checkpoint.offset is not None
                else owned.paused_offset
            )
            if offset is None:
                continue
            self._activate(tp, owned.epoch, offset)
            self._seek(tp, offset)
            self.log.info(
                "partition.unpaused",
                topic=tp.topic,
                partition=tp.partition,
                checkpoint=offset,
            )

    def _fail(self, error: StreamcpError) -> None:
        if self._failure is None:
            self._failure = error
        self._stop.set()

    # -- ownership -----------------------------------------------------------

    def _on_assign(self, consumer: Any, kafka_parts: list[Any]) -> None:
        parts = from_kafka(kafka_parts)
        self._ever_assigned = True
        self._owner = self._owner.with_member(consumer.memberid() or "")
        claims = self._claim(parts)
        assignments = []
        for tp in parts:
            offset = OFFSET_STORED
            if claims is None:
                self._partitions[tp] = _Owned(status="waiting")
            else:
                offset = self._activate_claim(tp, claims[tp])
            assignments.append(to_kafka(tp, offset))
        if self._cooperative:
            consumer.incremental_assign(assignments)
        else:
            consumer.assign(assignments)
        if parts:
            # librdkafka keeps a partition paused through unassign and
            # assign: one paused before it was revoked or lost would never
            # be fetched again. Start from resumed; _apply_pauses pauses
            # what must wait.
            consumer.resume([to_kafka(tp) for tp in parts])
        self._paused -= set(parts)
        self._apply_pauses()
        self.log.info(
            "partition.assigned",
            partitions=[str(tp) for tp in parts],
            waiting=claims is None,
        )
        self.metrics.count_rebalance("assigned")

    def _claim(self, parts: list[TopicPartition]) -> dict[TopicPartition, Any] | None:
        try:
            claims = self._store.claim(self._group, parts, self._owner)
            resolved = self._store_loss.resolve(self._consumer, self._owner, claims)
        except StoreUnavailable as exc:
            self.log.warning(
                "partition.claim_failed",
                error=str(exc),
                partitions=[str(tp) for tp in parts],
            )
            self._claim_retry_at = self._clock() + CLAIM_RETRY_S
            return None
        except StoreLost as exc:
            self._fail(exc)
            resolved = None
        if resolved is None:
            self._claim_retry_at = self._clock() + CLAIM_RETRY_S
            return None
        self._observer.claimed(resolved)
        return resolved

    def _activate_claim(self, tp: TopicPartition, claim: Checkpoint) -> int:
        """Take over a claimed partition; a recorded pause stays in force."""
        if claim.paused and self._retry_paused:
            self._unpause(tp)
        elif claim.paused:
            offset = claim.offset if claim.offset is not None else claim.paused_offset
            self._partitions[tp] = _Owned(
                epoch=claim.epoch, status="paused", paused_offset=offset
            )
            self.log.warning(
                "partition.still_paused",
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
                reason=claim.paused_reason,
            )
            return offset if offset is not None else OFFSET_STORED
        return self._activate(tp, claim.epoch, claim.offset)

    def _unpause(self, tp: TopicPartition) -> None:
        try:
            self._store.unpause(self._group, tp, by=self._owner.instance_id)
        except StoreUnavailable as exc:
            self.log.warning(
                "partition.unpause_failed",
                topic=tp.topic,
                partition=tp.partition,
                error=str(exc),
            )
            return
        self.log.info(
            "partition.retrying_paused", topic=tp.topic, partition=tp.partition
        )

    def _activate(self, tp: TopicPartition, epoch: int, offset: int | None) -> int:
        """Mark ``tp`` active from its checkpoint; returns where to start."""
        self._partitions[tp] = _Owned(epoch=epoch, status="active")
        self._tracker.start(tp, offset)
        if offset is not None:
            self.log.info(
                "partition.resumed",
                topic=tp.topic,
                partition=tp.partition,
                checkpoint=offset,
                epoch=epoch,
            )
            return offset
        policy = self._config.consumer.start_policy
        self.log.info(
            "partition.started",
            topic=tp.topic,
            partition=tp.partition,
            start_policy=policy,
            epoch=epoch,
        )
        if policy == "fail":
            self._partitions[tp].status = "fenced"
            self._fail(
                ServiceError(
                    f"no checkpoint for {tp} in group {self._group!r} and "
                    f"consumer.start_policy is 'fail'"
                )
            )
            return OFFSET_STORED
        return OFFSET_BEGINNING if policy == "earliest" else OFFSET_END

    def _waiting(self) -> list[TopicPartition]:
        return [tp for tp, o in self._partitions.items() if o.status == "waiting"]

    def _retry_claims(self) -> None:
        parts = self._waiting()
        claims = self._claim(parts)
        if claims is None:
            return
        for tp in parts:
            offset = self._activate_claim(tp, claims[tp])
            self._seek(tp, offset)

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(to_kafka(tp, offset))
        except confluent_kafka.KafkaException as exc:
            raise ServiceError(
                f"could not seek {tp} to offset {offset}: {exc}"
            ) from exc

    def _on_revoke(self, consumer: Any, kafka_parts: list[Any]) -> None:
        parts = [tp for tp in from_kafka(kafka_parts) if tp in self._partitions]
        self.log.info("partition.revoking", partitions=[str(tp) for tp in parts])
        self._drain(parts)
        self._commit_until(parts, self._clock() + self._config.consumer.drain_timeout_s)
        self._release(parts)
        if self._cooperative:
            consumer.incremental_unassign(kafka_parts)
        else:
            consumer.unassign()
        self.log.info("partition.revoked", partitions=[str(tp) for tp in parts])
        self.metrics.count_rebalance("revoked")

    def _on_lost(self, consumer: Any, kafka_parts: list[Any]) -> None:
        parts = from_kafka(kafka_parts)
        for tp in parts:
            self._forget(tp)
        if self._cooperative:
            consumer.incremental_unassign(kafka_parts)
        else:
            consumer.unassign()
        self.log.warning("partition.lost", partitions=[str(tp) for tp in parts])
        self.metrics.count_rebalance("lost")

    def _release(self, parts: Sequence[TopicPartition]) -> None:
        epochs = {
            tp: o.epoch
            for tp in parts
            if (o := self._partitions.get(tp)) is not None
            and o.status in ("active", "paused")
        }
        try:
            self._store.release(self._group, self._owner, epochs)
        except CheckpointStoreError as exc:
            # The next owner's claim bumps the epoch anyway.
            self.log.warning("partition.release_failed", error=str(exc))
        for tp in parts:
            self._forget(tp)

    def _forget(self, tp: TopicPartition) -> None:
        self._tracker.forget(tp)
        if self._dispatcher is not None:
            self._dispatcher.discard(tp)
        self._partitions.pop(tp, None)
        self._paused.discard(tp)
        self._observer.forgotten(tp)

    def _drain(self, parts: Sequence[TopicPartition] | None) -> bool:
        """Wait for in-flight work of ``parts`` to end, within the drain bound."""
        deadline = self._clock() + self._config.consumer.drain_timeout_s
        if self._dispatcher is not None:
            self._dispatcher.abandon_retries(parts)
        return drain(
            self._tracker,
            self._dispatcher,
            parts,
            deadline,
            self._clock,
            lambda: self.log.warning(
                "partition.drain_timeout", in_flight=self._tracker.in_flight_events
            ),
        )

    # -- commits -------------------------------------------------------------

    def _commit(self, only: Sequence[TopicPartition] | None = None) -> bool:
        """Commit every changed checkpoint; True when the store answered."""
        wanted = set(only) if only is not None else None
        tracks = [
            (track, owned.epoch)
            for track in self._tracker
            if (owned := self._partitions.get(track.topic_partition)) is not None
            and owned.status == "active"
            and (wanted is None or track.topic_partition in wanted)
        ]
        pending = commit_requests(tracks)
        finished = self._dispatcher_finished()
        if not pending:
            self._timer.succeeded(finished)
            return True
        started = time.perf_counter()
        try:
            result = self._store.commit(
                self._group, self._owner, [p[0] for p in pending]
            )
        except StoreUnavailable as exc:
            self._observer.commit_failed(time.perf_counter() - started)
            delay = self._timer.failed()
            self.log.warning(
                "checkpoint.commit_failed",
                error=str(exc),
                retry_in_s=delay,
                partitions=len(pending),
            )
            return False
        self._timer.succeeded(finished)
        mirrored = [
            to_kafka(request.topic_partition, request.offset)
            for request in record_accepted(self._tracker, pending, result.accepted)
        ]
        self._observer.committed(
            result.accepted, result.refused, time.perf_counter() - started
        )
        for refusal in result.refused:
            self._on_refused(refusal)
        self.log.debug(
            "checkpoint.committed",
            partitions=len(mirrored),
            refused=len(result.refused),
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        self._mirror(mirrored)
        return True

    def _commit_until(
        self, parts: Sequence[TopicPartition] | None, deadline: float
    ) -> bool:
        return commit_until(
            lambda: self._commit(parts), deadline, self._clock, self.log
        )

    def _mirror(self, offsets: list[Any]) -> None:
        if not offsets or not self._config.commit.mirror_to_kafka:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except confluent_kafka.KafkaException as exc:
            self.log.warning("checkpoint.mirror_failed", error=str(exc))

    def _on_refused(self, refusal: Refusal) -> None:
        tp = refusal.topic_partition
        self.log.warning(
            "checkpoint.refused",
            topic=tp.topic,
            partition=tp.partition,
            reason=refusal.reason,
            stored_epoch=refusal.stored_epoch,
            stored_owner=refusal.stored_owner,
        )
        if self._adopt_operator_change(refusal):
            return
        owned = self._partitions.get(tp)
        if owned is not None and owned.epoch > 0 and refusal.stored_epoch == 0:
            self._store_forgot(tp, owned)
            return
        if (
            owned is not None
            and 0 < refusal.stored_epoch < owned.epoch
            and refusal.stored_owner in ("", self._owner.instance_id)
        ):
            self._reclaim_after_regression(tp, owned, refusal)
            return
        if owned is not None:
            owned.status = "fenced"
        self._tracker.forget(tp)
        if self._dispatcher is not None:
            self._dispatcher.discard(tp)
        self._apply_pauses()

    def _reclaim_after_regression(
        self, tp: TopicPartition, owned: _Owned, refusal: Refusal
    ) -> None:
        """The store went back to an epoch older than this consumer's claim.

        Epochs only grow, and the stored owner is this consumer (or nobody):
        Redis lost its latest writes (a failover to a replica that lacked
        them), and no other consumer claimed the partition since. Claim again
        and keep going: every event below this consumer's own checkpoint was
        handled, so committing it loses nothing. When another consumer is the
        stored owner, the partition may have moved while this one was away:
        it is fenced as for any stale commit.
        """
        try:
            claim = self._store.claim(self._group, [tp], self._owner)[tp]
        except StoreUnavailable:
            return  # the next commit is refused again and retries this
        self.log.warning(
            "checkpoint.epoch_regressed",
            topic=tp.topic,
            partition=tp.partition,
            stored_epoch=refusal.stored_epoch,
            epoch=owned.epoch,
            new_epoch=claim.epoch,
            stored_checkpoint=claim.offset,
        )
        owned.epoch = claim.epoch
        track = self._tracker.get(tp)
        if track is not None:
            # Make the next commit write this consumer's checkpoint again.
            track.committed = claim.offset

    def _store_forgot(self, tp: TopicPartition, owned: _Owned) -> None:
        """The store holds no epoch for a partition this consumer claimed
        (every claim leaves one): it lost data under the running consumer.

        Under ``fail`` the service stops with :class:`StoreLost`; under
        ``recover_from_kafka`` the partition is claimed again, which
        recovers it from Kafka's group offsets like a claim at start.
        """
        self._tracker.forget(tp)
        if self._dispatcher is not None:
            self._dispatcher.discard(tp)
        if self._config.consumer.on_store_loss == "recover_from_kafka":
            owned.status = "waiting"
            self._apply_pauses()
            return
        owned.status = "fenced"
        error = StoreLost(
            f"the checkpoint store no longer holds {tp} of group {self._group!r}, "
            f"claimed by this consumer at epoch {owned.epoch}: Redis lost data "
            f"(restart without persistence, flush or failover); set "
            f'consumer.on_store_loss = "recover_from_kafka" to resume from '
            f"Kafka's group offsets, or restore the checkpoints"
        )
        self.log.error(
            "checkpoint.store_lost",
            topic=tp.topic,
            partition=tp.partition,
            epoch=owned.epoch,
            error=str(error),
        )
        self._fail(error)

    def _adopt_operator_change(self, refusal: Refusal) -> bool:
        tp = refusal.topic_partition
        if (
            refusal.reason != "stale_epoch"
            or refusal.stored_owner != self._owner.instance_id
        ):
            return False
        try:
            stored = self._store.read(self._group, [tp]).get(tp)
        except StoreUnavailable:
            return False
        return stored is not None and self._adopt(tp, stored)

    def _adopt(self, tp: TopicPartition, stored: Checkpoint) -> bool:
        """Take an operator's change of ``tp``'s checkpoint: drop in-flight
        work and seek there. Only the recorded owner does; True if adopted."""
        if (
            not stored.operator_change
            or stored.offset is None
            or stored.owner != self._owner.instance_id
        ):
            return False
        self._tracker.forget(tp)
        if self._dispatcher is not None:
            self._dispatcher.discard(tp)
        self._activate(tp, stored.epoch, stored.offset)
        self._seek(tp, stored.offset)
        self.log.info(
            "checkpoint.adopted",
            topic=tp.topic,
            partition=tp.partition,
            checkpoint=stored.offset,
            epoch=stored.epoch,
        )
        return True

    # -- flow control ----------------------------------------------------------

    def _apply_pauses(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        over = over_bound(self._tracker, self._config.consumer)
        wanted = {
            tp
            for tp, owned in self._partitions.items()
            if over or owned.status != "active" or self._stop.is_set()
        }
        self._paused = set_paused(
            consumer,
            self._paused,
            wanted,
            self._partitions,
            self.log,
            self._tracker.in_flight_events,
        )

    def _caught_up(self) -> bool:
        # With no partition at all (lost, or not yet given back) there is
        # nothing to have caught up on.
        if not self._ever_assigned or self._waiting() or not self._partitions:
            return False
        active = [tp for tp, o in self._partitions.items() if o.status == "active"]
        for tp in active:
            track = self._tracker.get(tp)
            if track is None or not all(unit.finished for unit in track.units):
                return False
            high = self._high_watermark(tp)
            if high is None:
                return False
            checkpoint = track.checkpoint()
            position = checkpoint if checkpoint is not None else 0
            if high > 0 and position < high:
                return False
        return True

    def _high_watermark(self, tp: TopicPartition) -> int | None:
        _, high = self._consumer.get_watermark_offsets(to_kafka(tp), cached=True)
        if high is not None and high >= 0:
            return int(high)
        if self._clock() < self._watermark_at:
            return self._watermarks.get(tp)
        self._watermark_at = self._clock() + WATERMARK_QUERY_S
        try:
            _, high = self._consumer.get_watermark_offsets(to_kafka(tp), timeout=5)
        except confluent_kafka.KafkaException:
            return None
        self._watermarks[tp] = int(high)
        return int(high)

    # -- lifecycle -------------------------------------------------------------

    def _setup_handlers(self) -> None:
        for handler in self._router:
            try:
                handler.setup()
            except Exception as exc:  # any setup error stops the start
                self.log.error(
                    "handler.setup_failed",
                    handler=handler.name,
                    error=f"{type(exc).__name__}: {exc}",
                )
                raise ServiceError(
                    f"handler {handler.name!r} failed in setup: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc

    def _shutdown(self) -> None:
        self.log.info("service.stopping", reason="failure" if self._failure else "stop")
        self.health.stopping()
        if self._consumer is not None:
            self._apply_pauses()
            self._drain(None)
            self._commit_until(
                None, self._clock() + self._config.consumer.drain_timeout_s
            )
            self._release(list(self._partitions))
            try:
                self._consumer.close()
            except (RuntimeError, confluent_kafka.KafkaException) as exc:
                self.log.warning("consumer.close_failed", error=str(exc))
        if self._dispatcher is not None:
            self._dispatcher.close(self._config.consumer.drain_timeout_s)
        for handler in self._router:
            try:
                handler.close()
            except Exception as exc:  # noqa: BLE001  # a close error must not mask the exit
                self.log.warning(
                    "handler.close_failed", handler=handler.name, error=repr(exc)
                )
        self.log.info("service.stopped", exit_status=0 if self._failure is None else 1)
        if self._http is not None:
            self._http.close()

    # -- observability ---------------------------------------------------------

    @property
    def http_address(self) -> tuple[str, int] | None:
        """Where ``/metrics``, ``/healthz`` and ``/readyz`` answer, once bound."""
        return self._http.address if self._http is not None else None

    def _serve_http(self) -> None:
        settings = self._config.metrics
        if not settings.enabled:
            return
        host, port = split_address(settings.address)
        server = HealthServer(host, port, self.metrics, self.health)
        try:
            host, port = server.start()
        except OSError as exc:
            # The consumer goes on without its endpoint: losing the metrics
            # is better than stopping consumption; the error says why.
            self.log.error(
                "metrics.bind_failed", address=settings.address, error=str(exc)
            )
            return
        self._http = server
        self.log.info("metrics.listening", address=f"{host}:{port}", port=port)

    def _consumer_settings(self) -> dict[str, Any]:
        settings = consumer_settings(
            self._config.kafka, self._config.consumer.start_policy
        )
        if self._config.metrics.enabled:
            # The statistics report each broker connection's state: the
            # readiness probe's view of the broker, at no request's cost.
            settings.setdefault("statistics.interval.ms", STATS_INTERVAL_MS)
            settings["stats_cb"] = self._observer.kafka_stats
        return settings

    def _observe(self) -> None:
        if not self._observer.due():
            return
        active = [tp for tp, o in self._partitions.items() if o.status == "active"]
        self._observer.refresh(
            self._tracker,
            active,
            paused=len(self._paused),
            assigned=len(self._partitions),
            consumer=self._consumer,
        )
