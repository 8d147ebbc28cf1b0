"""The consumer service: the loop that owns the consumer.

One iteration polls a batch, hands its events to the dispatcher, looks at
failures, retries claims that waited for Redis, commits when the commit
policy says so, and pauses or resumes partitions against the in-flight
bound. Rebalance callbacks run inside the poll, on this same thread; what
they and refused commits do about ownership is in :mod:`streamcp.ownership`,
and the steps shared with a replay run in :mod:`streamcp.loop`.

Exit status of :meth:`Service.run`: 0 after a graceful stop (SIGTERM,
SIGINT, :meth:`Service.request_stop`, or catching up when asked to), 1 when
a handler failed or the service could not go on, 2 when librdkafka refused a
property of the configuration (before connecting); in both cases the
checkpoints of everything that succeeded were committed first, when Redis
answered within the drain timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import confluent_kafka
import structlog

from streamcp.committer import Clock, CommitTimer, commit_requests, record_accepted
from streamcp.config import Config, split_address
from streamcp.dispatcher import Dispatcher
from streamcp.errors import (
    ConfigError,
    DeadLetterFailed,
    HandlerFailed,
    ServiceError,
    StoreUnavailable,
    StreamcpError,
)
from streamcp.events import TopicPartition
from streamcp.health import Health, HealthServer
from streamcp.loop import (
    bound_wants_commit,
    commit_until,
    deliver,
    log_consumer_errors,
    make_dispatcher,
    over_bound,
    poll_timeout,
    set_paused,
)
from streamcp.metrics import Metrics
from streamcp.observe import KAFKA_STALE_S, STATS_INTERVAL_MS, LoopObserver
from streamcp.ownership import Owned, PartitionOwnership
from streamcp.recovery import StoreLossGuard
from streamcp.router import HandlerRouter
from streamcp.source import (
    consumer_settings,
    group_by_partition,
    split_errors,
    to_kafka,
)
from streamcp.store import CheckpointStore, Owner
from streamcp.tracker import OffsetTracker, Unit

# How often --stop-when-caught-up asks the broker for high watermarks when
# fetch responses have not brought one yet.
WATERMARK_QUERY_S = 1.0


class Service(PartitionOwnership):
    """A long-running consumer of one group.

    :meth:`run` blocks until stopped; :meth:`request_stop` may be called from
    any thread or a signal handler.
    """

    def __init__(
        self,
        config: Config,
        *,
        store: CheckpointStore,
        router: HandlerRouter,
        owner: Owner | None = None,
        clock: Clock = time.monotonic,
        stop_when_caught_up: bool = False,
        retry_paused: bool = False,
        consumer_factory: Callable[[dict[str, Any]], Any] = confluent_kafka.Consumer,
    ) -> None:
        self._config = config
        self._store = store
        self._router = router
        # Subscribed to one topic by name: every message is of that topic.
        kafka = config.kafka
        self._one_topic = (
            kafka.topics[0]
            if kafka.topic_pattern is None and len(kafka.topics) == 1
            else None
        )
        self._owner = owner or Owner.for_this_process()
        self._clock = clock
        self._stop_when_caught_up = stop_when_caught_up
        self._retry_paused = retry_paused
        self._pause_check_at = 0.0
        self._pending_pauses: dict[TopicPartition, tuple[int, int, str]] = {}
        self._consumer_factory = consumer_factory
        self._group = config.kafka.group_id
        self._cooperative = config.kafka.assignor == "cooperative-sticky"
        self._tracker = OffsetTracker()
        self._timer = CommitTimer(config.commit, clock)
        self._partitions: dict[TopicPartition, Owned] = {}
        self._paused: set[TopicPartition] = set()
        self._stop = threading.Event()
        self._failure: StreamcpError | None = None
        self._claim_retry_at = 0.0
        self._watermark_at = 0.0
        self._watermarks: dict[TopicPartition, int] = {}
        self._ever_assigned = False
        self._consumer: Any = None
        self._dispatcher: Dispatcher | None = None
        self.log = structlog.get_logger("streamcp.service").bind(group=self._group)
        self.metrics = Metrics()
        self.health = Health(
            liveness_timeout_s=config.metrics.liveness_timeout_s,
            kafka_stale_s=KAFKA_STALE_S,
        )
        self._observer = LoopObserver(self.metrics, self.health, store)
        self._tracker.on_release = self._observer.released
        self._store_loss = StoreLossGuard(
            self._group, store, config.consumer.on_store_loss
        )
        self._http: HealthServer | None = None

    @property
    def owner(self) -> Owner:
        return self._owner

    def request_stop(self) -> None:
        """Ask the loop to stop gracefully; returns at once."""
        self._stop.set()

    def run(self) -> int:
        """Consume until stopped; returns the exit status (see module doc)."""
        try:
            self._dispatcher = make_dispatcher(
                self._config, list(self._router), self._clock
            )
        except ConfigError as exc:
            self._fail(exc)
            return 2
        self._serve_http()
        self._dispatcher.on_unit_ran = (
            self._unit_ran_inline
            if self._dispatcher.inline
            else self._observer.unit_ran
        )
        try:
            self._setup_handlers()
        except ServiceError as exc:
            self._fail(exc)
            self._shutdown()
            return 1
        try:
            self._consumer = self._consumer_factory(self._consumer_settings())
        except confluent_kafka.KafkaException as exc:
            # librdkafka refuses a property when the client is made, before
            # it connects: a configuration error like any other.
            self._fail(
                ConfigError(
                    "kafka.properties", str(exc.args[0].str() if exc.args else exc)
                )
            )
            self._shutdown()
            return 2
        self._consumer.subscribe(
            self._config.kafka.subscription(),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.log.info(
            "service.started",
            owner=self._owner.instance_id,
            topics=self._config.kafka.subscription(),
        )
        try:
            while not self._stop.is_set():
                self._iterate()
        except StreamcpError as exc:
            self._fail(exc)
        finally:
            self._shutdown()
        return 0 if self._failure is None else 1

    @property
    def failure(self) -> StreamcpError | None:
        """Why the service stopped with status 1, if it did."""
        return self._failure

    def _unit_ran_inline(self, unit: Unit, seconds: float) -> None:
        # Handling a poll's events is the loop's work too: it is alive.
        self._observer.unit_ran(unit, seconds)
        self.health.iterated()

    def _iterate(self) -> None:
        messages = self._consumer.consume(
            self._batch_limit(), poll_timeout(self._dispatcher, self._config.consumer)
        )
        if messages:
            self._dispatch(messages)
        if self._dispatcher is not None:
            self._dispatcher.run_ready()  # inline: handle them now
        self._check_failures()
        if self._waiting() and self._clock() >= self._claim_retry_at:
            self._retry_claims()
        if self._clock() >= self._pause_check_at:
            self._check_pauses()
        if self._timer.due(self._dispatcher_finished()) or bound_wants_commit(
            self._tracker, self._config.consumer, self._timer.retrying
        ):
            self._commit()
        self._apply_pauses()
        self._observe()
        if self._stop_when_caught_up and self._caught_up():
            paused = sorted(
                str(tp) for tp, o in self._partitions.items() if o.status == "paused"
            )
            self.log.info("service.caught_up", paused=paused)
            if paused:
                # Not caught up on those: they wait for an operator.
                self._fail(
                    ServiceError(
                        f"caught up except the paused partition(s) "
                        f"{', '.join(paused)}: see `streamcp checkpoints show`, "
                        f"then `streamcp checkpoints resume`"
                    )
                )
            self._stop.set()

    def _batch_limit(self) -> int:
        """At most a batch, and never more than the in-flight bound has room for."""
        limits = self._config.consumer
        room = limits.max_in_flight_events - self._tracker.in_flight_events
        return max(1, min(limits.batch_size, room))

    def _dispatch(self, messages: Sequence[Any]) -> None:
        good, errored = split_errors(messages)
        self.log.debug("batch.polled", events=len(good), errors=len(errored))
        if errored:
            log_consumer_errors(self.log, errored, ServiceError)
        dispatcher = self._dispatcher
        assert dispatcher is not None  # set by run() before polling
        for tp, events, nbytes in group_by_partition(good, topic=self._one_topic):
            owned = self._partitions.get(tp)
            track = self._tracker.get(tp)
            if owned is None or owned.status != "active" or track is None:
                # Waiting or fenced: the partition is sought again when it
                # becomes active, so these events come back then.
                continue
            handler = self._router.for_topic(tp.topic)
            deliver(dispatcher, self._tracker, track, handler, events, nbytes)

    def _dispatcher_finished(self) -> int:
        dispatcher = self._dispatcher
        return dispatcher.finished_events() if dispatcher is not None else 0

    def _check_failures(self) -> None:
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        if dispatcher.crashed is not None:
            self._fail(
                ServiceError(f"a handler worker thread died: {dispatcher.crashed!r}")
            )
            return
        while dispatcher.failed:
            unit = dispatcher.failed.popleft()
            tp = unit.topic_partition
            track = self._tracker.get(tp)
            if track is None or track.generation != unit.generation or unit.cancelled:
                continue  # the partition moved on since; the outcome is stale
            failure = unit.failure
            offset = unit.next_offset()
            assert failure is not None and offset is not None  # FAILED
            handler = self._router.for_topic(tp.topic)
            if handler.policy.on_failure == "stop" and not isinstance(
                failure, DeadLetterFailed
            ):
                self._fail(HandlerFailed(tp, offset, handler.name, failure))
                return
            self._pause_at_failure(tp, offset, f"{type(failure).__name__}: {failure}")

    def _fail(self, error: StreamcpError) -> None:
        if self._failure is None:
            self._failure = error
        self._stop.set()

    # -- commits -------------------------------------------------------------

    def _commit(self, only: Sequence[TopicPartition] | None = None) -> bool:
        """Commit every changed checkpoint; True when the store answered."""
        wanted = set(only) if only is not None else None
        tracks = [
            (track, owned.epoch)
            for track in self._tracker
            if (owned := self._partitions.get(track.topic_partition)) is not None
            and owned.status == "active"
            and (wanted is None or track.topic_partition in wanted)
        ]
        pending = commit_requests(tracks)
        finished = self._dispatcher_finished()
        if not pending:
            self._timer.succeeded(finished)
            return True
        started = time.perf_counter()
        try:
            result = self._store.commit(
                self._group, self._owner, [p[0] for p in pending]
            )
        except StoreUnavailable as exc:
            self._observer.commit_failed(time.perf_counter() - started)
            delay = self._timer.failed()
            self.log.warning(
                "checkpoint.commit_failed",
                error=str(exc),
                retry_in_s=delay,
                partitions=len(pending),
            )
            return False
        self._timer.succeeded(finished)
        mirrored = [
            to_kafka(request.topic_partition, request.offset)
            for request in record_accepted(self._tracker, pending, result.accepted)
        ]
        self._observer.committed(
            result.accepted, result.refused, time.perf_counter() - started
        )
        for refusal in result.refused:
            self._on_refused(refusal)
        self.log.debug(
            "checkpoint.committed",
            partitions=len(mirrored),
            refused=len(result.refused),
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        self._mirror(mirrored)
        return True

    def _commit_until(
        self, parts: Sequence[TopicPartition] | None, deadline: float
    ) -> bool:
        return commit_until(
            lambda: self._commit(parts), deadline, self._clock, self.log
        )

    def _mirror(self, offsets: list[Any]) -> None:
        if not offsets or not self._config.commit.mirror_to_kafka:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except confluent_kafka.KafkaException as exc:
            self.log.warning("checkpoint.mirror_failed", error=str(exc))

    # -- flow control ----------------------------------------------------------

    def _apply_pauses(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        over = over_bound(self._tracker, self._config.consumer)
        wanted = {
            tp
            for tp, owned in self._partitions.items()
            if over or owned.status != "active" or self._stop.is_set()
        }
        self._paused = set_paused(
            consumer,
            self._paused,
            wanted,
            self._partitions,
            self.log,
            self._tracker.in_flight_events,
        )

    def _caught_up(self) -> bool:
        # With no partition at all (lost, or not yet given back) there is
        # nothing to have caught up on.
        if not self._ever_assigned or self._waiting() or not self._partitions:
            return False
        active = [tp for tp, o in self._partitions.items() if o.status == "active"]
        for tp in active:
            track = self._tracker.get(tp)
            if track is None or not all(unit.finished for unit in track.units):
                return False
            high = self._high_watermark(tp)
            if high is None:
                return False
            checkpoint = track.checkpoint()
            position = checkpoint if checkpoint is not None else 0
            if high > 0 and position < high:
                return False
        return True

    def _high_watermark(self, tp: TopicPartition) -> int | None:
        _, high = self._consumer.get_watermark_offsets(to_kafka(tp), cached=True)
        if high is not None and high >= 0:
            return int(high)
        if self._clock() < self._watermark_at:
            return self._watermarks.get(tp)
        self._watermark_at = self._clock() + WATERMARK_QUERY_S
        try:
            _, high = self._consumer.get_watermark_offsets(to_kafka(tp), timeout=5)
        except confluent_kafka.KafkaException:
            return None
        self._watermarks[tp] = int(high)
        return int(high)

    # -- lifecycle -------------------------------------------------------------

    def _setup_handlers(self) -> None:
        for handler in self._router:
            try:
                handler.setup()
            except Exception as exc:  # any setup error stops the start
                self.log.error(
                    "handler.setup_failed",
                    handler=handler.name,
                    error=f"{type(exc).__name__}: {exc}",
                )
                raise ServiceError(
                    f"handler {handler.name!r} failed in setup: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc

    def _shutdown(self) -> None:
        self.log.info("service.stopping", reason="failure" if self._failure else "stop")
        self.health.stopping()
        if self._consumer is not None:
            self._apply_pauses()
            self._drain(None)
            self._commit_until(
                None, self._clock() + self._config.consumer.drain_timeout_s
            )
            self._release(list(self._partitions))
            try:
                self._consumer.close()
            except (RuntimeError, confluent_kafka.KafkaException) as exc:
                self.log.warning("consumer.close_failed", error=str(exc))
        if self._dispatcher is not None:
            self._dispatcher.close(self._config.consumer.drain_timeout_s)
        for handler in self._router:
            try:
                handler.close()
            except Exception as exc:  # noqa: BLE001  # a close error must not mask the exit
                self.log.warning(
                    "handler.close_failed", handler=handler.name, error=repr(exc)
                )
        self.log.info("service.stopped", exit_status=0 if self._failure is None else 1)
        if self._http is not None:
            self._http.close()

    # -- observability ---------------------------------------------------------

    @property
    def http_address(self) -> tuple[str, int] | None:
        """Where ``/metrics``, ``/healthz`` and ``/readyz`` answer, once bound."""
        return self._http.address if self._http is not None else None

    def _serve_http(self) -> None:
        settings = self._config.metrics
        if not settings.enabled:
            return
        host, port = split_address(settings.address)
        server = HealthServer(host, port, self.metrics, self.health)
        try:
            host, port = server.start()
        except OSError as exc:
            # The consumer goes on without its endpoint: losing the metrics
            # is better than stopping consumption; the error says why.
            self.log.error(
                "metrics.bind_failed", address=settings.address, error=str(exc)
            )
            return
        self._http = server
        self.log.info("metrics.listening", address=f"{host}:{port}", port=port)

    def _consumer_settings(self) -> dict[str, Any]:
        settings = consumer_settings(
            self._config.kafka, self._config.consumer.start_policy
        )
        if self._config.metrics.enabled:
            # The statistics report each broker connection's state: the
            # readiness probe's view of the broker, at no request's cost.
            settings.setdefault("statistics.interval.ms", STATS_INTERVAL_MS)
            settings["stats_cb"] = self._observer.kafka_stats
        return settings

    def _observe(self) -> None:
        if not self._observer.due():
            return
        active = [tp for tp, o in self._partitions.items() if o.status == "active"]
        self._observer.refresh(
            self._tracker,
            active,
            paused=len(self._paused),
            assigned=len(self._partitions),
            consumer=self._consumer,
        )
