"""Time ranges resolve per partition, by reading, never storing -1."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer

from streamcp.events import TopicPartition
from streamcp.ranges import BrokerView
from streamcp.services import produce_records
from tests.replay.helpers import ReplaySetup, run_id_of
from tests.replay.recorder import offsets_of, read_seen

BASE_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def iso(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat()


def produce_timed(setup: ReplaySetup) -> None:
    """Partition 0: ten events a second apart from BASE; partition 1: five
    events, all before BASE; partition 2: empty."""
    records = [(b"k", f"p0-{i}".encode(), BASE_MS + i * 1000, 0) for i in range(10)]
    records += [
        (b"k", f"p1-{i}".encode(), BASE_MS - 10_000 + i * 1000, 1) for i in range(5)
    ]
    produce_records(setup.bootstrap, setup.topic, records)


def test_time_range_resolves_each_partition_separately(setup: ReplaySetup) -> None:
    """From BASE+2.5 s to BASE+6 s: partition 0 replays offsets 3-5 (6 is at
    the end time, excluded); partition 1, whose events are all older than
    the start, and the empty partition 2 replay nothing; every stored
    offset is a real one (no -1)."""
    produce_timed(setup)
    result = setup.replay(
        "--from-time", iso(BASE_MS + 2500), "--to-time", iso(BASE_MS + 6000)
    )
    assert result.returncode == 0, result.stderr
    assert offsets_of(read_seen(setup.out)) == {0: [3, 4, 5]}
    shown = setup.show(run_id_of(result.stdout))
    ranges = {p["partition"]: (p["start"], p["end"]) for p in shown["partitions"]}
    assert ranges == {0: (3, 6), 1: (5, 5), 2: (0, 0)}
    assert shown["status"] == "completed"
    assert "no event at or after the start time" in shown["partitions"][1]["note"]
    values = [v for p in shown["partitions"] for v in (p["start"], p["end"])]
    assert all(v >= 0 for v in values)
    assert shown["requested"]["from_time"] == iso(BASE_MS + 2500)


def test_time_range_with_end_inclusive_includes_events_at_the_end_time(
    setup: ReplaySetup,
) -> None:
    """With --end-inclusive, an event stamped exactly at the end time is
    replayed too."""
    produce_timed(setup)
    result = setup.replay(
        "--partition",
        "0",
        "--from-time",
        iso(BASE_MS + 3000),
        "--to-time",
        iso(BASE_MS + 6000),
        "--end-inclusive",
    )
    assert result.returncode == 0, result.stderr
    assert offsets_of(read_seen(setup.out)) == {0: [3, 4, 5, 6]}


def test_start_time_after_every_event_replays_nothing_anywhere(
    setup: ReplaySetup,
) -> None:
    """A start time later than every event gives empty ranges at the high
    watermarks, and a completed run that handled nothing."""
    produce_timed(setup)
    result = setup.replay("--from-time", iso(BASE_MS + 3_600_000))
    assert result.returncode == 0, result.stderr
    assert read_seen(setup.out) == []
    shown = setup.show(run_id_of(result.stdout))
    ranges = {p["partition"]: (p["start"], p["end"]) for p in shown["partitions"]}
    assert ranges == {0: (10, 10), 1: (5, 5), 2: (0, 0)}
    assert shown["status"] == "completed"


@pytest.mark.parametrize(
    ("millis", "strictly_after", "expected"),
    [
        pytest.param(BASE_MS - 5000, False, 0, id="before-every-event"),
        pytest.param(BASE_MS + 3000, False, 3, id="exactly-at-an-event"),
        pytest.param(BASE_MS + 3001, False, 4, id="between-events"),
        pytest.param(BASE_MS + 3000, True, 4, id="strictly-after-an-event"),
        pytest.param(BASE_MS + 9500, False, None, id="after-every-event"),
    ],
)
def test_time_lookup_finds_the_first_event_at_or_after_the_time(
    setup: ReplaySetup, millis: int, strictly_after: bool, expected: int | None
) -> None:
    """The time lookup answers the first offset whose event is stamped at or
    after the time (after it, when strict), or None when no event is, even
    where the broker's own offsets_for_times answer is imprecise."""
    produce_timed(setup)
    consumer = Consumer(
        {
            "bootstrap.servers": setup.bootstrap,
            "group.id": f"lookup-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        found = BrokerView(consumer).first_at_or_after(
            TopicPartition(setup.topic, 0),
            millis,
            (0, 10),
            strictly_after=strictly_after,
        )
    finally:
        consumer.close()
    assert found == expected
