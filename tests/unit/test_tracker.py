"""The offset tracker: the checkpoint is the lowest unfinished offset."""

from __future__ import annotations

from streamcp.events import Event, TopicPartition
from streamcp.tracker import OffsetTracker

TP = TopicPartition("t", 0)


def events(*offsets: int) -> list[Event]:
    return [Event(topic="t", partition=0, offset=o, value=b"x") for o in offsets]


def test_new_track_without_checkpoint_has_none() -> None:
    """A partition with no stored checkpoint and no delivery has no checkpoint."""
    track = OffsetTracker().start(TP, None)
    assert track.checkpoint() is None


def test_stored_checkpoint_zero_is_kept_not_taken_for_none() -> None:
    """A stored checkpoint of 0 is a checkpoint."""
    track = OffsetTracker().start(TP, 0)
    assert track.checkpoint() == 0


def test_finished_unit_moves_checkpoint_past_its_last_offset() -> None:
    """After offsets 40 and 41 succeed the checkpoint is 42."""
    tracker = OffsetTracker()
    track = tracker.start(TP, 40)
    unit = tracker.deliver(track, events(40, 41), 2)
    assert track.checkpoint() == 40
    unit.done = 2
    assert track.checkpoint() == 42


def test_partial_progress_stops_at_first_unfinished_event() -> None:
    """A unit that handled one of three events holds the checkpoint at the second."""
    tracker = OffsetTracker()
    track = tracker.start(TP, None)
    unit = tracker.deliver(track, events(5, 6, 7), 3)
    unit.done = 1
    assert track.checkpoint() == 6


def test_out_of_order_completion_holds_checkpoint_at_slow_unit() -> None:
    """A later unit finishing first does not move the checkpoint past an earlier one."""
    tracker = OffsetTracker()
    track = tracker.start(TP, 0)
    slow = tracker.deliver(track, events(0, 2), 2)
    fast = tracker.deliver(track, events(1, 3), 2)
    fast.done = 2
    assert track.checkpoint() == 0
    slow.done = 1
    assert track.checkpoint() == 2
    slow.done = 2
    assert track.checkpoint() == 4


def test_gaps_in_offsets_neither_stall_nor_skip() -> None:
    """Offsets 10, 13, 20 (compaction gaps) give checkpoint 21 once all succeed."""
    tracker = OffsetTracker()
    track = tracker.start(TP, 10)
    unit = tracker.deliver(track, events(10, 13, 20), 3)
    unit.done = 2
    assert track.checkpoint() == 20
    unit.done = 3
    assert track.checkpoint() == 21


def test_failed_unit_keeps_checkpoint_at_failed_event() -> None:
    """A failure at offset 8 keeps the checkpoint at 8 even when later units finish."""
    tracker = OffsetTracker()
    track = tracker.start(TP, 7)
    first = tracker.deliver(track, events(7, 8, 9), 3)
    later = tracker.deliver(track, events(10), 1)
    first.done = 1
    first.failure = RuntimeError("boom")
    later.done = 1
    assert track.checkpoint() == 8
    assert tracker.failures() == [first]


def test_in_flight_counts_until_commit_accepted() -> None:
    """Finished events stay in flight until a commit covering them is accepted."""
    tracker = OffsetTracker()
    track = tracker.start(TP, 0)
    unit = tracker.deliver(track, events(0, 1, 2), 30)
    unit.done = 3
    assert (tracker.in_flight_events, tracker.in_flight_bytes) == (3, 30)
    tracker.committed(track, 3)
    assert (tracker.in_flight_events, tracker.in_flight_bytes) == (0, 0)
    assert track.checkpoint() == 3
    assert track.finished_events() == 3


def test_forget_cancels_units_and_releases_in_flight() -> None:
    """Forgetting a partition cancels its work and frees the bound."""
    tracker = OffsetTracker()
    track = tracker.start(TP, 0)
    unit = tracker.deliver(track, events(0, 1), 2)
    tracker.forget(TP)
    assert unit.cancelled
    assert tracker.in_flight_events == 0
    assert TP not in tracker
