"""A replay beside the live service on the same topic and configuration."""

from __future__ import annotations

import os
import threading

from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KafkaPartition

from streamcp.events import Event
from streamcp.redis_store import RedisCheckpointStore
from streamcp.services import produce_records
from tests.replay.helpers import ReplayProcess, ReplaySetup, produce_per_partition
from tests.replay.recorder import offsets_of, read_seen
from tests.service.harness import ServiceThread, checkpoints, config_from, wait_for


class Collect:
    """The live service's handler: counts what it handled, per partition."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, str | None]] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.seen.append((event.partition, event.offset, event.run_id))


def keep_producing(
    setup: ReplaySetup, stop: threading.Event, produced: list[int]
) -> None:
    """One event per partition every 50 ms until told to stop."""
    while not stop.is_set():
        produce_records(
            setup.bootstrap, setup.topic, [(b"new", b"new", None, p) for p in range(3)]
        )
        produced[0] += 1
        stop.wait(0.05)


def test_live_checkpoints_move_only_through_the_live_service_during_a_replay(
    setup: ReplaySetup,
) -> None:
    """While the live service consumes the topic and new events keep
    arriving, a replay of offsets 0-29 through the same configuration
    completes; the live group's history holds only the service's own
    claims and commits (no entry from the replay's process), its
    checkpoints end at the high watermarks, the replay's consumer group
    committed nothing to Kafka, and the live handler saw no replayed event."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 30)
    config_path = setup.config(handler_options={"delay_ms": 5})
    live_handler = Collect()
    store = RedisCheckpointStore.from_url(setup.redis.url, key_prefix=setup.prefix)
    stop = threading.Event()
    produced = [0]
    producer = threading.Thread(target=keep_producing, args=(setup, stop, produced))
    with ServiceThread(config_from(setup.raw()), live_handler) as live:
        wait_for(
            lambda: checkpoints(store, setup.group) == {0: 30, 1: 30, 2: 30},
            30,
            "the live service caught up",
        )
        producer.start()
        replay = ReplayProcess(
            setup,
            "--topic",
            setup.topic,
            "--to",
            "30",
            "--no-progress",
            config=config_path,
        )
        run_id = replay.run_id()
        try:
            assert replay.wait(90) == 0, replay.stderr
        finally:
            stop.set()
            producer.join(30)
        total = 30 + produced[0]
        caught_up = {p: total for p in range(3)}
        wait_for(
            lambda: checkpoints(store, setup.group) == caught_up,
            30,
            "the live service caught up with the new events",
        )
        live_owner = live.service.owner.instance_id

    replay_pid = setup.show(run_id)["started_by"]["pid"]
    history = store.history(setup.group, count=0)
    assert history
    assert {entry.owner for entry in history if entry.kind != "release"} == {live_owner}
    assert all(f":{replay_pid}:" not in entry.owner for entry in history)
    assert {cp.committed_by_pid for cp in store.read(setup.group).values()} == {
        os.getpid()
    }
    replay_history = store.history(f"replay:{run_id}", count=0)
    assert replay_history
    assert all(f":{replay_pid}:" in entry.owner for entry in replay_history)
    store.close()

    assert offsets_of(read_seen(setup.out)) == {p: list(range(30)) for p in range(3)}
    assert {run for _, _, run in live_handler.seen} == {None}
    assert all(
        n >= total
        for n in [sum(1 for p, _, _ in live_handler.seen if p == q) for q in range(3)]
    )
    assert_no_kafka_offsets(setup, f"streamcp-replay-{run_id}")


def assert_no_kafka_offsets(setup: ReplaySetup, group: str) -> None:
    probe = Consumer(
        {
            "bootstrap.servers": setup.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
        }
    )
    try:
        found = probe.committed(
            [KafkaPartition(setup.topic, p) for p in range(3)], timeout=10
        )
    finally:
        probe.close()
    assert [part.offset for part in found] == [-1001] * 3, (
        f"group {group!r} has Kafka offsets: {found}"
    )


def test_live_group_id_in_the_config_is_not_used_by_a_replay(
    setup: ReplaySetup,
) -> None:
    """A replay through a configuration that names a live group leaves that
    group without any checkpoint or history in Redis."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 5)
    result = setup.replay()
    assert result.returncode == 0, result.stderr
    store = RedisCheckpointStore.from_url(setup.redis.url, key_prefix=setup.prefix)
    try:
        assert store.read(setup.group) == {}
        assert store.history(setup.group, count=0) == []
    finally:
        store.close()
    assert_no_kafka_offsets(setup, setup.group)
