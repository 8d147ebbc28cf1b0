"""Prometheus metrics: every collector streamcp exposes, in one place.

Each :class:`Metrics` owns a ``CollectorRegistry`` of its own, so several
services in one process (and tests) never share or clash over collectors.
Names start with ``streamcp_``; every label takes its values from a closed
set (the ``Literal`` types below) or names a topic, partition or replay run.
The table in ``docs/metrics.md`` lists them all, and a test holds it equal
to what the registry exposes.

Methods are cheap and thread-safe (prometheus-client locks each sample);
callers update them per unit, per commit or once per second, never per
event.
"""

from __future__ import annotations

from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from streamcp.events import TopicPartition

Outcome = Literal["handled", "failed", "retried", "dead_lettered", "skipped"]
CommitResultName = Literal["accepted", "refused", "failed"]
RefusalReasonName = Literal["stale_epoch", "not_owner", "backwards"]
RebalanceKind = Literal["assigned", "revoked", "lost"]
Dependency = Literal["kafka", "redis"]

OUTCOMES: tuple[Outcome, ...] = (
    "handled",
    "failed",
    "retried",
    "dead_lettered",
    "skipped",
)

# A handler's time per unit ranges from microseconds (a counter bump) to
# minutes (a slow sink); a commit is one Redis round trip, so its buckets
# stop lower.
HANDLER_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
COMMIT_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

_PARTITION = ("topic", "partition")


class Metrics:
    """The collectors of one service instance, on a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "streamcp_events",
            "Events by what became of them: handled, failed, "
            "retried, dead_lettered or skipped.",
            ("topic", "outcome"),
            registry=r,
        )
        self.handler_duration = Histogram(
            "streamcp_handler_duration_seconds",
            "Time a handler spent on one "
            "unit (a run of one partition's events from one batch).",
            ("topic",),
            buckets=HANDLER_BUCKETS_S,
            registry=r,
        )
        # The labelled child per topic, looked up once: observed per unit.
        self._handler_duration_of: dict[str, Any] = {}
        self.commit_duration = Histogram(
            "streamcp_commit_duration_seconds",
            "Time of one commit call to the checkpoint store, whatever its result.",
            buckets=COMMIT_BUCKETS_S,
            registry=r,
        )
        self.commits = Counter(
            "streamcp_commits",
            "Commit calls by result: accepted (every "
            "partition), refused (at least one partition), failed (no answer).",
            ("result",),
            registry=r,
        )
        self.refusals = Counter(
            "streamcp_commit_refusals",
            "Partitions whose checkpoint the store "
            "refused, by reason (stale_epoch: another owner or an operator "
            "change).",
            ("topic", "reason"),
            registry=r,
        )
        self.checkpoint_offset = Gauge(
            "streamcp_checkpoint_offset",
            "The partition's checkpoint in the "
            "store: the offset of the next event to process.",
            _PARTITION,
            registry=r,
        )
        self.checkpoint_age = Gauge(
            "streamcp_checkpoint_age_seconds",
            "Seconds since the partition's checkpoint last changed in the store.",
            _PARTITION,
            registry=r,
        )
        self.lag = Gauge(
            "streamcp_lag_events",
            "High watermark minus the stored checkpoint: events not yet committed.",
            _PARTITION,
            registry=r,
        )
        self.in_flight = Gauge(
            "streamcp_events_in_flight",
            "Events delivered to handlers and not yet covered by an accepted commit.",
            registry=r,
        )
        self.paused = Gauge(
            "streamcp_paused_partitions",
            "Assigned partitions whose fetching is "
            "paused (in-flight bound, waiting for Redis, fenced, stopping).",
            registry=r,
        )
        self.assigned = Gauge(
            "streamcp_assigned_partitions",
            "Partitions assigned to this consumer.",
            registry=r,
        )
        self.rebalances = Counter(
            "streamcp_rebalances",
            "Rebalance callbacks by kind: assigned, revoked, lost.",
            ("kind",),
            registry=r,
        )
        self.dependency_up = Gauge(
            "streamcp_dependency_up",
            "1 while the dependency answered at its last check, else 0.",
            ("dependency",),
            registry=r,
        )
        self.replay_done = Gauge(
            "streamcp_replay_events_done",
            "Events a replay run has handled so far.",
            ("run_id",),
            registry=r,
        )
        self.replay_planned = Gauge(
            "streamcp_replay_events_planned",
            "Events in a replay run's range, as measured when it started.",
            ("run_id",),
            registry=r,
        )

    # -- events and handlers --------------------------------------------------

    def count_events(self, topic: str, outcome: Outcome, count: int = 1) -> None:
        """Add ``count`` events of ``topic`` with ``outcome``."""
        if count > 0:
            self.events.labels(topic, outcome).inc(count)

    def observe_handler(self, topic: str, seconds: float) -> None:
        """One unit of ``topic`` took ``seconds`` in its handler."""
        child = self._handler_duration_of.get(topic)
        if child is None:
            child = self._handler_duration_of[topic] = self.handler_duration.labels(
                topic
            )
        child.observe(seconds)

    # -- commits -------------------------------------------------------------

    def observe_commit(self, result: CommitResultName, seconds: float) -> None:
        self.commits.labels(result).inc()
        self.commit_duration.observe(seconds)

    def count_refusal(self, topic: str, reason: RefusalReasonName) -> None:
        self.refusals.labels(topic, reason).inc()

    # -- partitions ------------------------------------------------------------

    def set_partition(
        self,
        tp: TopicPartition,
        *,
        checkpoint: int | None,
        age_s: float | None,
        lag: int | None,
    ) -> None:
        """Gauges of one assigned partition; ``None`` leaves one unset."""
        labels = (tp.topic, str(tp.partition))
        if checkpoint is not None:
            self.checkpoint_offset.labels(*labels).set(checkpoint)
        if age_s is not None:
            self.checkpoint_age.labels(*labels).set(age_s)
        if lag is not None:
            self.lag.labels(*labels).set(lag)

    def drop_partition(self, tp: TopicPartition) -> None:
        """Remove a partition's gauges once it is no longer assigned here."""
        labels = (tp.topic, str(tp.partition))
        for gauge in (self.checkpoint_offset, self.checkpoint_age, self.lag):
            try:
                gauge.remove(*labels)
            except KeyError:
                continue

    def set_consumer(self, *, in_flight: int, paused: int, assigned: int) -> None:
        self.in_flight.set(in_flight)
        self.paused.set(paused)
        self.assigned.set(assigned)

    def count_rebalance(self, kind: RebalanceKind) -> None:
        self.rebalances.labels(kind).inc()

    def set_dependency(self, dependency: Dependency, up: bool) -> None:
        self.dependency_up.labels(dependency).set(1 if up else 0)

    # -- replay ----------------------------------------------------------------

    def replay_progress(self, run_id: str, done: int, planned: int) -> None:
        """A replay run has handled ``done`` of its ``planned`` events."""
        self.replay_done.labels(run_id).set(done)
        self.replay_planned.labels(run_id).set(planned)

    def replay_ended(self, run_id: str) -> None:
        """Forget a finished or cancelled run's gauges."""
        for gauge in (self.replay_done, self.replay_planned):
            try:
                gauge.remove(run_id)
            except KeyError:
                continue

    # -- exposition ------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
