"""The checker finds what it is there to find (no broker needed)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from streamcp.events import TopicPartition
from streamcp.store import Checkpoint, HistoryEntry
from tests.chaos.check import RunRecords, check
from tests.chaos.cluster import ClusterSettings
from tests.chaos.faults import Episode
from tests.chaos.handler import Call

TP = TopicPartition("t", 0)
AT = datetime(2026, 1, 1, tzinfo=UTC)


def _entry(
    kind: str, offset: int | None, epoch: int, owner: str, previous: int | None = None
) -> HistoryEntry:
    return HistoryEntry("0-1", kind, TP, offset, previous, epoch, owner, AT)  # type: ignore[arg-type]


def _run(**changes: object) -> RunRecords:
    """A clean run: two events, handled once each, committed by the owner."""
    calls = [
        Call("H", 1.0, 10, 0, 0, "e0"),
        Call("H", 2.0, 10, 0, 1, "e1"),
        Call("F", 2.5, 10, 0, 1, "e1"),
        Call("S", 2.6, 10, 0, 1, "e1"),
    ]
    history = [_entry("claim", None, 1, "h:10:a"), _entry("commit", 2, 1, "h:10:a")]
    run = RunRecords(
        settings=ClusterSettings(),
        topic="t",
        calls=calls,
        topic_records={(0, 0): "e0", (0, 1): "e1"},
        ends={0: 2},
        acked_ids=["e0", "e1"],
        history_segments=[history],
        final_checkpoints={TP: Checkpoint(TP, 2, 1, "")},
        episodes=[Episode("kill", 5.0, 6.0, 7.0)],
        instances=[],
        fault_counts={"kill": 1},
        minimum_counts={"kill": 1},
        duration_s=10.0,
    )
    return replace(run, **changes)  # type: ignore[arg-type]


def test_clean_run_passes() -> None:
    """A run where everything held passes, with zero lost and regressions."""
    report = check(_run())
    assert report.passed, report.failures
    assert report.figures["lost events"] == 0
    assert report.figures["checkpoint regressions"] == 0


def test_unhandled_record_counts_as_lost() -> None:
    """A record in the topic that no handler call covered is a lost event."""
    report = check(
        _run(
            topic_records={(0, 0): "e0", (0, 1): "e1", (0, 2): "e2"},
            acked_ids=["e0", "e1", "e2"],
        )
    )
    assert report.figures["lost events"] == 1
    assert not report.passed


def test_lower_commit_counts_as_regression() -> None:
    """A commit lower than the previous one, with no operator change in
    between, is a regression."""
    history = [
        _entry("claim", None, 1, "h:10:a"),
        _entry("commit", 2, 1, "h:10:a"),
        _entry("commit", 1, 1, "h:10:a"),
    ]
    report = check(_run(history_segments=[history]))
    assert report.figures["checkpoint regressions"] == 1


def test_commit_after_another_owners_claim_counts_as_stale() -> None:
    """After B claimed the partition, a commit entry by A is a stale commit
    that should have been refused."""
    history = [
        _entry("claim", None, 1, "h:10:a"),
        _entry("claim", None, 2, "h:11:b"),
        _entry("commit", 2, 1, "h:10:a"),
    ]
    report = check(_run(history_segments=[history]))
    assert report.figures["stale commits accepted"] == 1


def test_duplicates_in_a_quiet_stretch_fail() -> None:
    """An event handled again although no episode disrupted anything is a
    failure: the commit policy allows no duplicate there."""
    calls = [
        Call("H", 1.0, 10, 0, 0, "e0"),
        Call("H", 2.0, 10, 0, 1, "e1"),
        Call("H", 8.0, 11, 0, 1, "e1"),
    ]
    report = check(_run(calls=calls, episodes=[]))
    assert report.figures["duplicates (handled more than once)"] == 1
    assert not report.passed


def test_duplicates_after_a_crash_are_counted_per_crash() -> None:
    """Duplicates of events first handled before a kill are the crash's."""
    calls = [
        Call("H", 1.0, 10, 0, 0, "e0"),
        Call("H", 2.0, 10, 0, 1, "e1"),
        Call("H", 6.5, 11, 0, 0, "e0"),
        Call("H", 6.6, 11, 0, 1, "e1"),
    ]
    report = check(_run(calls=calls))
    assert report.passed, report.failures
    assert report.figures["max duplicates per crash"] == 2


def test_fault_kind_never_injected_fails() -> None:
    """A configured fault kind that was injected zero times fails the run."""
    report = check(
        _run(
            fault_counts={"kill": 1, "zombie": 0},
            minimum_counts={"kill": 1, "zombie": 1},
        )
    )
    assert any("'zombie'" in f for f in report.failures)
