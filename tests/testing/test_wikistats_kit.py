"""The example plugin wikistats, tested with the kit: the same statistics as
compute_stats of the data file and as the real service, and conformance."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable

import redis

from streamcp.config import build_config
from streamcp.events import Event
from streamcp.examples.wikistats import (
    DATA_FILE,
    WikiStats,
    compute_stats,
    load_records,
    read_applied,
    read_stats,
)
from streamcp.redis_store import RedisCheckpointStore
from streamcp.router import HandlerRouter
from streamcp.service import Service
from streamcp.services import KafkaService, RedisService, produce_records
from streamcp.testing import (
    ExpectedError,
    Harness,
    check_conformance,
    events_from_bytes,
    events_from_ndjson,
)

PARTITIONS = 3


def sample_events(topic: str = "wiki") -> list[Event]:
    """The data file as a 3-partition topic keyed by page title."""
    return events_from_ndjson(
        DATA_FILE, topic=topic, partitions=PARTITIONS, key="title"
    )


def run_with_kit(redis_url: str, key_prefix: str, events: list[Event]) -> Harness:
    harness = Harness(
        "wikistats",
        options={"redis_url": redis_url, "key_prefix": key_prefix},
        topic=events[0].topic,
        partitions=PARTITIONS,
        batch_size=7,
        commit_every_events=10,
    )
    harness.feed(events)
    harness.close()
    return harness


def test_wikistats_in_the_kit_gives_compute_stats_of_the_data_file(
    redis_service: RedisService, redis_client: redis.Redis, key_prefix: str
) -> None:
    """All 100 sample events succeed through the kit (by entry point name,
    in polls of 7), the statistics in Redis equal compute_stats of the file,
    and each partition's checkpoint is its event count."""
    events = sample_events()
    harness = run_with_kit(redis_service.url, key_prefix, events)

    assert {o.status for o in harness.outcomes} == {"succeeded"}
    assert read_stats(redis_client, key_prefix) == compute_stats(load_records())
    per_partition = Counter(e.topic_partition for e in events)
    assert harness.checkpoints() == dict(per_partition)
    assert read_applied(redis_client, key_prefix) == dict(per_partition)


def test_the_kit_and_the_real_service_agree_on_statistics_and_checkpoints(
    kafka: KafkaService,
    redis_service: RedisService,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
) -> None:
    """The same log consumed by the real service (through the broker and the
    Redis checkpoint store) and fed through the kit gives, both, the
    statistics of compute_stats and the same checkpoint per partition."""
    topic = topic_factory(PARTITIONS)
    events = sample_events(topic)
    produce_records(
        kafka.bootstrap_servers,
        topic,
        [(e.key, e.value, None, e.partition) for e in events],
    )
    service_prefix, kit_prefix = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(2))
    config = build_config(
        {
            "kafka": {
                "bootstrap_servers": kafka.bootstrap_servers,
                "topics": [topic],
                "group_id": f"g-{service_prefix}",
                "session_timeout_ms": 6000,
            },
            "redis": {"url": redis_service.url, "key_prefix": service_prefix},
            "commit": {"every_events": 10, "every_seconds": 1},
            "metrics": {"enabled": False},
            "handler": {
                "name": "wikistats",
                "options": {
                    "redis_url": redis_service.url,
                    "key_prefix": service_prefix,
                },
            },
        }
    )
    store = RedisCheckpointStore.from_url(redis_service.url, key_prefix=service_prefix)
    service = Service(
        config,
        store=store,
        router=HandlerRouter.from_config(config),
        stop_when_caught_up=True,
    )
    try:
        assert service.run() == 0, service.failure
        service_checkpoints = {
            tp: cp.offset for tp, cp in store.read(config.kafka.group_id).items()
        }
    finally:
        store.close()

    harness = run_with_kit(redis_service.url, kit_prefix, events)

    expected = compute_stats(load_records())
    assert read_stats(redis_client, service_prefix) == expected
    assert read_stats(redis_client, kit_prefix) == expected
    assert harness.checkpoints() == service_checkpoints


def test_wikistats_passes_the_conformance_checks(
    redis_service: RedisService, redis_client: redis.Redis
) -> None:
    """Redelivery, replay (declared overwrite: its applied offsets make a
    replay count each event once), a malformed event (ValueError, chained to
    BatchFailed), rebalancing and close, with batches of 7."""

    def fresh_prefix() -> str:
        return f"t-{uuid.uuid4().hex[:8]}"

    def make(prefix: str) -> WikiStats:
        return WikiStats(
            WikiStats.Options(redis_url=redis_service.url, key_prefix=prefix)
        )

    bad = events_from_bytes([b"{not json"], topic="wiki")[0]
    report = check_conformance(
        make,
        sample_events(),
        state=fresh_prefix,
        snapshot=lambda prefix: read_stats(redis_client, prefix),
        replay="overwrite",
        errors=[ExpectedError(bad, raises=ValueError)],
        batch_size=7,
    )

    assert report.passed
