"""Outcomes of a redrive in Redis: stored before commits, once per record."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from streamcp.errors import StoreUnavailable
from streamcp.ranges import PartitionRange
from streamcp.redrive_ledger import RedriveLedger, Refused, StillFailing
from streamcp.runs import RunRecord
from streamcp.services import RedisService


def _run(progress: dict[int, int]) -> RunRecord:
    return RunRecord(
        id="20240101-000000-abcd",
        topic="orders.dlq",
        handler="fixed",
        kind="redrive",
        ranges=(PartitionRange(0, 10, 30), PartitionRange(1, 0, 5)),
        progress=progress,
        requested={"dead_letter_to": "orders.retry"},
    )


def _failing(partition: int, offset: int) -> StillFailing:
    return StillFailing(
        partition=partition,
        offset=offset,
        original_topic="orders",
        original_partition=2,
        original_offset=100 + offset,
        error_type="ValueError",
        error_message="bad",
        attempts=3,
        failed_at="2024-01-01T00:00:00.000+00:00",
    )


def _refused(partition: int, offset: int) -> Refused:
    return Refused(partition=partition, offset=offset, reason="no headers")


def test_summary_counts_only_records_below_the_committed_checkpoints(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """Flushed outcomes count once the run's checkpoint passed them:
    redriven records by bit, still-failing and refused ones listed in
    position order; outcomes above a checkpoint are not counted yet."""
    ledger = RedriveLedger(redis_client, _run({}), key_prefix=key_prefix)
    for offset in (10, 12, 13, 20, 25):
        ledger.note(0, offset, None)
    ledger.note(0, 14, _failing(0, 14))
    ledger.note(0, 11, _failing(0, 11))
    ledger.note(0, 15, _refused(0, 15))
    ledger.note(0, 26, _failing(0, 26))
    for offset in range(5):
        ledger.note(1, offset, None)
    ledger.flush()

    summary = ledger.summary(_run({0: 21, 1: 5}))
    assert summary.redriven == 4 + 5
    assert [(e.partition, e.offset) for e in summary.still_failing] == [
        (0, 11),
        (0, 14),
    ]
    assert summary.refused == (_refused(0, 15),)
    assert summary.total == 12 and summary.dead_letter_to == "orders.retry"
    done = ledger.summary(_run({0: 30, 1: 5}))
    assert (done.redriven, len(done.still_failing)) == (10, 3)
    assert ledger.summary(_run({})).total == 0


def test_a_record_handled_again_replaces_its_outcome_instead_of_adding_one(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """After a crash a record is handled again: its new outcome replaces
    the stored one, so each record counts exactly once."""
    first = RedriveLedger(redis_client, _run({}), key_prefix=key_prefix)
    first.note(0, 10, _failing(0, 10))
    first.note(0, 11, None)
    first.note(0, 12, _refused(0, 12))
    first.flush()
    again = RedriveLedger(redis_client, _run({}), key_prefix=key_prefix)
    again.note(0, 10, None)
    again.note(0, 11, _failing(0, 11))
    again.note(0, 12, _refused(0, 12))
    again.flush()
    again.flush()  # nothing noted since: a no-op

    summary = again.summary(_run({0: 13}))
    assert summary.redriven == 1
    assert [e.offset for e in summary.still_failing] == [11]
    assert [e.offset for e in summary.refused] == [12]
    assert summary.total == 3


def test_flush_while_redis_is_down_raises_and_keeps_the_outcomes(
    redis_factory: Callable[..., RedisService], key_prefix: str
) -> None:
    """A flush that Redis does not answer raises StoreUnavailable (so the
    commit waits) and loses nothing: the next flush stores it all."""
    service = redis_factory()
    ledger = RedriveLedger.from_url(
        service.url, _run({}), key_prefix=key_prefix, socket_timeout_s=0.5
    )
    ledger.note(0, 10, _failing(0, 10))
    ledger.note(0, 11, None)
    service.stop()
    with pytest.raises(StoreUnavailable):
        ledger.flush()
    service.start()
    ledger.flush()
    summary = ledger.summary(_run({0: 12}))
    assert (summary.redriven, len(summary.still_failing)) == (1, 1)
    ledger.close()


def test_keys_live_in_the_runs_own_namespace(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """The outcome keys carry the run's namespace as their hash tag, beside
    its checkpoints, and have no TTL."""
    ledger = RedriveLedger(redis_client, _run({}), key_prefix=key_prefix)
    ledger.note(0, 10, None)
    ledger.note(0, 11, _failing(0, 11))
    ledger.flush()
    base = f"{key_prefix}:v1:{{redrive:20240101-000000-abcd}}"
    assert ledger.redriven_key(0) == f"{base}:redriven:0"
    assert ledger.failing_key == f"{base}:failing"
    assert redis_client.getbit(f"{base}:redriven:0", 0) == 1
    assert redis_client.hexists(f"{base}:failing", "0:11")
    assert redis_client.ttl(f"{base}:failing") == -1
