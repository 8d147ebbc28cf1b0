"""Load the bundled Wikimedia sample into a topic (``streamcp load-sample``).

The sample is 100 real ``recentchange`` events, one JSON object a line
(:data:`~streamcp.examples.wikistats.DATA_FILE`). Each line becomes one
event, keyed by the page title (so one page's edits stay in one partition,
in order) and stamped with the edit's own time (``timestamp``, in seconds,
becomes the record timestamp in milliseconds). A time-range replay over the
sample therefore selects by the edits' times, not by when they were loaded.

Loading is guarded against doubling the data: into a topic that already
holds events, :func:`load_sample` produces nothing unless told to append.
That makes the Compose stack's one-shot loader safe to run on every
``docker compose up``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamcp.errors import StreamcpError
from streamcp.examples.wikistats import DATA_FILE
from streamcp.services import KafkaService, Record, produce_records

DEFAULT_TOPIC = "wikimedia.recentchange"
DEFAULT_PARTITIONS = 3

# How long one metadata, watermark or produce step may take by default, in
# seconds: a broker that just started can be slow to answer its first
# requests.
REQUEST_TIMEOUT_S = 30.0


class SampleLoadError(StreamcpError):
    """The sample could not be loaded; the message says why."""


@dataclass(frozen=True)
class LoadResult:
    """What :func:`load_sample` did.

    ``produced`` is 0 when the topic already held events and appending was
    not asked for; ``ends`` maps each partition to its end offset after the
    load.
    """

    topic: str
    created: bool
    produced: int
    ends: dict[int, int]


def sample_records(path: Path = DATA_FILE) -> list[Record]:
    """One record per non-blank line of ``path``: title key, timestamp in ms.

    The value is the line exactly as it is in the file. Raises
    ``ValueError`` for a line that is not a JSON object with a string
    ``title`` and an integer ``timestamp``.
    """
    records: list[Record] = []
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            value = line.rstrip(b"\r\n")
            if not value.strip():
                continue
            records.append(_record(value, f"{path.name}:{number}"))
    return records


def _record(value: bytes, where: str) -> Record:
    try:
        change = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not JSON: {exc}") from exc
    title = change.get("title") if isinstance(change, dict) else None
    timestamp = change.get("timestamp") if isinstance(change, dict) else None
    if not isinstance(title, str):
        raise ValueError(f"{where}: 'title' is not a string: {title!r}")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise ValueError(f"{where}: 'timestamp' is not an integer: {timestamp!r}")
    return title.encode("utf-8"), value, timestamp * 1000, None


def partition_ends(
    bootstrap_servers: str,
    topic: str,
    partitions: Sequence[int],
    *,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> dict[int, int]:
    """Each partition's end offset (high watermark), asked of the broker."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "streamcp-load-sample",
            "enable.auto.commit": False,
        }
    )
    try:
        return {
            partition: int(
                consumer.get_watermark_offsets(
                    KafkaTopicPartition(topic, partition), timeout=timeout_s
                )[1]
            )
            for partition in partitions
        }
    finally:
        consumer.close()


def load_sample(
    bootstrap_servers: str,
    *,
    topic: str = DEFAULT_TOPIC,
    partitions: int = DEFAULT_PARTITIONS,
    path: Path = DATA_FILE,
    append: bool = False,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> LoadResult:
    """Create ``topic`` if missing and produce the sample's events into it.

    Blocks until every record is acknowledged (``acks=all``). Into an
    existing topic that holds events, nothing is produced unless ``append``.
    An existing topic keeps its partition count, whatever ``partitions``
    says. ``timeout_s`` bounds each step (metadata, topic creation,
    watermarks, delivery). Raises :class:`SampleLoadError` when the broker
    does not answer or refuses a record, ``ValueError`` for a malformed
    sample file.
    """
    records = sample_records(path)
    kafka = KafkaService(
        bootstrap_servers=bootstrap_servers, kind="external", is_apache_kafka=False
    )
    try:
        existing = _partition_count(kafka, topic, timeout_s)
        created = existing is None
        if created:
            kafka.create_topic(topic, partitions, timeout_s=timeout_s)
        count = partitions if existing is None else existing
        before = partition_ends(
            bootstrap_servers, topic, range(count), timeout_s=timeout_s
        )
        if sum(before.values()) and not append:
            return LoadResult(topic, created, 0, before)
        produce_records(bootstrap_servers, topic, records, timeout_s=timeout_s)
        ends = partition_ends(
            bootstrap_servers, topic, range(count), timeout_s=timeout_s
        )
    except KafkaException as exc:
        raise SampleLoadError(
            f"loading {path.name} into {topic!r} at {bootstrap_servers} failed: "
            f"{exc.args[0] if exc.args else exc}"
        ) from exc
    return LoadResult(topic, created, len(records), ends)


def _partition_count(kafka: KafkaService, topic: str, timeout_s: float) -> int | None:
    """The topic's partition count, or ``None`` when it does not exist."""
    metadata = kafka.admin().list_topics(timeout=timeout_s)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return None
    return len(found.partitions)
