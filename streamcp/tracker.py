"""Offset tracking: the lowest unfinished offset of each topic-partition.

The loop hands events to handlers in *units* (a run of one partition's
events, in offset order). A worker marks progress on its unit as it goes;
units of one partition may finish out of order (key ordering, or several
workers). The checkpoint of a partition is judged over the offsets actually
delivered: the first unfinished offset of any live unit, or one past the
last delivered offset when every unit is finished. Gaps in offsets
(compaction, transaction markers) neither stall nor skip anything.

The tracker lives on the loop's thread; workers touch only their units'
``done`` and ``failure`` fields, which the loop reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from streamcp.events import Event, TopicPartition


class Unit:
    """Events of one partition handed to a handler together.

    ``done`` counts the events, from the front, that succeeded; a worker
    raises it as it goes. ``failure`` is set once when an event failed: the
    unit then never finishes, and holds the checkpoint at that event.
    ``cancelled`` tells the worker to stop early (revocation, fencing).
    """

    __slots__ = (
        "attempts",
        "cancelled",
        "dead_lettered",
        "done",
        "events",
        "failure",
        "first_offset",
        "generation",
        "last_offset",
        "nbytes",
        "retried",
        "retry_at",
        "running",
        "size",
        "skipped",
        "topic_partition",
        "yield_now",
    )

    def __init__(
        self,
        topic_partition: TopicPartition,
        events: Sequence[Event],
        nbytes: int,
        generation: int,
    ) -> None:
        self.topic_partition = topic_partition
        self.events: Sequence[Event] = events
        self.size = len(events)
        self.first_offset = events[0].offset
        self.last_offset = events[-1].offset
        self.nbytes = nbytes
        self.generation = generation
        self.done = 0
        self.failure: BaseException | None = None
        self.cancelled = False
        # Retry state of the event at ``done``; set by the worker.
        self.attempts = 0
        self.retry_at: float | None = None
        self.running = False
        # Set (inline) to have the worker stop between two events; the unit
        # goes on at the next call.
        self.yield_now = False
        # Outcome counts, for metrics and the test kit.
        self.retried = 0
        self.skipped = 0
        self.dead_lettered = 0

    @property
    def finished(self) -> bool:
        return self.done >= self.size

    @property
    def settled(self) -> bool:
        """Nothing runs for this unit now, nor will without a retry timer."""
        if self.running:
            return False
        return (
            self.finished
            or self.cancelled
            or self.failure is not None
            or self.retry_at is not None
        )

    def next_offset(self) -> int | None:
        """The first unfinished offset, or ``None`` when finished."""
        # The events first: a worker empties them only after raising
        # ``done`` to the size (see Dispatcher), so whichever is read here
        # holds the offset at ``done``, or ``done`` says finished.
        events = self.events
        done = self.done
        if done >= self.size or done >= len(events):
            return None
        return events[done].offset


@dataclass
class PartitionTrack:
    """What the tracker knows of one assigned partition."""

    topic_partition: TopicPartition
    generation: int
    committed: int | None = None
    delivered_next: int | None = None
    units: deque[Unit] = field(default_factory=deque)
    in_flight_events: int = 0
    in_flight_bytes: int = 0
    released_events: int = 0
    finished_at_commit: int = 0

    def finished_events(self) -> int:
        """Events of this partition that succeeded since tracking began."""
        return self.released_events + sum(unit.done for unit in self.units)

    def checkpoint(self) -> int | None:
        """The offset of the next event to process, ``None`` if unknown."""
        lowest: int | None = None
        for unit in self.units:
            offset = unit.next_offset()
            if offset is not None and (lowest is None or offset < lowest):
                lowest = offset
        if lowest is not None:
            return lowest
        if self.delivered_next is not None:
            return self.delivered_next
        return self.committed


class OffsetTracker:
    """Per-partition tracks plus the consumer-wide in-flight totals.

    In flight means delivered and not yet covered by an accepted commit:
    finished events count until Redis has accepted their checkpoint, so the
    bound also limits how much work rides on a commit that keeps failing.
    """

    def __init__(self) -> None:
        self._tracks: dict[TopicPartition, PartitionTrack] = {}
        self._generation = 0
        self.in_flight_events = 0
        self.in_flight_bytes = 0
        # Called with each unit as it leaves the tracker (committed past or
        # forgotten), on the loop's thread: metrics count outcomes per unit.
        self.on_release: Callable[[Unit], None] | None = None

    def start(self, tp: TopicPartition, committed: int | None) -> PartitionTrack:
        """Begin tracking ``tp`` from its stored checkpoint (or none)."""
        self.forget(tp)
        self._generation += 1
        track = PartitionTrack(tp, self._generation, committed=committed)
        self._tracks[tp] = track
        return track

    def get(self, tp: TopicPartition) -> PartitionTrack | None:
        return self._tracks.get(tp)

    def __iter__(self) -> Iterator[PartitionTrack]:
        return iter(list(self._tracks.values()))

    def __contains__(self, tp: TopicPartition) -> bool:
        return tp in self._tracks

    def deliver(
        self, track: PartitionTrack, events: Sequence[Event], nbytes: int
    ) -> Unit:
        """Record ``events`` (offset order) as handed out; returns their unit."""
        unit = Unit(track.topic_partition, events, nbytes, track.generation)
        track.units.append(unit)
        after = unit.last_offset + 1
        if track.delivered_next is None or after > track.delivered_next:
            track.delivered_next = after
        track.in_flight_events += unit.size
        track.in_flight_bytes += nbytes
        self.in_flight_events += unit.size
        self.in_flight_bytes += nbytes
        return unit

    def advance(self, track: PartitionTrack, offset: int) -> None:
        """Move a settled partition's checkpoint over offsets with no event.

        For a partition whose delivered units all finished and whose
        consumer position stands at ``offset``: everything below it was
        delivered or holds no event (compaction, transaction markers), so
        its checkpoint may be ``offset``. Never moves it backwards.
        """
        if track.delivered_next is None or offset > track.delivered_next:
            track.delivered_next = offset

    def committed(self, track: PartitionTrack, offset: int) -> None:
        """Redis accepted ``offset`` for ``track``: drop the units below it."""
        track.committed = offset
        units = track.units
        while units and units[0].finished and units[0].last_offset < offset:
            unit = units.popleft()
            track.released_events += unit.done
            self._release(track, unit)

    def forget(self, tp: TopicPartition) -> PartitionTrack | None:
        """Stop tracking ``tp``; its unfinished units are cancelled."""
        track = self._tracks.pop(tp, None)
        if track is None:
            return None
        for unit in track.units:
            unit.cancelled = True
            self._release(track, unit)
        track.units.clear()
        return track

    def _release(self, track: PartitionTrack, unit: Unit) -> None:
        track.in_flight_events -= unit.size
        track.in_flight_bytes -= unit.nbytes
        self.in_flight_events -= unit.size
        self.in_flight_bytes -= unit.nbytes
        if self.on_release is not None:
            self.on_release(unit)
        # The events are no longer needed once the unit leaves the tracker.
        unit.events = ()

    def failures(self) -> list[Unit]:
        """Units whose handler failed, in partition order."""
        return [
            unit
            for track in self._tracks.values()
            for unit in track.units
            if unit.failure is not None
        ]

    def all_finished(self, partitions: Sequence[TopicPartition] | None = None) -> bool:
        """True when no unit of ``partitions`` (default all) runs or waits to run.

        A unit waiting for a retry timer counts as settled: shutdown and
        revocation do not wait out backoffs; the event comes back later.
        """
        tracks = (
            self._tracks.values()
            if partitions is None
            else [t for tp in partitions if (t := self._tracks.get(tp))]
        )
        return all(unit.settled for track in tracks for unit in track.units)
