"""Operator tools: lag, and changing, moving and deleting checkpoints.

Everything here works whether the service runs or not. Kafka is read with
a plain consumer that never subscribes, so it never joins the group and
never triggers a rebalance. Checkpoints change only through
:meth:`~streamcp.store.CheckpointStore.set_offset`, which bumps the epoch
and marks an operator change: a running owner's next commit of that
partition is refused, and the owner adopts the new checkpoint and seeks
there instead of writing its older position over it.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import confluent_kafka
import redis.exceptions

from streamcp.config import KafkaConfig
from streamcp.errors import ReplayError, RequestRefused, StoreUnavailable, StreamcpError
from streamcp.events import TopicPartition
from streamcp.ranges import BrokerView
from streamcp.redis_store import LAYOUT_VERSION, RedisCheckpointStore
from streamcp.source import librdkafka_logger, to_kafka
from streamcp.store import Checkpoint

EXPORT_FORMAT = "streamcp-checkpoints"
ResetTarget = Literal["earliest", "latest"]


class KafkaUnavailable(StreamcpError):  # named like StoreUnavailable
    """The broker did not answer an operator's request."""


def operator_name() -> str:
    """Who changes checkpoints from this shell: ``cli:<user>@<host>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def credentials_refused(store: RedisCheckpointStore) -> str | None:
    """Why Redis refused the configured credentials, or ``None``.

    Any other trouble (Redis down) is left to the service, which waits for
    Redis; wrong credentials never heal by waiting. The answer quotes
    Redis's own words, which never contain the password.
    """
    try:
        store.ping()
    except StoreUnavailable as exc:
        cause = exc.__cause__
        if isinstance(cause, redis.exceptions.AuthenticationError):
            return f"refused the credentials: {cause}"
    return None


# Kafka offsets are signed 64-bit numbers.
MAX_OFFSET = 2**63 - 1


class KafkaView:
    """Reads offsets of one group's topics without joining the group.

    Not thread-safe; :meth:`close` it when done.
    """

    def __init__(self, kafka: KafkaConfig, timeout_s: float = 10.0) -> None:
        settings: dict[str, Any] = dict(kafka.properties)
        settings.update(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "group.id": kafka.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "logger": librdkafka_logger(),
            }
        )
        self._timeout_s = timeout_s
        self._consumer = confluent_kafka.Consumer(settings)

    def partitions(self, topic: str) -> list[TopicPartition]:
        """The topic's partitions; empty when the topic does not exist."""
        try:
            metadata = self._consumer.list_topics(topic, timeout=self._timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise KafkaUnavailable(
                f"the broker did not list topic {topic!r}: {exc}"
            ) from exc
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return []
        return [TopicPartition(topic, p) for p in sorted(found.partitions)]

    def watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        """(low, high) watermark: first offset in the log, next to be written."""
        try:
            low, high = self._consumer.get_watermark_offsets(
                to_kafka(tp), timeout=self._timeout_s
            )
        except confluent_kafka.KafkaException as exc:
            raise KafkaUnavailable(
                f"the broker did not answer the watermarks of {tp}: {exc}"
            ) from exc
        return int(low), int(high)

    def committed(self, parts: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's committed offsets in Kafka (the mirror), where set."""
        if not parts:
            return {}
        try:
            answered = self._consumer.committed(
                [to_kafka(tp) for tp in parts], timeout=self._timeout_s
            )
        except confluent_kafka.KafkaException as exc:
            raise KafkaUnavailable(
                f"the broker did not answer the group's offsets: {exc}"
            ) from exc
        return {
            TopicPartition(p.topic, p.partition): int(p.offset)
            for p in answered
            if p.error is None and p.offset >= 0
        }

    def offsets_for_time(
        self, parts: Sequence[TopicPartition], at: datetime
    ) -> dict[TopicPartition, int]:
        """Per partition, the first offset whose timestamp is at or after ``at``.

        A partition with no such event gets its high watermark.
        """
        # The broker's own time lookup is only a lower bound (some brokers
        # answer 0 for every time); the replay's resolver reads forward from
        # it to the first event at or after the time.
        millis = int(at.timestamp() * 1000)
        broker = BrokerView(self._consumer, timeout_s=self._timeout_s)
        try:
            bounds = broker.watermarks(parts)
            found = {}
            for tp in parts:
                first = broker.first_at_or_after(tp, millis, bounds[tp])
                found[tp] = bounds[tp][1] if first is None else first
        except ReplayError as exc:
            raise KafkaUnavailable(
                f"the broker did not look up offsets for {at.isoformat()}: {exc}"
            ) from exc
        return found

    def close(self) -> None:
        self._consumer.close()


# -- lag --------------------------------------------------------------------


def lag_rows(
    store: RedisCheckpointStore,
    view: KafkaView,
    group: str,
    topics: Iterable[str] = (),
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """One row per partition of the group's checkpoints and of ``topics``."""
    stored = store.read(group)
    parts = set(stored)
    for topic in topics:
        parts.update(view.partitions(topic))
    ordered = sorted(parts)
    mirrored = view.committed(ordered)
    at = now or datetime.now(UTC)
    rows = []
    for tp in ordered:
        cp = stored.get(tp)
        low, high = view.watermarks(tp)
        checkpoint = cp.offset if cp is not None else None
        base = checkpoint if checkpoint is not None else low
        rows.append(
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "checkpoint": checkpoint,
                "high_watermark": high,
                "lag": max(0, high - base) if high >= 0 and base >= 0 else None,
                "checkpoint_age_s": _age(cp, at),
                "committed_by": committed_by(cp) if cp is not None else "",
                "owner": cp.owner if cp is not None else "",
                "kafka_committed": mirrored.get(tp),
            }
        )
    return rows


def _age(cp: Checkpoint | None, at: datetime) -> float | None:
    if cp is None or cp.committed_at is None:
        return None
    return round(max(0.0, (at - cp.committed_at).total_seconds()), 3)


def committed_by(cp: Checkpoint) -> str:
    """``host/pid/member`` of whoever last changed the checkpoint."""
    if not cp.committed_by_host:
        return ""
    return f"{cp.committed_by_host}/{cp.committed_by_pid}/{cp.committed_by_member}"


# -- changing checkpoints ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One partition's checkpoint, as it is and as it would become."""

    topic_partition: TopicPartition
    current: int | None
    new: int
    owner: str

    def row(self) -> dict[str, Any]:
        return {
            "topic": self.topic_partition.topic,
            "partition": self.topic_partition.partition,
            "checkpoint": self.current,
            "new_checkpoint": self.new,
            "owner": self.owner,
        }


def target_partitions(
    store: RedisCheckpointStore,
    view: KafkaView,
    group: str,
    topic: str,
    partitions: Sequence[int],
) -> list[TopicPartition]:
    """The chosen partitions of ``topic``, or all it has (in Kafka or Redis)."""
    in_kafka = view.partitions(topic)
    if partitions:
        chosen = [TopicPartition(topic, p) for p in sorted(set(partitions))]
        unknown = [str(tp) for tp in chosen if tp not in in_kafka]
        if unknown:
            raise RequestRefused(
                "--partition",
                f"no such partition in Kafka: {', '.join(unknown)} "
                f"({topic!r} has {len(in_kafka)})",
            )
        return chosen
    known = set(in_kafka)
    known.update(tp for tp in store.read(group) if tp.topic == topic)
    return sorted(known)


def plan_changes(
    store: RedisCheckpointStore,
    view: KafkaView,
    group: str,
    parts: Sequence[TopicPartition],
    *,
    offset: int | None = None,
    at: datetime | None = None,
    to: ResetTarget | None = None,
) -> list[Change]:
    """What setting (exactly one of ``offset``, ``at``, ``to``) would change."""
    if offset is not None:
        if not 0 <= offset <= MAX_OFFSET:
            raise RequestRefused(
                "--offset", f"must be between 0 and {MAX_OFFSET}, got {offset}"
            )
        wanted = dict.fromkeys(parts, offset)
    elif at is not None:
        wanted = view.offsets_for_time(parts, at)
    elif to is not None:
        side = 0 if to == "earliest" else 1
        wanted = {tp: view.watermarks(tp)[side] for tp in parts}
    else:
        raise ValueError("plan_changes needs one of offset, at and to")
    stored = store.read(group, parts)
    return [
        Change(
            tp,
            stored[tp].offset if tp in stored else None,
            wanted[tp],
            stored[tp].owner if tp in stored else "",
        )
        for tp in parts
    ]


def apply_changes(
    store: RedisCheckpointStore, group: str, changes: Sequence[Change], by: str
) -> list[Checkpoint]:
    """Set each checkpoint (an operator change: the epoch is bumped)."""
    return [store.set_offset(group, c.topic_partition, c.new, by) for c in changes]


# -- export and import -----------------------------------------------------------


def export_document(
    store: RedisCheckpointStore, group: str, now: datetime | None = None
) -> dict[str, Any]:
    """Every checkpoint hash of ``group``, as a JSON-ready document."""
    rows = store.dump(group)
    return {
        "format": EXPORT_FORMAT,
        "layout": LAYOUT_VERSION,
        "group": group,
        "exported_at": (now or datetime.now(UTC)).isoformat(timespec="milliseconds"),
        "checkpoints": [
            {"topic": tp.topic, "partition": tp.partition, "fields": fields}
            for tp, fields in sorted(rows.items())
        ],
    }


def read_document(document: Any) -> dict[TopicPartition, dict[str, str]]:
    """The checkpoint hashes of an export; raises ``ValueError`` when malformed."""
    if not isinstance(document, Mapping) or document.get("format") != EXPORT_FORMAT:
        raise ValueError(f"not a {EXPORT_FORMAT} document")
    if document.get("layout") != LAYOUT_VERSION:
        raise ValueError(
            f"layout {document.get('layout')!r} is not "
            f"{LAYOUT_VERSION!r}, the one this version reads"
        )
    rows: dict[TopicPartition, dict[str, str]] = {}
    for item in document.get("checkpoints", []):
        try:
            tp = TopicPartition(str(item["topic"]), int(item["partition"]))
            fields = {str(k): str(v) for k, v in dict(item["fields"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed checkpoint entry {item!r}") from exc
        if "offset" in fields:
            int(fields["offset"])  # raises ValueError for a non-number
        rows[tp] = fields
    return rows


def owned(checkpoints: Mapping[TopicPartition, Checkpoint]) -> list[Checkpoint]:
    """The checkpoints whose partition has a current owner."""
    return [cp for cp in checkpoints.values() if cp.owner]
