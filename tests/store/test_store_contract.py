"""One contract, two checkpoint stores: Redis (the product, on one server, a
Cluster and behind Sentinel) and in-memory."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from streamcp.events import TopicPartition
from streamcp.redis_store import RedisCheckpointStore
from streamcp.store import (
    CheckpointStore,
    CommitRequest,
    InMemoryCheckpointStore,
    Owner,
)

A = TopicPartition("orders", 0)
B = TopicPartition("orders", 1)
NS = "group-a"


@pytest.fixture(params=["memory", "redis", "redis-cluster", "redis-sentinel"])
def store(request: pytest.FixtureRequest, key_prefix: str) -> Iterator[CheckpointStore]:
    if request.param == "memory":
        yield InMemoryCheckpointStore(history_max_entries=50)
        return
    if request.param in ("redis-cluster", "redis-sentinel"):
        # Through the redis+cluster:// or redis+sentinel:// URL, as the
        # service makes its store.
        topology = request.getfixturevalue(request.param.replace("-", "_"))
        on_topology = RedisCheckpointStore.from_url(
            topology.url, key_prefix=key_prefix, history_max_entries=50
        )
        yield on_topology
        on_topology.close()
        return
    redis_service = request.getfixturevalue("redis_service")
    client = redis.Redis.from_url(redis_service.url)
    yield RedisCheckpointStore(client, key_prefix=key_prefix, history_max_entries=50)
    client.close()


def owner(name: str) -> Owner:
    return Owner(instance_id=name, host="host-" + name, pid=100, member_id="m-" + name)


def test_first_claim_has_epoch_1_and_no_offset(store: CheckpointStore) -> None:
    """A partition never seen before is claimed at epoch 1 with no checkpoint."""
    claims = store.claim(NS, [A, B], owner("x"))
    assert claims[A].epoch == 1
    assert claims[A].offset is None
    assert claims[A].owner == "x"


def test_commit_then_read_gives_offset_and_metadata(store: CheckpointStore) -> None:
    """An accepted commit stores offset, committer and event count."""
    me = owner("x")
    epoch = store.claim(NS, [A], me)[A].epoch
    result = store.commit(NS, me, [CommitRequest(A, 42, epoch, events=42)])
    assert result.accepted == (A,)
    cp = store.read(NS)[A]
    assert (cp.offset, cp.epoch, cp.events) == (42, epoch, 42)
    assert (cp.committed_by_host, cp.committed_by_pid, cp.committed_by_member) == (
        "host-x",
        100,
        "m-x",
    )
    assert cp.committed_at is not None


def test_checkpoint_zero_is_stored_and_read_back_as_zero(
    store: CheckpointStore,
) -> None:
    """Offset 0 is a checkpoint, not 'no checkpoint'."""
    me = owner("x")
    epoch = store.claim(NS, [A], me)[A].epoch
    store.commit(NS, me, [CommitRequest(A, 0, epoch)])
    assert store.read(NS)[A].offset == 0
    assert store.claim(NS, [A], owner("y"))[A].offset == 0


def test_claim_bumps_epoch_and_fences_previous_owner(store: CheckpointStore) -> None:
    """After another consumer claims, the old owner's commit is refused as stale."""
    old, new = owner("old"), owner("new")
    old_epoch = store.claim(NS, [A], old)[A].epoch
    new_epoch = store.claim(NS, [A], new)[A].epoch
    assert new_epoch == old_epoch + 1
    result = store.commit(NS, old, [CommitRequest(A, 10, old_epoch)])
    assert result.accepted == ()
    (refusal,) = result.refused
    assert (refusal.reason, refusal.stored_epoch, refusal.stored_owner) == (
        "stale_epoch",
        new_epoch,
        "new",
    )
    assert store.read(NS)[A].offset is None


def test_commit_with_right_epoch_but_other_owner_is_refused(
    store: CheckpointStore,
) -> None:
    """The epoch alone is not enough: the owner must match too."""
    epoch = store.claim(NS, [A], owner("x"))[A].epoch
    result = store.commit(NS, owner("intruder"), [CommitRequest(A, 5, epoch)])
    assert result.refused[0].reason == "not_owner"


def test_offset_never_goes_backwards_through_commit(store: CheckpointStore) -> None:
    """A delayed older commit never lowers a checkpoint."""
    me = owner("x")
    epoch = store.claim(NS, [A], me)[A].epoch
    store.commit(NS, me, [CommitRequest(A, 50, epoch)])
    result = store.commit(NS, me, [CommitRequest(A, 40, epoch)])
    assert result.refused[0].reason == "backwards"
    assert store.read(NS)[A].offset == 50


def test_one_commit_mixes_accepted_and_refused_partitions(
    store: CheckpointStore,
) -> None:
    """Each partition of one commit is judged on its own."""
    me, other = owner("x"), owner("y")
    claims = store.claim(NS, [A, B], me)
    store.claim(NS, [B], other)
    result = store.commit(
        NS,
        me,
        [CommitRequest(A, 3, claims[A].epoch), CommitRequest(B, 3, claims[B].epoch)],
    )
    assert result.accepted == (A,)
    assert [r.topic_partition for r in result.refused] == [B]


def test_repeated_commit_of_same_offset_is_accepted_once_in_history(
    store: CheckpointStore,
) -> None:
    """Retrying a commit that already applied is accepted without a second entry."""
    me = owner("x")
    epoch = store.claim(NS, [A], me)[A].epoch
    store.commit(NS, me, [CommitRequest(A, 7, epoch)])
    again = store.commit(NS, me, [CommitRequest(A, 7, epoch)])
    assert again.accepted == (A,)
    commits = [e for e in store.history(NS) if e.kind == "commit"]
    assert [e.offset for e in commits] == [7]


def test_history_records_claims_and_commits_in_order(store: CheckpointStore) -> None:
    """The history holds each claim and accepted commit with its previous offset."""
    me = owner("x")
    epoch = store.claim(NS, [A], me)[A].epoch
    store.commit(NS, me, [CommitRequest(A, 5, epoch)])
    store.commit(NS, me, [CommitRequest(A, 9, epoch)])
    store.commit(NS, owner("z"), [CommitRequest(A, 99, epoch)])  # refused
    entries = [(e.kind, e.offset, e.previous_offset) for e in store.history(NS)]
    assert entries == [("claim", None, None), ("commit", 5, None), ("commit", 9, 5)]


def test_history_is_capped(store: CheckpointStore) -> None:
    """The history keeps about its configured number of entries, not all."""
    me = owner("x")
    epoch = store.claim(NS, [A], me)[A].epoch
    for offset in range(1, 400):
        store.commit(NS, me, [CommitRequest(A, offset, epoch)])
    entries = store.history(NS, count=0)
    assert 50 <= len(entries) < 200  # Redis trims approximately (MAXLEN ~)
    assert entries[-1].offset == 399


def test_release_clears_owner_only_when_still_owner(store: CheckpointStore) -> None:
    """A release from a fenced consumer does not clear the new owner."""
    old, new = owner("old"), owner("new")
    old_epoch = store.claim(NS, [A], old)[A].epoch
    store.claim(NS, [A], new)
    store.release(NS, old, {A: old_epoch})
    assert store.read(NS)[A].owner == "new"
    new_epoch = store.read(NS)[A].epoch
    store.release(NS, new, {A: new_epoch})
    assert store.read(NS)[A].owner == ""


def test_operator_set_moves_backwards_and_fences_owner(store: CheckpointStore) -> None:
    """Only an operator change lowers a checkpoint; it bumps the epoch and marks it."""
    me = owner("x")
    epoch = store.claim(NS, [A], me)[A].epoch
    store.commit(NS, me, [CommitRequest(A, 100, epoch)])
    changed = store.set_offset(NS, A, 10, by="operator@laptop")
    assert (changed.offset, changed.epoch, changed.operator_change) == (
        10,
        epoch + 1,
        True,
    )
    assert changed.owner == "x"
    refused = store.commit(NS, me, [CommitRequest(A, 101, epoch)])
    assert refused.refused[0].reason == "stale_epoch"
    assert store.read(NS)[A].offset == 10
    last = store.history(NS)[-1]
    assert (last.kind, last.owner, last.previous_offset) == (
        "operator",
        "operator@laptop",
        100,
    )


def test_namespaces_are_independent(store: CheckpointStore) -> None:
    """A replay namespace and a group never see each other's checkpoints."""
    me = owner("x")
    epoch = store.claim("live", [A], me)[A].epoch
    store.commit("live", me, [CommitRequest(A, 8, epoch)])
    assert store.read("replay:run-1") == {}
    assert store.history("replay:run-1") == []


def test_concurrent_commits_never_lower_the_checkpoint(store: CheckpointStore) -> None:
    """Racing commits of increasing offsets end at the highest one."""
    me = owner("x")
    epoch = store.claim(NS, [A], me)[A].epoch

    def commit_range(start: int) -> None:
        for offset in range(start, 200, 4):
            store.commit(NS, me, [CommitRequest(A, offset, epoch)])

    threads = [threading.Thread(target=commit_range, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.read(NS)[A].offset == 199
    offsets = [e.offset for e in store.history(NS, count=0) if e.kind == "commit"]
    assert offsets == sorted(offsets)
