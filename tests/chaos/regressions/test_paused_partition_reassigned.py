"""A partition paused in the client before a rebalance (found by the chaos
suite, after a zombie episode).

librdkafka keeps a partition's pause through unassign and assign. The
service forgot its own record of the pause when the partition was revoked
or lost, and did not resume it in the client when it came back: a
partition that had been fenced (or held back by the in-flight bound) and
was later assigned to the same consumer again was never fetched again,
and the group stalled on it without any error.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path

from streamcp.redis_store import RedisCheckpointStore
from streamcp.services import KafkaService, RedisService
from streamcp.store import Owner
from tests.service.harness import (
    ServiceProcess,
    checkpoints,
    produce,
    raw_config,
    tp,
    wait_for,
    write_config,
)


def test_fenced_partition_assigned_again_to_the_same_consumer_is_consumed(
    kafka: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    """A consumer whose commit of a partition was refused (another owner
    claimed it in Redis) fences and pauses that partition; when a rebalance
    later gives the partition back to it, it consumes it again and its
    checkpoint reaches the end."""
    topic = topic_factory(2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "handled.txt"
    raw = raw_config(
        kafka.bootstrap_servers,
        redis_service.url,
        key_prefix,
        topic,
        group,
        commit={"every_events": 1000, "every_seconds": 0.3},
        handler={"options": {"path": str(record)}},
        log={"level": "info", "format": "json"},
    )
    config_path = write_config(tmp_path / "c.toml", raw)
    store = RedisCheckpointStore.from_url(redis_service.url, key_prefix=key_prefix)
    first = ServiceProcess(config_path, tmp_path / "log1")
    second = None
    try:
        produce(kafka.bootstrap_servers, topic, 2, 5)
        wait_for(
            lambda: checkpoints(store, group) == {0: 5, 1: 5}, what="checkpoints at 5"
        )
        store.claim(group, [tp(topic, 0)], Owner("elsewhere:1:000000", "elsewhere", 1))
        produce(kafka.bootstrap_servers, topic, 2, 3, start=5)
        wait_for(
            lambda: [e for e in first.saw("checkpoint.refused") if e["partition"] == 0],
            what="the refused commit",
        )

        second = ServiceProcess(config_path, tmp_path / "log2")
        wait_for(lambda: second.saw("partition.assigned"), what="second assigned")
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0
        wait_for(
            lambda: len(first.saw("partition.assigned")) >= 3,
            what="the first consumer assigned both partitions again",
        )

        produce(kafka.bootstrap_servers, topic, 2, 5, start=8)
        wait_for(
            lambda: checkpoints(store, group) == {0: 13, 1: 13},
            timeout_s=30,
            what="both checkpoints at the end",
        )
    finally:
        first.kill()
        if second is not None:
            second.kill()
        store.close()
