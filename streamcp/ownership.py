"""Owning partitions: claims, rebalances, pauses at failures, refusals.

The part of :class:`~streamcp.service.Service` that decides which
partitions this consumer may work on and commit. On assignment it claims
them in the store (a new epoch and this owner) and seeks each to its
checkpoint; on revocation it drains, commits and releases; on a lost
partition it commits nothing. A partition whose claim waited for Redis is
claimed again later; one paused at a failed event waits for an operator;
a refused commit tells whether another consumer took the partition over,
an operator moved its checkpoint, or the store lost it.

:class:`PartitionOwnership` is a mixin: the service inherits it, and the
attributes declared on it are the service's own, set in its constructor.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import confluent_kafka

from streamcp.config import Config
from streamcp.dispatcher import Dispatcher
from streamcp.errors import (
    CheckpointStoreError,
    ServiceError,
    StoreLost,
    StoreUnavailable,
    StreamcpError,
)
from streamcp.events import TopicPartition
from streamcp.loop import drain
from streamcp.metrics import Metrics
from streamcp.observe import LoopObserver
from streamcp.recovery import StoreLossGuard
from streamcp.router import HandlerRouter
from streamcp.source import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_STORED,
    from_kafka,
    to_kafka,
)
from streamcp.store import Checkpoint, CheckpointStore, Owner, Refusal
from streamcp.tracker import OffsetTracker

if TYPE_CHECKING:
    from streamcp.committer import Clock, CommitTimer

PartitionStatus = Literal["waiting", "active", "paused", "fenced"]

# How often partitions that wait for Redis at assignment retry their claim.
CLAIM_RETRY_S = 0.5
# How often a partition paused at a failed event asks the store whether an
# operator lifted the pause.
PAUSE_CHECK_S = 2.0


@dataclass
class Owned:
    """A partition this consumer was assigned."""

    epoch: int = 0
    status: PartitionStatus = "waiting"
    paused_offset: int | None = None


class PartitionOwnership:
    """Claims, hand-overs and refusals of the partitions a service is assigned."""

    _config: Config
    _store: CheckpointStore
    _router: HandlerRouter
    _owner: Owner
    _group: str
    _clock: Clock
    _cooperative: bool
    _retry_paused: bool
    _tracker: OffsetTracker
    _timer: CommitTimer
    _partitions: dict[TopicPartition, Owned]
    _paused: set[TopicPartition]
    _pending_pauses: dict[TopicPartition, tuple[int, int, str]]
    _pause_check_at: float
    _claim_retry_at: float
    _ever_assigned: bool
    _stop: threading.Event
    _consumer: Any
    _dispatcher: Dispatcher | None
    _observer: LoopObserver
    _store_loss: StoreLossGuard
    log: Any
    metrics: Metrics

    if TYPE_CHECKING:
        # The service's own steps that these call.
        def _commit(self, only: Sequence[TopicPartition] | None = None) -> bool: ...

        def _commit_until(
            self, parts: Sequence[TopicPartition] | None, deadline: float
        ) -> bool: ...

        def _apply_pauses(self) -> None: ...

        def _fail(self, error: StreamcpError) -> None: ...

    def _on_assign(self, consumer: Any, kafka_parts: list[Any]) -> None:
        parts = from_kafka(kafka_parts)
        self._ever_assigned = True
        self._owner = self._owner.with_member(consumer.memberid() or "")
        claims = self._claim(parts)
        assignments = []
        for tp in parts:
            offset = OFFSET_STORED
            if claims is None:
                self._partitions[tp] = Owned(status="waiting")
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
            self._partitions[tp] = Owned(
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
        self._partitions[tp] = Owned(epoch=epoch, status="active")
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
        self, tp: TopicPartition, owned: Owned, refusal: Refusal
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

    def _store_forgot(self, tp: TopicPartition, owned: Owned) -> None:
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
