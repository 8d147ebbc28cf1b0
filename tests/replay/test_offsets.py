"""Offset ranges against the real broker: exact events, ends, gaps."""

from __future__ import annotations

import time

from confluent_kafka import Producer

from streamcp.ranges import PartitionRange
from streamcp.runs import RunStore, new_run_id
from streamcp.store import Owner
from tests.replay.helpers import (
    RECORDER,
    ReplaySetup,
    produce_per_partition,
    produce_transaction,
    run_id_of,
)
from tests.replay.recorder import offsets_of, read_seen


def test_exclusive_end_replays_start_up_to_but_not_including_end(
    setup: ReplaySetup,
) -> None:
    """--from 2 --to 6 replays offsets 2, 3, 4 and 5 of every partition, once
    each, and the run completes with each checkpoint at the end offset."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 10)
    result = setup.replay("--from", "2", "--to", "6")
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result.stdout)
    assert offsets_of(read_seen(setup.out)) == {p: [2, 3, 4, 5] for p in range(3)}
    shown = setup.show(run_id)
    assert shown["status"] == "completed"
    assert shown["events_handled"] == 12
    assert [(p["start"], p["end"], p["checkpoint"]) for p in shown["partitions"]] == [
        (2, 6, 6)
    ] * 3


def test_end_inclusive_also_replays_the_end_offset(setup: ReplaySetup) -> None:
    """With --end-inclusive, --from 2 --to 6 replays offsets 2 to 6, and the
    recorded end offset is 7 (ends are stored exclusive)."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 10)
    result = setup.replay("--from", "2", "--to", "6", "--end-inclusive")
    assert result.returncode == 0, result.stderr
    assert offsets_of(read_seen(setup.out)) == {p: [2, 3, 4, 5, 6] for p in range(3)}
    shown = setup.show(run_id_of(result.stdout))
    assert {p["end"] for p in shown["partitions"]} == {7}


def test_chosen_partitions_only_are_replayed(setup: ReplaySetup) -> None:
    """--partition 0 --partition 2 replays those two partitions and records
    only them in the run."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 4)
    result = setup.replay("--partition", "0", "--partition", "2")
    assert result.returncode == 0, result.stderr
    assert offsets_of(read_seen(setup.out)) == {0: [0, 1, 2, 3], 2: [0, 1, 2, 3]}
    shown = setup.show(run_id_of(result.stdout))
    assert [p["partition"] for p in shown["partitions"]] == [0, 2]


def test_handler_sees_the_run_id_and_is_replay(setup: ReplaySetup) -> None:
    """Every replayed event carries the run's id as Event.run_id, and
    Event.is_replay is true."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 3)
    result = setup.replay()
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result.stdout)
    seen = read_seen(setup.out)
    assert len(seen) == 9
    assert {(row.run_id, row.is_replay) for row in seen} == {(run_id, True)}


def test_end_beyond_high_watermark_stops_there_and_says_so(setup: ReplaySetup) -> None:
    """--to 100 over partitions of 5 events replays all 5, records end 5 with
    a note, and prints that it stopped at the high watermark."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 5)
    result = setup.replay("--to", "100")
    assert result.returncode == 0, result.stderr
    assert "end 100 is beyond the high watermark 5: stopping at 5" in result.stdout
    assert offsets_of(read_seen(setup.out)) == {p: [0, 1, 2, 3, 4] for p in range(3)}
    shown = setup.show(run_id_of(result.stdout))
    assert {(p["end"], p["checkpoint"]) for p in shown["partitions"]} == {(5, 5)}
    assert all("beyond the high watermark" in p["note"] for p in shown["partitions"])


def test_end_beyond_high_watermark_with_strict_end_is_refused(
    setup: ReplaySetup,
) -> None:
    """With --strict-end an end beyond the high watermark exits with status 2,
    says why, handles nothing and records no run."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 5)
    result = setup.replay("--to", "100", "--strict-end")
    assert result.returncode == 2
    assert "beyond its high watermark 5 (--strict-end)" in result.stderr
    assert read_seen(setup.out) == []
    listed = setup.cli("runs", "list")
    assert listed.stdout.startswith("0 run(s)")


def test_run_ends_at_end_offset_when_the_last_offset_is_a_commit_marker(
    setup: ReplaySetup,
) -> None:
    """A range whose last offset holds a transaction's commit marker (no
    event) completes promptly, not after the idle timeout, with the
    checkpoint at the end offset past the marker."""
    produce_transaction(setup.bootstrap, setup.topic, 0, 4)  # offsets 0-3, marker 4
    config = setup.config()
    started = time.monotonic()
    result = setup.replay(
        "--partition",
        "0",
        "--to",
        "5",
        "--strict-end",
        "--idle-timeout",
        "60",
        config=config,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 30, f"took {elapsed:.1f}s: waited for the idle timeout"
    assert offsets_of(read_seen(setup.out)) == {0: [0, 1, 2, 3]}
    shown = setup.show(run_id_of(result.stdout))
    (part,) = shown["partitions"]
    assert (part["end"], part["checkpoint"], part["note"]) == (5, 5, "")


def test_range_of_only_a_commit_marker_completes_without_events(
    setup: ReplaySetup,
) -> None:
    """--from 4 --to 5 covers only the commit marker: the run handles nothing,
    completes promptly and commits checkpoint 5."""
    produce_transaction(setup.bootstrap, setup.topic, 0, 4)
    started = time.monotonic()
    result = setup.replay(
        "--partition", "0", "--from", "4", "--to", "5", "--idle-timeout", "60"
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert read_seen(setup.out) == []
    (part,) = setup.show(run_id_of(result.stdout))["partitions"]
    assert part["checkpoint"] == 5


def test_dry_run_prints_offsets_and_counts_and_records_nothing(
    setup: ReplaySetup,
) -> None:
    """--dry-run prints each partition's resolved offsets and the total event
    count, exits 0, handles nothing and records no run."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 8)
    result = setup.replay("--from", "1", "--to", "5", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for partition in range(3):
        row = [str(partition), "1", "5", "4"]
        assert any(line.split()[:4] == row for line in lines)
    assert "total: 12 events at most" in result.stdout
    assert "dry run" in result.stdout
    assert read_seen(setup.out) == []
    assert setup.cli("runs", "list").stdout.startswith("0 run(s)")


def test_high_watermark_counts_every_record_of_a_multi_record_batch(
    setup: ReplaySetup,
) -> None:
    """Five events produced in one batch resolve to the range [0, 5) and are
    all replayed: the end comes from the fetch response's high watermark,
    not only from the broker's ListOffsets answer."""
    producer = Producer({"bootstrap.servers": setup.bootstrap, "linger.ms": 500})
    for i in range(5):
        producer.produce(setup.topic, value=f"b{i}".encode(), partition=0)
    assert producer.flush(30) == 0
    result = setup.replay("--partition", "0")
    assert result.returncode == 0, result.stderr
    (part,) = setup.show(run_id_of(result.stdout))["partitions"]
    assert (part["start"], part["end"], part["checkpoint"]) == (0, 5, 5)
    assert offsets_of(read_seen(setup.out)) == {0: [0, 1, 2, 3, 4]}


def test_recorded_end_past_the_log_end_stops_at_the_log_end_after_idle_timeout(
    setup: ReplaySetup,
) -> None:
    """A run whose recorded end (20) lies past where the log now ends (5, as
    after the topic was recreated) does not wait forever: once the position
    stands at the high watermark for --idle-timeout, the partition ends
    there with a note and the run completes."""
    produce_per_partition(setup.bootstrap, setup.topic, 1, 5)
    runs = RunStore.from_url(setup.redis.url, key_prefix=setup.prefix)
    owner = Owner.for_this_process()
    run_id = new_run_id()
    try:
        runs.create(
            run_id,
            topic=setup.topic,
            handler=RECORDER,
            ranges=[PartitionRange(0, 0, 20)],
            requested={},
            owner=owner,
        )
        runs.finish(run_id, owner, "failed", error="set up by the test")
    finally:
        runs.close()
    started = time.monotonic()
    result = setup.cli("replay", "--resume", run_id, "--idle-timeout", "1")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert "the log ends at 5, before the end 20" in result.stdout
    assert offsets_of(read_seen(setup.out)) == {0: [0, 1, 2, 3, 4]}
    (part,) = setup.show(run_id)["partitions"]
    assert part["checkpoint"] == 5 and "the log ends at 5" in part["note"]
