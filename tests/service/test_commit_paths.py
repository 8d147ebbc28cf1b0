"""Checkpoints after each commit path, against the real broker and Redis."""

from __future__ import annotations

import signal
import threading
from typing import Any

from streamcp.events import Event
from streamcp.redis_store import RedisCheckpointStore
from streamcp.store import Owner
from tests.recorder import offsets_by_partition, read_handled
from tests.service.conftest import raw_for
from tests.service.harness import (
    ServiceProcess,
    ServiceThread,
    checkpoints,
    config_from,
    produce,
    tp,
    wait_for,
    write_config,
)

_raw = raw_for


class Collect:
    """An in-process handler that remembers (partition, offset) it handled."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.seen.append((event.partition, event.offset))


def test_periodic_commit_every_n_events_is_last_succeeded_plus_one(
    setup: dict[str, Any],
) -> None:
    """With N=5 and a long T, the running service's checkpoints equal the last
    handled offset plus one once all 60 events are handled (60 is a multiple of 5)."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 20)
    config = config_from(_raw(setup, commit={"every_events": 5, "every_seconds": 3600}))
    handler = Collect()
    with ServiceThread(config, handler):
        wait_for(lambda: len(handler.seen) == 60, what="60 events handled")
        wait_for(
            lambda: (
                checkpoints(setup["store"], setup["group"]) == {0: 20, 1: 20, 2: 20}
            ),
            timeout_s=10,
            what="checkpoints at 20 while running (T is an hour)",
        )


def test_idle_partition_is_committed_within_t_without_new_events(
    setup: dict[str, Any],
) -> None:
    """With N off and T=1 s, events handled then idle are committed within T."""
    config = config_from(_raw(setup, commit={"every_events": 0, "every_seconds": 1.0}))
    handler = Collect()
    with ServiceThread(config, handler):
        wait_for(lambda: len(setup["store"].read(setup["group"])) == 3, what="claims")
        produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 4)
        wait_for(lambda: len(handler.seen) == 12, what="12 events handled")
        wait_for(
            lambda: checkpoints(setup["store"], setup["group"]) == {0: 4, 1: 4, 2: 4},
            timeout_s=2.5,
            what="idle commit within T",
        )


def test_sigterm_commits_last_succeeded_plus_one_and_exits_0(
    setup: dict[str, Any],
) -> None:
    """A real process with no periodic commit due commits on SIGTERM, exits 0,
    and its checkpoints equal each partition's last handled offset plus one."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 10)
    record = setup["tmp"] / "handled.txt"
    raw = _raw(
        setup,
        commit={"every_events": 100_000, "every_seconds": 3600},
        handler={"options": {"path": str(record)}},
    )
    proc = ServiceProcess(
        write_config(setup["tmp"] / "c.toml", raw), setup["tmp"] / "log"
    )
    try:
        wait_for(lambda: len(read_handled(record)) == 30, what="30 events handled")
        assert checkpoints(setup["store"], setup["group"]) == {
            0: None,
            1: None,
            2: None,
        }
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    last = {p: max(o) for p, o in offsets_by_partition(read_handled(record)).items()}
    assert checkpoints(setup["store"], setup["group"]) == {p: last[p] + 1 for p in last}


def test_revocation_commits_before_the_partition_moves(setup: dict[str, Any]) -> None:
    """When a second consumer joins, the first commits what it handled on
    revocation: checkpoints reach last-handled+1 with no periodic commit due,
    and the newcomer starts exactly there (no event handled twice)."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 10)
    never = {"every_events": 100_000, "every_seconds": 3600}
    first, second = Collect(), Collect()
    with ServiceThread(config_from(_raw(setup, commit=never)), first) as one:
        wait_for(lambda: len(first.seen) == 30, what="first consumer handled 30")
        assert all(
            v is None for v in checkpoints(setup["store"], setup["group"]).values()
        )
        with ServiceThread(config_from(_raw(setup, commit=never)), second) as two:
            wait_for(
                lambda: (
                    checkpoints(setup["store"], setup["group"]) == {0: 10, 1: 10, 2: 10}
                ),
                what="revocation commit",
            )
            produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 5, start=10)
            wait_for(
                lambda: len(first.seen) + len(second.seen) == 45, what="45 handled"
            )
            assert second.seen, "the newcomer got no partition"
            owners = {cp.owner for cp in setup["store"].read(setup["group"]).values()}
            assert owners == {
                one.service.owner.instance_id,
                two.service.owner.instance_id,
            }
    handled = first.seen + second.seen
    assert len(handled) == len(set(handled)) == 45


def test_stored_checkpoint_zero_is_honoured_not_taken_for_none(
    setup: dict[str, Any],
) -> None:
    """With start policy 'latest', a stored checkpoint of 0 still starts at 0."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 5)
    store: RedisCheckpointStore = setup["store"]
    for p in range(3):
        store.set_offset(setup["group"], tp(setup["topic"], p), 0, by="test")
    handler = Collect()
    config = config_from(_raw(setup, consumer={"start_policy": "latest"}))
    with ServiceThread(config, handler, stop_when_caught_up=True) as service:
        assert service.join(60) == 0
    assert sorted(handler.seen) == [(p, o) for p in range(3) for o in range(5)]


def test_claim_records_this_consumer_as_owner_with_a_new_epoch(
    setup: dict[str, Any],
) -> None:
    """Assignment bumps each partition's epoch and records the owner."""
    store: RedisCheckpointStore = setup["store"]
    other = Owner("someone-before", "h", 1)
    store.claim(setup["group"], [tp(setup["topic"], p) for p in range(3)], other)
    config = config_from(_raw(setup))
    with ServiceThread(config, Collect()) as service:
        wait_for(
            lambda: (
                {cp.owner for cp in store.read(setup["group"]).values()}
                == {service.service.owner.instance_id}
            ),
            what="claimed",
        )
        assert {cp.epoch for cp in store.read(setup["group"]).values()} == {2}
