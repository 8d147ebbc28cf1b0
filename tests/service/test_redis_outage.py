"""Redis going away: nothing lost, nothing committed wrongly."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from streamcp.events import Event, TopicPartition
from streamcp.redis_store import RedisCheckpointStore
from streamcp.services import KafkaService, RedisService
from streamcp.store import CommitRequest, Owner
from tests.recorder import read_handled
from tests.service.harness import (
    ServiceProcess,
    ServiceThread,
    checkpoints,
    config_from,
    produce,
    raw_config,
    wait_for,
    write_config,
)


def _assert_history_never_decreases(store: RedisCheckpointStore, group: str) -> None:
    last: dict[TopicPartition, int] = {}
    for entry in store.history(group, 0):
        if entry.kind != "commit" or entry.offset is None:
            continue
        previous = last.get(entry.topic_partition, -1)
        assert entry.offset >= previous, entry
        last[entry.topic_partition] = entry.offset


def test_redis_stopped_during_run_loses_nothing_and_completes_after_return(
    kafka: KafkaService,
    redis_factory: Callable[..., RedisService],
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    """A real service keeps consuming while Redis is stopped for a few seconds;
    after Redis returns every event is handled, every final checkpoint is the
    partition's end, and no committed checkpoint ever passed an unhandled event."""
    redis = redis_factory(appendonly=True)
    topic = topic_factory(3)
    group = f"g-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "handled.txt"
    raw = raw_config(
        kafka.bootstrap_servers,
        redis.url,
        "p",
        topic,
        group,
        commit={"every_events": 5, "every_seconds": 0.2},
        consumer={"max_in_flight_events": 40},
        handler={"options": {"path": str(record)}},
    )
    proc = ServiceProcess(write_config(tmp_path / "c.toml", raw), tmp_path / "log")
    store = RedisCheckpointStore.from_url(redis.url, key_prefix="p")
    try:
        produce(kafka.bootstrap_servers, topic, 3, 10)
        wait_for(lambda: len(read_handled(record)) == 30, what="first 30 handled")
        redis.stop()
        produce(kafka.bootstrap_servers, topic, 3, 40, start=10)
        time.sleep(3)
        during = len(read_handled(record))
        # The in-flight bound (40 events delivered and not committed) holds:
        # the consumer pauses instead of taking all 120 new events.
        assert 30 < during <= 30 + 40 + 1
        redis.start()
        wait_for(
            lambda: checkpoints(store, group) == {0: 50, 1: 50, 2: 50},
            timeout_s=30,
            what="checkpoints at the ends after Redis returned",
        )
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    handled = {(r.partition, r.offset) for r in read_handled(record)}
    assert handled == {(p, o) for p in range(3) for o in range(50)}
    _assert_history_never_decreases(store, group)
    assert proc.saw("checkpoint.commit_failed"), "commits should have failed while down"


def test_redis_unreachable_at_assignment_waits_never_uses_start_policy(
    kafka: KafkaService,
    redis_factory: Callable[..., RedisService],
    topic_factory: Callable[..., str],
) -> None:
    """With a stored checkpoint of 5 and Redis down at assignment, no event is
    handled (the start policy 'earliest' is not applied); once Redis answers,
    each partition starts at its checkpoint."""
    redis = redis_factory(appendonly=True)
    topic = topic_factory(2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    store = RedisCheckpointStore.from_url(redis.url, key_prefix="p")
    someone = Owner("earlier-run", "h", 1)
    claims = store.claim(group, [TopicPartition(topic, p) for p in range(2)], someone)
    store.commit(
        group, someone, [CommitRequest(tp, 5, c.epoch) for tp, c in claims.items()]
    )
    produce(kafka.bootstrap_servers, topic, 2, 8)
    redis.stop()

    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def handler(event: Event) -> None:
        with lock:
            seen.append((event.partition, event.offset))

    config = config_from(
        raw_config(
            kafka.bootstrap_servers,
            redis.url,
            "p",
            topic,
            group,
            consumer={"start_policy": "earliest"},
        )
    )
    with ServiceThread(config, handler) as service:
        time.sleep(6)  # the join completes after about 3 s; the claim fails
        assert seen == []
        redis.start()
        wait_for(lambda: len(seen) == 6, timeout_s=20, what="events from offset 5 on")
        assert sorted(seen) == [(p, o) for p in range(2) for o in range(5, 8)]
        assert service.service.owner.instance_id in {
            cp.owner for cp in store.read(group).values()
        }


def test_epoch_going_back_in_redis_is_reclaimed_and_progress_committed(
    kafka: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic_factory: Callable[..., str],
) -> None:
    """When Redis loses the latest writes (as after a failover), the stored
    epoch is older than the consumer's own claim; the consumer claims again
    and commits its own progress instead of giving the partition up."""
    topic = topic_factory(1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    store = RedisCheckpointStore.from_url(redis_service.url, key_prefix=key_prefix)
    produce(kafka.bootstrap_servers, topic, 1, 5)
    store.claim(group, [TopicPartition(topic, 0)], Owner("earlier", "h", 1))
    seen: list[int] = []
    config = config_from(
        raw_config(
            kafka.bootstrap_servers,
            redis_service.url,
            key_prefix,
            topic,
            group,
            commit={"every_events": 1, "every_seconds": 0.2},
        )
    )
    with ServiceThread(config, lambda event: seen.append(event.offset)) as service:
        wait_for(lambda: checkpoints(store, group) == {0: 5}, what="checkpoint at 5")
        key = store.keys(group).checkpoint(TopicPartition(topic, 0))
        client = store._client
        epoch = int(client.hget(key, "epoch"))
        # Roll the hash back to an earlier claim of this same consumer, as a
        # failover to a replica that lacked the latest claim would.
        me = service.service.owner.instance_id
        client.hset(key, mapping={"epoch": epoch - 1, "owner": me, "offset": 2})
        produce(kafka.bootstrap_servers, topic, 1, 3, start=5)
        wait_for(lambda: checkpoints(store, group) == {0: 8}, what="checkpoint at 8")
    assert seen == list(range(8))
    stored = store.read(group)[TopicPartition(topic, 0)]
    assert stored.epoch == epoch  # claimed again: the rolled-back epoch plus one


def test_epoch_going_back_under_another_owner_fences_instead_of_reclaiming(
    kafka: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic_factory: Callable[..., str],
) -> None:
    """When the stored epoch is lower but another consumer is the stored owner
    (it may have claimed the partition in an emptied Redis while this one was
    away), this consumer does not take the partition back: it stops
    processing it, and the other owner's record stays as it is."""
    topic = topic_factory(1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    store = RedisCheckpointStore.from_url(redis_service.url, key_prefix=key_prefix)
    produce(kafka.bootstrap_servers, topic, 1, 5)
    store.claim(group, [TopicPartition(topic, 0)], Owner("earlier", "h", 1))
    seen: list[int] = []
    config = config_from(
        raw_config(
            kafka.bootstrap_servers,
            redis_service.url,
            key_prefix,
            topic,
            group,
            commit={"every_events": 1, "every_seconds": 0.2},
        )
    )
    with ServiceThread(config, lambda event: seen.append(event.offset)):
        wait_for(lambda: checkpoints(store, group) == {0: 5}, what="checkpoint at 5")
        key = store.keys(group).checkpoint(TopicPartition(topic, 0))
        epoch = int(store._client.hget(key, "epoch"))
        store._client.hset(key, mapping={"epoch": epoch - 1, "owner": "other-owner"})
        produce(kafka.bootstrap_servers, topic, 1, 3, start=5)
        time.sleep(2)
        stored = store.read(group)[TopicPartition(topic, 0)]
        assert (stored.epoch, stored.owner, stored.offset) == (
            epoch - 1,
            "other-owner",
            5,
        )
