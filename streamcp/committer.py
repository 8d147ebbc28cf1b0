"""The committer: when to commit, and turning tracks into commit requests.

:class:`CommitTimer` is the commit policy's runtime state, with an injected
clock: every N events and/or every T seconds, whichever comes first, and a
bounded exponential backoff after a failed commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from streamcp.config import CommitConfig
from streamcp.events import TopicPartition
from streamcp.store import CommitRequest
from streamcp.tracker import OffsetTracker, PartitionTrack

Clock = Callable[[], float]

# Backoff between commit attempts while the store does not answer: from
# 50 ms doubling to 2 s, so a Redis restart is noticed within about 2 s.
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0


class CommitTimer:
    """Decides when the next commit is due."""

    def __init__(self, policy: CommitConfig, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._last_at = clock()
        self._events_at_last = 0
        self._retry_at: float | None = None
        self._retry_delay = RETRY_FIRST_S

    def due(self, finished_events: int) -> bool:
        """True when the policy (or a pending retry) asks for a commit now."""
        now = self._clock()
        if self._retry_at is not None:
            return now >= self._retry_at
        every_events = self._policy.every_events
        if every_events and finished_events - self._events_at_last >= every_events:
            return True
        every_s = self._policy.every_seconds
        return bool(every_s) and now - self._last_at >= every_s

    def succeeded(self, finished_events: int) -> None:
        self._last_at = self._clock()
        self._events_at_last = finished_events
        self._retry_at = None
        self._retry_delay = RETRY_FIRST_S

    def failed(self) -> float:
        """Schedule a retry; returns the delay in seconds."""
        delay = self._retry_delay
        self._retry_at = self._clock() + delay
        self._retry_delay = min(delay * 2, RETRY_MAX_S)
        return delay

    @property
    def retrying(self) -> bool:
        return self._retry_at is not None


def commit_requests(
    tracks: Iterable[tuple[PartitionTrack, int]],
) -> list[tuple[CommitRequest, PartitionTrack, int]]:
    """Requests for each (track, epoch) whose checkpoint changed.

    Returns (request, track, finished events at this moment) so that the
    caller can record, once accepted, how far the count has been committed.
    """
    requests = []
    for track, epoch in tracks:
        checkpoint = track.checkpoint()
        if checkpoint is None or checkpoint == track.committed:
            continue
        finished = track.finished_events()
        request = CommitRequest(
            track.topic_partition,
            checkpoint,
            epoch,
            events=finished - track.finished_at_commit,
        )
        requests.append((request, track, finished))
    return requests


def record_accepted(
    tracker: OffsetTracker,
    pending: Iterable[tuple[CommitRequest, PartitionTrack, int]],
    accepted: Iterable[TopicPartition],
) -> list[CommitRequest]:
    """Move the tracker past what the store accepted; the accepted requests."""
    taken = set(accepted)
    done = []
    for request, track, finished_then in pending:
        if request.topic_partition not in taken:
            continue
        tracker.committed(track, request.offset)
        track.finished_at_commit = finished_then
        done.append(request)
    return done
