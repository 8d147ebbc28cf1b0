"""Several service processes in one consumer group."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from streamcp.events import TopicPartition
from streamcp.redis_store import RedisCheckpointStore
from streamcp.services import KafkaService, RedisService
from streamcp.store import Owner
from tests.recorder import Handled, read_handled
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


def _first_offsets_match_claims(
    rows: list[Handled], store: RedisCheckpointStore, group: str, topic: str
) -> None:
    """Each run of offsets a process handled for a partition starts at the
    checkpoint recorded in the claim that gave it the partition."""
    claimed: dict[tuple[int, int], list[int | None]] = {}
    for entry in store.history(group, 0):
        if entry.kind == "claim":
            pid = int(entry.owner.split(":")[1])
            key = (pid, entry.topic_partition.partition)
            claimed.setdefault(key, []).append(entry.offset)
    runs: dict[tuple[int, int], list[int]] = {}
    last: dict[tuple[int, int], int] = {}
    for row in rows:
        key = (row.pid, row.partition)
        if last.get(key) is None or row.offset != last[key] + 1:
            runs.setdefault(key, []).append(row.offset)
        last[key] = row.offset
    for key, starts in runs.items():
        allowed = {0 if c is None else c for c in claimed.get(key, [])}
        assert set(starts) <= allowed, (key, starts, allowed)


def test_two_processes_share_partitions_without_stale_positions(
    kafka: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    """A second process joins, then the first leaves: partitions move each time,
    no event is handled twice or lost, and each process starts every partition
    it gets at the checkpoint stored in Redis."""
    topic = topic_factory(4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "handled.txt"
    raw = raw_config(
        kafka.bootstrap_servers,
        redis_service.url,
        key_prefix,
        topic,
        group,
        commit={"every_events": 10, "every_seconds": 0.5},
        handler={"options": {"path": str(record), "delay_ms": 2}},
    )
    config_path = write_config(tmp_path / "c.toml", raw)
    store = RedisCheckpointStore.from_url(redis_service.url, key_prefix=key_prefix)
    first = ServiceProcess(config_path, tmp_path / "log1")
    second = None
    try:
        produce(kafka.bootstrap_servers, topic, 4, 25)
        wait_for(lambda: len(read_handled(record)) >= 40, what="first process started")
        second = ServiceProcess(config_path, tmp_path / "log2")
        wait_for(
            lambda: second.saw("partition.assigned"), what="second process assigned"
        )
        produce(kafka.bootstrap_servers, topic, 4, 25, start=25)
        wait_for(
            lambda: second.pid in {r.pid for r in read_handled(record)},
            what="second process got a partition",
        )
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0
        produce(kafka.bootstrap_servers, topic, 4, 25, start=50)
        wait_for(
            lambda: checkpoints(store, group) == {p: 75 for p in range(4)},
            timeout_s=40,
            what="all committed to the end",
        )
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()
    rows = read_handled(record)
    pairs = [(r.partition, r.offset) for r in rows]
    assert sorted(pairs) == [(p, o) for p in range(4) for o in range(75)]
    assert len({r.pid for r in rows}) == 2
    _first_offsets_match_claims(rows, store, group, topic)


def test_frozen_process_has_commits_refused_after_hand_over(
    kafka: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    """A process frozen with SIGSTOP past the session timeout loses its
    partitions; resumed, any commit it tries is refused as stale, and the
    history shows no accepted commit from it after the other process claimed
    them."""
    topic = topic_factory(2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "handled.txt"
    raw = raw_config(
        kafka.bootstrap_servers,
        redis_service.url,
        key_prefix,
        topic,
        group,
        commit={"every_events": 100_000, "every_seconds": 0.5},
        consumer={"batch_size": 5},
        handler={"options": {"path": str(record), "delay_ms": 100}},
    )
    zombie = ServiceProcess(write_config(tmp_path / "z.toml", raw), tmp_path / "zlog")
    raw_b = dict(
        raw,
        handler={"name": "tests.recorder:Recorder", "options": {"path": str(record)}},
    )
    other = None
    store = RedisCheckpointStore.from_url(redis_service.url, key_prefix=key_prefix)
    try:
        produce(kafka.bootstrap_servers, topic, 2, 200)
        wait_for(lambda: len(read_handled(record)) >= 10, what="zombie is working")
        other = ServiceProcess(
            write_config(tmp_path / "o.toml", raw_b), tmp_path / "olog"
        )
        wait_for(lambda: other.saw("service.started"), what="other started")
        wait_for(
            lambda: (
                other.pid in {r.pid for r in read_handled(record)}
                or len(read_handled(record)) >= 20
            ),
            what="rebalance settled",
        )
        zombie.signal(signal.SIGSTOP)
        frozen_at = time.time()
        wait_for(
            lambda: all(
                cp.owner.split(":")[1] == str(other.pid)
                for cp in store.read(group).values()
            ),
            timeout_s=30,
            what="other process owns every partition",
        )
        handed_over = time.time()
        assert handed_over - frozen_at < 30
        zombie.signal(signal.SIGCONT)
        wait_for(
            lambda: zombie.saw("checkpoint.refused") or zombie.saw("partition.lost"),
            timeout_s=20,
            what="zombie noticed",
        )
        time.sleep(2)
    finally:
        zombie.kill()
        if other is not None:
            other.kill()
    # Resumed, the zombie either tries to commit first and is refused, or
    # librdkafka tells it first that its partitions are lost and it commits
    # nothing for them; which comes first is a race inside the client.
    refused = zombie.saw("checkpoint.refused")
    lost = zombie.saw("partition.lost")
    assert refused or lost, "the resumed zombie noticed nothing"
    assert {r["reason"] for r in refused} <= {"stale_epoch", "not_owner"}
    history = store.history(group, 0)
    zombie_owner = f":{zombie.pid}:"
    last_claim_by_other = max(
        i
        for i, e in enumerate(history)
        if e.kind == "claim" and f":{other.pid}:" in e.owner
    )
    late = [
        e
        for e in history[last_claim_by_other:]
        if e.kind == "commit" and zombie_owner in e.owner
    ]
    assert late == []


def test_consumer_whose_partitions_were_claimed_elsewhere_has_commits_refused(
    kafka: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic_factory: Callable[..., str],
) -> None:
    """While it still believes it owns them (as a frozen process does when it
    resumes), a consumer whose partitions another consumer claimed has its
    next commit refused as stale, stops processing them, and no commit of
    its is accepted after the other's claim."""
    topic = topic_factory(2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    store = RedisCheckpointStore.from_url(redis_service.url, key_prefix=key_prefix)
    produce(kafka.bootstrap_servers, topic, 2, 5)
    seen: list[tuple[int, int]] = []
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
    parts = [TopicPartition(topic, p) for p in range(2)]
    with ServiceThread(config, lambda e: seen.append((e.partition, e.offset))) as one:
        wait_for(lambda: checkpoints(store, group) == {0: 5, 1: 5}, what="at 5")
        store.claim(group, parts, Owner("new-owner", "elsewhere", 1))
        produce(kafka.bootstrap_servers, topic, 2, 3, start=5)
        wait_for(lambda: len(seen) >= 11, what="it handled new events")
        time.sleep(1)
        me = one.service.owner.instance_id
        refusals = one.service.metrics.registry.get_sample_value(
            "streamcp_commit_refusals_total", {"topic": topic, "reason": "stale_epoch"}
        )
        assert refusals is not None and refusals >= 1
        handled_then = len(seen)
        time.sleep(1)
        assert len(seen) == handled_then, "it went on processing fenced partitions"
    history = store.history(group, 0)
    claim_at = max(i for i, e in enumerate(history) if e.owner == "new-owner")
    assert not [e for e in history[claim_at:] if e.kind == "commit" and e.owner == me]
    assert checkpoints(store, group) == {0: 5, 1: 5}
    assert all(cp.owner == "new-owner" for cp in store.read(group).values())
