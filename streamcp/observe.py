"""What the polling loop reports, kept off its hot path.

The loop tells a :class:`LoopObserver` about commits, rebalances and each
iteration; the observer turns that into metrics and health signals. Per
event it costs nothing: handled events are counted from the units' progress
once per second (:data:`REFRESH_S`), gauges are refreshed at the same pace,
and Redis is pinged only when no store call answered for
:data:`REDIS_PING_S`. Everything runs on the loop's thread except
:meth:`LoopObserver.unit_ran` (worker threads) and the broker statistics
callback, which librdkafka serves from inside the loop's ``consume``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog

from streamcp.errors import StoreUnavailable
from streamcp.events import TopicPartition
from streamcp.health import Health
from streamcp.metrics import OUTCOMES, Metrics, Outcome, RefusalReasonName
from streamcp.source import to_kafka
from streamcp.store import CheckpointStore, Refusal
from streamcp.tracker import OffsetTracker, Unit

Clock = Callable[[], float]

# Gauges and handled counts: once a second, the pace of a Prometheus scrape
# at its fastest.
REFRESH_S = 1.0
# Redis is pinged this long after its last answer (a commit or claim counts)
# or its last failed ping.
REDIS_PING_S = 3.0
# librdkafka's statistics report the broker connections' states; a report
# older than a few intervals means the loop stopped serving callbacks.
STATS_INTERVAL_MS = 2000
KAFKA_STALE_S = 3 * STATS_INTERVAL_MS / 1000

log = structlog.get_logger("streamcp.observe")


class LoopObserver:
    """Metrics and health bookkeeping for one service's loop."""

    def __init__(
        self,
        metrics: Metrics,
        health: Health,
        store: CheckpointStore,
        *,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self.metrics = metrics
        self.health = health
        self._store = store
        self._clock = clock
        self._wall = wall
        self._refresh_at = 0.0
        self._next_ping_at = 0.0
        self._redis_up: bool | None = None
        # Outcome counts per topic: of units that left the tracker, and as
        # reported to the counter so far.
        self._released: dict[str, dict[Outcome, int]] = {}
        self._reported: dict[str, dict[Outcome, int]] = {}
        # Wall-clock time of each assigned partition's last checkpoint change.
        self._changed_at: dict[TopicPartition, float] = {}

    # -- from the loop -----------------------------------------------------------

    def due(self) -> bool:
        """The loop went round; True when a :meth:`refresh` is due.

        Called every iteration, so it costs a clock read and no more.
        """
        self.health.iterated()
        now = self._clock()
        if now < self._refresh_at:
            return False
        self._refresh_at = now + REFRESH_S
        return True

    def refresh(
        self,
        tracker: OffsetTracker,
        active: Collection[TopicPartition],
        *,
        paused: int,
        assigned: int,
        consumer: Any,
    ) -> None:
        """Outcome counts, gauges, and a Redis ping when one is due."""
        self._count_outcomes(tracker)
        self.metrics.set_consumer(
            in_flight=tracker.in_flight_events, paused=paused, assigned=assigned
        )
        for tp in active:
            track = tracker.get(tp)
            if track is not None:
                self._refresh_partition(tp, track.committed, consumer)
        if self._clock() >= self._next_ping_at:
            self._ping()

    def claimed(self, checkpoints: Mapping[TopicPartition, Any]) -> None:
        """Partitions were claimed; ``checkpoints`` maps them to Checkpoints."""
        self._answered()
        for tp, checkpoint in checkpoints.items():
            at: datetime | None = getattr(checkpoint, "committed_at", None)
            if at is not None:
                self._changed_at[tp] = at.timestamp()

    def committed(
        self,
        accepted: Iterable[TopicPartition],
        refused: Sequence[Refusal],
        seconds: float,
    ) -> None:
        """The store answered a commit call."""
        self._answered()
        now = self._wall()
        for tp in accepted:
            self._changed_at[tp] = now
        for refusal in refused:
            reason: RefusalReasonName = refusal.reason
            self.metrics.count_refusal(refusal.topic_partition.topic, reason)
        self.metrics.observe_commit("refused" if refused else "accepted", seconds)

    def commit_failed(self, seconds: float) -> None:
        """The store did not answer a commit call."""
        self.metrics.observe_commit("failed", seconds)
        self._store_down("a commit got no answer")

    def forgotten(self, tp: TopicPartition) -> None:
        """``tp`` is no longer assigned here: drop its gauges."""
        self._changed_at.pop(tp, None)
        self.metrics.drop_partition(tp)

    def unit_ran(self, unit: Unit, seconds: float) -> None:
        """A worker finished running ``unit`` (called on the worker thread)."""
        self.metrics.observe_handler(unit.topic_partition.topic, seconds)

    def kafka_stats(self, stats_json: str) -> None:
        """librdkafka's statistics callback: is any broker connection up?"""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        brokers = stats.get("brokers") or {}
        up = any(b.get("state") == "UP" for b in brokers.values())
        self.health.kafka(up)
        self.metrics.set_dependency("kafka", up)

    # -- inside ----------------------------------------------------------------

    def released(self, unit: Unit) -> None:
        """``unit`` left the tracker: keep its outcome counts (loop thread)."""
        totals = self._released.setdefault(
            unit.topic_partition.topic, dict.fromkeys(OUTCOMES, 0)
        )
        for outcome, count in unit_outcomes(unit).items():
            totals[outcome] += count

    def _count_outcomes(self, tracker: OffsetTracker) -> None:
        totals = {topic: dict(counts) for topic, counts in self._released.items()}
        for track in tracker:
            live = totals.setdefault(
                track.topic_partition.topic, dict.fromkeys(OUTCOMES, 0)
            )
            for unit in track.units:
                for outcome, count in unit_outcomes(unit).items():
                    live[outcome] += count
        for topic, counts in totals.items():
            reported = self._reported.setdefault(topic, dict.fromkeys(OUTCOMES, 0))
            for outcome, total in counts.items():
                if total > reported[outcome]:
                    self.metrics.count_events(topic, outcome, total - reported[outcome])
                    reported[outcome] = total

    def _refresh_partition(
        self, tp: TopicPartition, checkpoint: int | None, consumer: Any
    ) -> None:
        changed = self._changed_at.get(tp)
        age = max(0.0, self._wall() - changed) if changed is not None else None
        low, high = consumer.get_watermark_offsets(to_kafka(tp), cached=True)
        lag = None
        if high is not None and high >= 0:
            base = checkpoint if checkpoint is not None else low
            if base is not None and base >= 0:
                lag = max(0, int(high) - base)
        self.metrics.set_partition(tp, checkpoint=checkpoint, age_s=age, lag=lag)

    def _ping(self) -> None:
        try:
            self._store.ping()
        except StoreUnavailable as exc:
            self._store_down(str(exc))
            return
        self._answered()

    def _answered(self) -> None:
        self._next_ping_at = self._clock() + REDIS_PING_S
        if self._redis_up is False:
            log.info("store.reachable")
        self._redis_up = True
        self.health.redis(True)
        self.metrics.set_dependency("redis", True)

    def _store_down(self, error: str = "") -> None:
        self._next_ping_at = self._clock() + REDIS_PING_S
        if self._redis_up is not False:
            log.warning("store.unreachable", error=error)
        self._redis_up = False
        self.health.redis(False)
        self.metrics.set_dependency("redis", False)


def unit_outcomes(unit: Unit) -> dict[Outcome, int]:
    """What became of ``unit``'s events so far.

    ``done`` counts every event the unit got past, so skipped and
    dead-lettered ones are taken out of "handled"; a failure stops a unit
    at one failed event.
    """
    retried = getattr(unit, "retried", 0)
    skipped = getattr(unit, "skipped", 0)
    dead_lettered = getattr(unit, "dead_lettered", 0)
    return {
        "handled": max(0, unit.done - skipped - dead_lettered),
        "failed": 1 if unit.failure is not None else 0,
        "retried": retried,
        "dead_lettered": dead_lettered,
        "skipped": skipped,
    }
