"""Redis loses its data under running consumers (found by the chaos suite).

Before the fix, a running consumer whose commit was refused because the
store no longer held the partition at all (stored epoch 0) treated it like
a hand-over: it fenced the partition and sat idle, without an error and
without ever stopping, so the whole group stalled silently.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from streamcp.admin import KafkaView
from streamcp.config import build_config
from streamcp.events import TopicPartition
from streamcp.redis_store import RedisCheckpointStore
from streamcp.services import KafkaService, RedisService
from tests.recorder import read_handled
from tests.service.harness import (
    ServiceProcess,
    checkpoints,
    produce,
    raw_config,
    wait_for,
    write_config,
)


def _kafka_offsets(raw: dict[str, object], topic: str) -> dict[int, int]:
    view = KafkaView(build_config(raw).kafka)
    try:
        parts = [TopicPartition(topic, p) for p in range(2)]
        return {tp.partition: o for tp, o in view.committed(parts).items()}
    finally:
        view.close()


def test_running_consumer_stops_with_store_lost_when_redis_restarts_empty(
    kafka: KafkaService,
    redis_factory: Callable[..., RedisService],
    topic_factory: Callable[..., str],
    key_prefix: str,
    tmp_path: Path,
) -> None:
    """A consumer that committed, then sees Redis come back without its data
    (restart without persistence) while it runs, stops with status 1 and a
    checkpoint.store_lost error at its next commit; it neither applies the
    start policy nor writes any checkpoint into the emptied store."""
    private = redis_factory(appendonly=False)
    topic = topic_factory(2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "handled.txt"
    raw = raw_config(
        kafka.bootstrap_servers,
        private.url,
        key_prefix,
        topic,
        group,
        commit={"every_events": 5, "every_seconds": 0.3},
        handler={"options": {"path": str(record)}},
        log={"level": "info", "format": "json"},
    )
    store = RedisCheckpointStore.from_url(private.url, key_prefix=key_prefix)
    process = ServiceProcess(write_config(tmp_path / "c.toml", raw), tmp_path / "log")
    try:
        produce(kafka.bootstrap_servers, topic, 2, 10)
        wait_for(
            lambda: checkpoints(store, group) == {0: 10, 1: 10},
            what="checkpoints at 10",
        )
        wait_for(
            lambda: _kafka_offsets(raw, topic) == {0: 10, 1: 10},
            what="the checkpoints mirrored to Kafka",
        )
        private.stop()
        private.start()
        lost_at = time.time()
        assert checkpoints(store, group) == {}
        produce(kafka.bootstrap_servers, topic, 2, 5, start=10)
        try:
            status = process.wait(30)
        except subprocess.TimeoutExpired:
            status = None
    finally:
        process.kill()
        store.close()
    assert status == 1, "the consumer kept running on a store that lost its data"
    assert process.saw("checkpoint.store_lost")
    assert "the checkpoint store no longer holds" in process.log_path.read_text()
    assert not [
        e
        for e in process.saw("partition.started")
        if datetime.fromisoformat(e["timestamp"]).timestamp() > lost_at
    ]
    fresh = RedisCheckpointStore.from_url(private.url, key_prefix=key_prefix)
    try:
        assert [e for e in fresh.history(group, 0) if e.kind == "commit"] == []
    finally:
        fresh.close()
    assert {r.offset for r in read_handled(record)} <= set(range(15))
