"""Redriving dead-letter records that the real service produced."""

from __future__ import annotations

import json

from tests.redrive.handlers import handled, read_calls
from tests.redrive.helpers import RedriveProcess, RedriveSetup, produce, read_topic
from tests.replay.helpers import json_of, run_id_of
from tests.service.harness import wait_for

# Events the service's handler fails at: (partition, offset) of the topic.
FAILED = [(0, 2), (1, 5), (1, 7), (2, 0), (2, 9)]


def _originals(setup: RedriveSetup, per_partition: int = 10) -> None:
    """``per_partition`` events on each of 3 partitions, with headers and
    timestamps of their own."""
    produce(
        setup.bootstrap,
        setup.topic,
        [
            (
                f"k{i}".encode(),
                f"v-{p}-{i}".encode(),
                [("trace", f"t-{p}-{i}".encode()), ("kind", b"order")],
                1_700_000_000_000 + 1000 * i + p,
                p,
            )
            for p in range(3)
            for i in range(per_partition)
        ],
    )


def test_redrive_hands_each_record_to_the_fixed_handler_as_its_original_event(
    setup: RedriveSetup,
) -> None:
    """Dead-letter records made by the service go back through a fixed
    handler: it sees each original topic, partition, offset, key, value,
    headers (without streamcp's) and timestamp, with run_id set; every
    record is accounted for once (redriven, or still failing with its
    error after the handler's attempts); the run is recorded as a redrive
    and nothing is produced anywhere."""
    _originals(setup)
    dead = setup.dead_letter(FAILED)
    config = setup.redrive_config(fail_at=["1:7"], flaky_at=["2:0"])

    result = setup.redrive("--topic", setup.dlq, config=config)
    assert result.returncode == 4, (result.stdout, result.stderr)
    run_id = run_id_of(result.stdout)
    assert f"run {run_id} completed" in result.stdout
    assert "5 dead-letter record(s): 4 redriven, 1 still failing" in result.stdout
    failing_dl = next(d for d in dead if d.original == (1, 7))
    assert f"{setup.topic}[1] offset 7" in result.stdout
    assert "RuntimeError: still broken at 1:7" in result.stdout

    ok = handled(setup.seen)
    assert sorted((c["partition"], c["offset"]) for c in ok) == [
        (0, 2),
        (1, 5),
        (2, 0),
        (2, 9),
    ]
    for call in ok:
        p, i = call["partition"], call["offset"]
        assert call["topic"] == setup.topic
        assert (call["key"], call["value"]) == (f"k{i}", f"v-{p}-{i}")
        assert call["headers"] == [["trace", f"t-{p}-{i}"], ["kind", "order"]]
        assert call["timestamp_ms"] == 1_700_000_000_000 + 1000 * i + p
        assert call["run_id"] == run_id and call["is_replay"] is True
    calls = read_calls(setup.seen)
    assert [c["outcome"] for c in calls if c["offset"] == 7] == ["fail"] * 3
    assert [c["outcome"] for c in calls if (c["partition"], c["offset"]) == (2, 0)] == [
        "fail",
        "ok",
    ]

    shown = setup.show(run_id)
    assert (shown["kind"], shown["status"], shown["topic"]) == (
        "redrive",
        "completed",
        setup.dlq,
    )
    summary = shown["redrive"]
    assert (summary["records"], summary["redriven"], summary["still_failing"]) == (
        5,
        4,
        1,
    )
    (entry,) = summary["failing"]
    assert (entry["partition"], entry["offset"]) == failing_dl.position
    assert (entry["original_topic"], entry["original_partition"]) == (setup.topic, 1)
    assert entry["original_offset"] == 7 and entry["attempts"] == 3
    assert entry["error_type"] == "RuntimeError"
    assert entry["error_message"] == "still broken at 1:7"
    assert entry["dead_lettered_to"] == ""
    assert shown["events_handled"] == 5

    listed = json_of(setup.cli("runs", "list", "--json"))["runs"]
    assert [(r["id"], r["kind"]) for r in listed] == [(run_id, "redrive")]
    table = setup.cli("runs", "list").stdout
    assert run_id in table and "redrive" in table
    text = setup.cli("runs", "show", run_id).stdout
    assert "kind: redrive" in text and "4 redriven, 1 still failing" in text
    assert len(read_topic(setup.bootstrap, setup.dlq, 2)) == len(dead)
    assert json.loads(json.dumps(summary)) == summary


def test_records_without_dead_letter_headers_are_refused_one_by_one(
    setup: RedriveSetup,
) -> None:
    """A topic holding records that streamcp did not make: each one without
    the streamcp.original.* headers (or with malformed ones) is counted as
    not a streamcp dead-letter record, with its reason, and never reaches
    the handler; the run completes (exit 4) and still redrives the one
    record that has them."""
    original = [
        ("streamcp.original.topic", setup.topic.encode()),
        ("streamcp.original.partition", b"1"),
        ("streamcp.original.offset", b"42"),
        ("streamcp.original.timestamp", b""),
        ("app", b"x"),
    ]
    bad_offset = [
        ("streamcp.original.topic", setup.topic.encode()),
        ("streamcp.original.partition", b"1"),
        ("streamcp.original.offset", b"forty"),
    ]
    produce(
        setup.bootstrap,
        setup.dlq,
        [
            (b"a", b"plain", [], 1_700_000_000_000, 0),
            (b"b", b"made-by-hand", original, 1_700_000_000_001, 0),
            (b"c", b"other-app", [("app", b"y")], 1_700_000_000_002, 0),
            (b"d", b"bad-offset", bad_offset, 1_700_000_000_003, 1),
        ],
    )
    result = setup.redrive("--topic", setup.dlq)
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert (
        "4 dead-letter record(s): 1 redriven, 0 still failing, "
        "3 not a streamcp dead-letter record" in result.stdout
    )
    (call,) = read_calls(setup.seen)
    assert (call["topic"], call["partition"], call["offset"]) == (setup.topic, 1, 42)
    assert call["value"] == "made-by-hand" and call["timestamp_ms"] is None
    assert call["headers"] == [["app", "x"]]

    summary = setup.show(run_id_of(result.stdout))["redrive"]
    assert summary["not_dead_letter_records"] == 3
    assert [(r["partition"], r["offset"], r["reason"]) for r in summary["refused"]] == [
        (0, 0, "it has no streamcp.original.topic header"),
        (0, 2, "it has no streamcp.original.topic header"),
        (1, 0, "its streamcp.original.offset header is not a number: 'forty'"),
    ]


def test_still_failing_records_go_to_the_dead_letter_to_topic_when_asked(
    setup: RedriveSetup,
) -> None:
    """With --dead-letter-to, each record that still fails is produced
    there as a dead-letter record of its original event (original
    position, key, value and headers, and the new error); the run lists
    it as produced there, and redriving that topic later reaches the
    original events."""
    _originals(setup)
    setup.dead_letter(FAILED)
    retry = f"{setup.topic}.retry"
    setup.kafka.create_topic(retry, 1, None)
    config = setup.redrive_config(fail_at=["1:7", "0:2"])

    result = setup.redrive(
        "--topic", setup.dlq, "--dead-letter-to", retry, config=config
    )
    assert result.returncode == 4, (result.stdout, result.stderr)
    summary = setup.show(run_id_of(result.stdout))["redrive"]
    assert summary["dead_letter_to"] == retry
    assert {
        (e["original_partition"], e["original_offset"], e["dead_lettered_to"])
        for e in summary["failing"]
    } == {(1, 7, retry), (0, 2, retry)}
    again = read_topic(setup.bootstrap, retry, 1)
    assert sorted(d.original for d in again) == [(0, 2), (1, 7)]
    for record in again:
        p, i = record.original
        assert (record.key, record.value) == (f"k{i}".encode(), f"v-{p}-{i}".encode())
        assert record.headers["streamcp.original.topic"] == setup.topic
        assert record.headers["trace"] == f"t-{p}-{i}"
        assert record.headers["streamcp.error.message"] == f"still broken at {p}:{i}"
        assert record.headers["streamcp.attempts"] == "3"
        assert record.headers["streamcp.handler"] == "tests.redrive.handlers:Fixed"

    fixed = setup.redrive("--topic", retry)
    assert fixed.returncode == 0, (fixed.stdout, fixed.stderr)
    assert "2 dead-letter record(s): 2 redriven, 0 still failing" in fixed.stdout
    last = [c for c in handled(setup.seen) if c["run_id"] == run_id_of(fixed.stdout)]
    assert sorted((c["topic"], c["partition"], c["offset"]) for c in last) == [
        (setup.topic, 0, 2),
        (setup.topic, 1, 7),
    ]


def test_kill_9_mid_redrive_then_resume_accounts_for_every_record_once(
    setup: RedriveSetup,
) -> None:
    """A redrive killed with kill -9 stays running with no live process;
    --resume continues from its committed checkpoints and completes, and
    the run accounts for every dead-letter record exactly once: redriven,
    still failing (each listed once with its error) or not a streamcp
    dead-letter record, however many were handled again after the crash."""
    _originals(setup, per_partition=20)
    every = [(p, i) for p in range(3) for i in range(20)]
    dead = setup.dead_letter(every)
    produce(setup.bootstrap, setup.dlq, [(b"x", b"stray", [], 1_700_000_000_000, 1)])
    broken = ["0:3", "1:10", "2:19"]
    config = setup.redrive_config(
        fail_at=broken,
        delay_ms=40,
        sections={"commit": {"every_events": 5, "every_seconds": 0.5}},
    )
    proc = RedriveProcess(setup, config, "--topic", setup.dlq)
    run_id = proc.run_id()
    wait_for(
        lambda: setup.show(run_id)["events_handled"] >= 15, 60, "some records committed"
    )
    proc.kill()
    before = setup.show(run_id)
    assert before["status"] == "running" and before["stale"]
    assert before["events_handled"] < 61

    resumed = setup.redrive("--resume", run_id, config=config)
    assert resumed.returncode == 4, (resumed.stdout, resumed.stderr)
    assert (
        "61 dead-letter record(s): 57 redriven, 3 still failing, "
        "1 not a streamcp dead-letter record" in resumed.stdout
    )
    after = setup.show(run_id)
    assert (after["status"], after["kind"], after["resumes"]) == (
        "completed",
        "redrive",
        1,
    )
    summary = after["redrive"]
    failing = [
        (e["original_partition"], e["original_offset"]) for e in summary["failing"]
    ]
    assert sorted(failing) == [(0, 3), (1, 10), (2, 19)]
    assert all(
        e["error_message"].startswith("still broken") for e in summary["failing"]
    )
    refused = [(r["partition"], r["offset"]) for r in summary["refused"]]
    assert refused == [(1, max(d.offset for d in dead if d.partition == 1) + 1)]
    assert summary["records"] == len(dead) + 1
    seen = {(c["partition"], c["offset"]) for c in handled(setup.seen)}
    assert seen == set(every) - {(0, 3), (1, 10), (2, 19)}
    pids = {c["pid"] for c in read_calls(setup.seen)}
    assert len(pids) == 2
