"""Runs carry their kind: replay (also when recorded without one) or redrive."""

from __future__ import annotations

import redis

from streamcp.ranges import PartitionRange
from streamcp.runs import RunStore
from streamcp.store import Owner


def test_a_redrive_run_is_recorded_with_its_kind_and_its_own_namespace(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """A run created as a redrive reads back as one, in JSON too, and keeps
    its checkpoints in the namespace redrive:<id>."""
    store = RunStore(redis_client, key_prefix=key_prefix)
    record = store.create(
        "20240101-000000-abcd",
        topic="orders.dlq",
        handler="fixed",
        ranges=[PartitionRange(0, 0, 5)],
        requested={},
        owner=Owner.for_this_process(),
        kind="redrive",
    )
    assert record.kind == "redrive" and record.to_json()["kind"] == "redrive"
    assert record.namespace == "redrive:20240101-000000-abcd"


def test_a_run_recorded_without_a_kind_is_a_replay(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """Runs recorded before runs had a kind read back as replays, with
    their checkpoints where they were (replay:<id>)."""
    store = RunStore(redis_client, key_prefix=key_prefix)
    created = store.create(
        "20240101-000000-beef",
        topic="orders",
        handler="h",
        ranges=[PartitionRange(0, 0, 5)],
        requested={},
        owner=Owner.for_this_process(),
    )
    redis_client.hdel(store.key(created.id), "kind")
    record = store.get(created.id)
    assert record is not None and record.kind == "replay"
    assert record.namespace == "replay:20240101-000000-beef"
