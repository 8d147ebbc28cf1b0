"""Store loss: Redis forgot checkpoints that Kafka's group offsets remember.

Accepted checkpoints are mirrored to Kafka's group offsets. When a claim
finds no checkpoint for a partition whose group offset in Kafka exists,
Redis lost data (a restart without persistence, a flush, a failover to a
replica that lagged) and applying the start policy would silently replay or
skip. :class:`StoreLossGuard` looks at Kafka's offsets for exactly those
partitions (one ``committed()`` request per claim, only when some partition
has no checkpoint) and, by the ``consumer.on_store_loss`` policy, raises
:class:`~streamcp.errors.StoreLost` (``fail``) or writes the Kafka offsets
back to Redis and resumes from them (``recover_from_kafka``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import confluent_kafka
import structlog

from streamcp.config import StoreLossPolicy
from streamcp.errors import StoreLost
from streamcp.events import TopicPartition
from streamcp.source import to_kafka
from streamcp.store import Checkpoint, CheckpointStore, CommitRequest, Owner, now_utc

# How long a claim waits for the group coordinator's committed offsets.
COMMITTED_TIMEOUT_S = 10.0

log = structlog.get_logger("streamcp.recovery")


class StoreLossGuard:
    """Checks claims against Kafka's committed offsets for one group."""

    def __init__(
        self, group: str, store: CheckpointStore, policy: StoreLossPolicy
    ) -> None:
        self._group = group
        self._store = store
        self._policy = policy

    def resolve(
        self,
        consumer: Any,
        owner: Owner,
        claims: Mapping[TopicPartition, Checkpoint],
    ) -> dict[TopicPartition, Checkpoint] | None:
        """``claims`` to act on, or ``None`` to retry the claim later.

        Raises :class:`StoreLost` under the ``fail`` policy when Kafka holds
        offsets for partitions without a checkpoint. Under
        ``recover_from_kafka`` those offsets are committed to the store
        first (so a restart finds them) and returned as the checkpoints.
        ``None`` when Kafka did not answer, or the store refused the
        recovery (another owner claimed in between).
        """
        missing = [tp for tp, cp in claims.items() if cp.offset is None]
        if not missing:
            return dict(claims)
        found = kafka_committed(consumer, missing)
        if found is None:
            log.warning(
                "checkpoint.kafka_offsets_unknown",
                group=self._group,
                partitions=[str(tp) for tp in missing],
            )
            return None
        if not found:
            return dict(claims)
        if self._policy == "fail":
            error = store_lost(self._group, found)
            log.error(
                "checkpoint.store_lost",
                group=self._group,
                kafka_offsets=_describe(found),
                error=str(error),
            )
            raise error
        return self._recover(owner, claims, found)

    def _recover(
        self,
        owner: Owner,
        claims: Mapping[TopicPartition, Checkpoint],
        found: Mapping[TopicPartition, int],
    ) -> dict[TopicPartition, Checkpoint] | None:
        requests = [
            CommitRequest(tp, offset, claims[tp].epoch)
            for tp, offset in sorted(found.items())
        ]
        result = self._store.commit(self._group, owner, requests)
        if result.refused:
            log.warning(
                "checkpoint.recovery_refused",
                group=self._group,
                partitions=[str(r.topic_partition) for r in result.refused],
            )
            return None
        resolved = dict(claims)
        at = now_utc()
        for tp, offset in found.items():
            resolved[tp] = dataclasses.replace(
                claims[tp], offset=offset, committed_at=at
            )
            log.warning(
                "checkpoint.recovered",
                group=self._group,
                topic=tp.topic,
                partition=tp.partition,
                checkpoint=offset,
                source="kafka group offsets",
                reason="the store held no checkpoint for it",
            )
        return resolved


def kafka_committed(
    consumer: Any,
    partitions: list[TopicPartition],
    timeout_s: float = COMMITTED_TIMEOUT_S,
) -> dict[TopicPartition, int] | None:
    """Kafka's committed group offsets of ``partitions`` (only those set).

    ``None`` when the group coordinator did not answer within ``timeout_s``.
    """
    try:
        answered = consumer.committed(
            [to_kafka(tp) for tp in partitions], timeout=timeout_s
        )
    except confluent_kafka.KafkaException:
        return None
    return {
        TopicPartition(p.topic, p.partition): int(p.offset)
        for p in answered
        if p.error is None and p.offset >= 0
    }


def store_lost(group: str, found: Mapping[TopicPartition, int]) -> StoreLost:
    return StoreLost(
        f"the checkpoint store holds no checkpoints for group {group!r} where "
        f"Kafka's group offsets show earlier commits ({_describe(found)}): "
        f"Redis lost data (restart without persistence, flush or failover); "
        f'set consumer.on_store_loss = "recover_from_kafka" to resume from '
        f"those offsets, or restore the checkpoints"
    )


def _describe(found: Mapping[TopicPartition, int]) -> str:
    return ", ".join(f"{tp}={offset}" for tp, offset in sorted(found.items()))
