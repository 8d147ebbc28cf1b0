"""Eager and cooperative-sticky assignors, and read_committed isolation."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import confluent_kafka
import pytest

from streamcp.events import Event
from streamcp.redis_store import RedisCheckpointStore
from streamcp.services import KafkaService, RedisService
from tests.service.harness import (
    ServiceThread,
    checkpoints,
    config_from,
    produce,
    raw_config,
    wait_for,
)


class Collect:
    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.seen.append((event.partition, event.offset))


def _setup(
    broker: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic: str,
    **sections: Any,
) -> tuple[Any, RedisCheckpointStore, str]:
    group = f"g-{uuid.uuid4().hex[:8]}"
    raw = raw_config(
        broker.bootstrap_servers,
        redis_service.url,
        key_prefix,
        topic,
        group,
        **sections,
    )
    store = RedisCheckpointStore.from_url(redis_service.url, key_prefix=key_prefix)
    return config_from(raw), store, group


@pytest.mark.parametrize("assignor", ["range", "roundrobin", "cooperative-sticky"])
def test_single_consumer_with_each_assignor_commits_every_partition(
    kafka: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic_factory: Callable[..., str],
    assignor: str,
) -> None:
    """One consumer with the given assignor handles every event and stops with
    each checkpoint at the partition's end."""
    topic = topic_factory(3)
    produce(kafka.bootstrap_servers, topic, 3, 5)
    config, store, group = _setup(
        kafka, redis_service, key_prefix, topic, kafka={"assignor": assignor}
    )
    handler = Collect()
    with ServiceThread(config, handler, stop_when_caught_up=True) as service:
        assert service.join(60) == 0
    assert sorted(handler.seen) == [(p, o) for p in range(3) for o in range(5)]
    assert checkpoints(store, group) == {0: 5, 1: 5, 2: 5}


@pytest.mark.apache_kafka
def test_cooperative_hand_over_moves_partitions_without_duplicates(
    kafka: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic_factory: Callable[..., str],
) -> None:
    """With cooperative-sticky, a joining consumer receives partitions revoked
    incrementally from the first; each is committed on revocation and handled
    once."""
    topic = topic_factory(4)
    produce(kafka.bootstrap_servers, topic, 4, 10)
    sections = {
        "kafka": {"assignor": "cooperative-sticky"},
        "commit": {"every_events": 100_000, "every_seconds": 3600},
    }
    config, store, group = _setup(kafka, redis_service, key_prefix, topic, **sections)
    first, second = Collect(), Collect()
    with ServiceThread(config, first):
        wait_for(lambda: len(first.seen) == 40, what="first consumer handled all")
        with ServiceThread(config, second):
            wait_for(
                lambda: len({cp.owner for cp in store.read(group).values()}) == 2,
                timeout_s=60,
                what="partitions shared by both consumers",
            )
            produce(kafka.bootstrap_servers, topic, 4, 5, start=10)
            wait_for(
                lambda: len(first.seen) + len(second.seen) == 60, what="all handled"
            )
    handled = first.seen + second.seen
    assert len(handled) == len(set(handled)) == 60
    assert second.seen


@pytest.mark.apache_kafka
def test_read_committed_never_delivers_aborted_records(
    kafka: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic_factory: Callable[..., str],
) -> None:
    """With the default isolation level, records of an aborted transaction are
    not handed to the handler; committed ones are, and the checkpoint passes
    the transaction markers."""
    topic = topic_factory(1)
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "transactional.id": f"tx-{uuid.uuid4().hex}",
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"aborted", partition=0)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"committed", partition=0)
    producer.commit_transaction(30)
    config, store, group = _setup(kafka, redis_service, key_prefix, topic)
    values: list[bytes | None] = []
    with ServiceThread(config, lambda event: values.append(event.value)):
        wait_for(lambda: values == [b"committed"], what="the committed record")
        wait_for(
            lambda: (checkpoints(store, group).get(0) or 0) >= 3,
            what="checkpoint past the committed record",
        )
    assert values == [b"committed"]
