"""The steps the live service and a replay run take alike around their polls.

Both poll a consumer, hand each partition's events to a
:class:`~streamcp.dispatcher.Dispatcher` as units of an
:class:`~streamcp.tracker.OffsetTracker`, commit the tracker's checkpoints
and drain before they let go. What differs, which partitions they own and
how (a consumer group and Redis claims, or a run's assigned ranges), stays
in :mod:`streamcp.service` and :mod:`streamcp.replay`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from streamcp.config import Config, ConsumerConfig
from streamcp.deadletter import dead_letters_for
from streamcp.dispatcher import Dispatcher, runs_inline
from streamcp.errors import ConfigError, StreamcpError
from streamcp.events import Event, TopicPartition
from streamcp.handlers import Handler
from streamcp.source import KafkaError, to_kafka
from streamcp.tracker import OffsetTracker, PartitionTrack

Clock = Callable[[], float]

MAX_POLL_HINT = (
    "a handler call held the loop longer than kafka.max_poll_interval_ms, so "
    "the consumer left its group: give the handler a timeout_s, or set "
    'consumer.execution = "threads" to run handlers off the loop\'s thread'
)


def make_dispatcher(
    config: Config, handlers: Sequence[Handler], clock: Clock = time.monotonic
) -> Dispatcher:
    """The dispatcher ``config.consumer`` asks for; raises ConfigError."""
    consumer = config.consumer
    return Dispatcher(
        concurrency=consumer.concurrency,
        ordering=consumer.ordering,
        dead_letters=dead_letters_for(config, handlers),
        clock=clock,
        inline=check_handlers(config, handlers),
        slice_s=consumer.poll_timeout_s,
    )


def check_handlers(config: Config, handlers: Sequence[Handler]) -> bool:
    """Refuse what cannot run; returns whether handlers run inline.

    Raises ConfigError for a handler whose ``timeout_s`` (configured, or
    declared by its class) is not shorter than ``kafka.max_poll_interval_ms``,
    and for ``consumer.execution = "inline"`` with a handler timeout.
    """
    poll_ms = config.kafka.max_poll_interval_ms
    for handler in handlers:
        timeout = handler.policy.timeout_s
        if timeout is not None and timeout * 1000 >= poll_ms:
            raise ConfigError(
                "handler.timeout_s",
                f"{handler.name}: must be shorter than kafka.max_poll_interval_ms "
                f"({poll_ms} ms): a call revoked mid-way is waited for inside "
                f"the rebalance, got {timeout!r}",
            )
    return runs_inline(config.consumer, handlers)


def poll_timeout(dispatcher: Dispatcher | None, limits: ConsumerConfig) -> float:
    """How long the next poll may wait for messages.

    Not at all while inline work is left over (a unit that yielded, a retry
    now due): the loop only looks for new messages, then goes on with it.
    """
    if dispatcher is not None and dispatcher.inline and dispatcher.has_ready():
        return 0
    return limits.poll_timeout_s


def over_bound(tracker: OffsetTracker, limits: ConsumerConfig) -> bool:
    """The in-flight bound (events or bytes) is reached."""
    return (
        tracker.in_flight_events >= limits.max_in_flight_events
        or tracker.in_flight_bytes >= limits.max_in_flight_bytes
    )


def bound_wants_commit(
    tracker: OffsetTracker, limits: ConsumerConfig, retrying: bool
) -> bool:
    """At the in-flight bound, commit now rather than when the policy says.

    Finished events free room only once committed, so waiting would stall
    the loop for a period. Not while commits are failing: then the bound
    pauses the partitions instead.
    """
    if retrying or not over_bound(tracker, limits):
        return False
    return any(track.checkpoint() != track.committed for track in tracker)


def deliver(
    dispatcher: Dispatcher,
    tracker: OffsetTracker,
    track: PartitionTrack,
    handler: Handler,
    events: Sequence[Event],
    nbytes: int,
) -> None:
    """Hand one partition's polled events to the handler, lane by lane."""
    for index, (lane, lane_events) in enumerate(dispatcher.split(events)):
        unit = tracker.deliver(track, lane_events, nbytes if index == 0 else 0)
        dispatcher.submit(handler, unit, lane)


def log_consumer_errors(
    log: Any, errored: Iterable[Any], fatal: type[StreamcpError]
) -> None:
    """Log the error messages a poll returned; raise ``fatal`` for a fatal one."""
    for message in errored:
        error = message.error()
        if error.fatal():
            raise fatal(f"fatal Kafka error: {error.str()}")
        if error.code() == KafkaError._MAX_POLL_EXCEEDED:
            log.warning(
                "consumer.max_poll_exceeded", reason=error.str(), hint=MAX_POLL_HINT
            )
            continue
        log.warning(
            "consumer.error",
            code=error.name(),
            reason=error.str(),
            topic=message.topic(),
            partition=message.partition(),
        )


def drain(
    tracker: OffsetTracker,
    dispatcher: Dispatcher | None,
    parts: Sequence[TopicPartition] | None,
    deadline: float,
    clock: Clock,
    on_timeout: Callable[[], None],
) -> bool:
    """Wait until the units of ``parts`` (all: None) ended, up to ``deadline``.

    Inline, this thread runs what is left itself. False, after calling
    ``on_timeout``, when the deadline passed first.
    """
    while not tracker.all_finished(parts):
        if dispatcher is not None:
            dispatcher.run_ready(deadline)
        if tracker.all_finished(parts):
            break
        if clock() >= deadline:
            on_timeout()
            return False
        time.sleep(0.005)
    return True


def commit_until(
    commit: Callable[[], bool],
    deadline: float,
    clock: Clock,
    log: Any,
    give_up: Callable[[], bool] = lambda: False,
) -> bool:
    """Call ``commit`` until the store answered it, up to ``deadline``."""
    while not commit():
        if give_up():
            return False
        if clock() >= deadline:
            log.error(
                "checkpoint.commit_abandoned",
                reason="store did not answer within the drain timeout",
            )
            return False
        time.sleep(0.05)
    return True


def set_paused(
    consumer: Any,
    paused: set[TopicPartition],
    wanted: set[TopicPartition],
    assigned: Collection[TopicPartition],
    log: Any,
    in_flight: int,
) -> set[TopicPartition]:
    """Pause what is wanted paused, resume the rest that is still assigned;
    returns the new paused set."""
    to_pause = wanted - paused
    to_resume = paused - wanted
    if to_pause:
        consumer.pause([to_kafka(tp) for tp in to_pause])
        log.debug("consumer.backpressure", paused=len(to_pause), in_flight=in_flight)
    if to_resume:
        consumer.resume([to_kafka(tp) for tp in to_resume if tp in assigned])
        log.debug("consumer.backpressure", resumed=len(to_resume))
    return wanted
