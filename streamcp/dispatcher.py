"""The dispatcher: runs handler work, on the loop's thread or on workers.

Inline, the loop's thread runs the queued units itself between polls
(:meth:`Dispatcher.run_ready`): no hand-over between threads, the fastest
way for handlers that return quickly. Otherwise worker threads run them
while the loop goes on polling.

Units are queued on *lanes*. With ``ordering = "partition"`` a lane is one
topic-partition, so a partition's events are handled one at a time in
offset order; with ``ordering = "key"`` a partition's events are spread over
``concurrency`` lanes by key, so events of one key keep their order while
different keys run side by side. A lane runs on at most one worker at a
time; ``concurrency`` worker threads serve all lanes.

A failed event is retried on its lane after a backoff: the lane waits (later
events of its partition with it), the worker serves other lanes meanwhile,
and the retry resumes at the failed event, not at the start of the batch.
After the last attempt the handler's :class:`~streamcp.failures.FailurePolicy`
decides. Workers record progress on the unit itself (see
:mod:`streamcp.tracker`); the loop reads it.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import queue
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from enum import Enum
from itertools import count, islice
from typing import Any

import structlog

from streamcp.config import ConsumerConfig
from streamcp.deadletter import DeadLetters
from streamcp.errors import ConfigError, DeadLetterFailed, DecodeError, HandlerTimeout
from streamcp.events import Batch, Event, TopicPartition
from streamcp.failures import FailurePolicy
from streamcp.handlers import BatchFailed, Handler
from streamcp.tracker import Unit

log = structlog.get_logger("streamcp.dispatcher")

LaneKey = tuple[TopicPartition, int]
Clock = Callable[[], float]
DEFAULT_POLICY = FailurePolicy()


class Outcome(Enum):
    DONE = "done"
    RETRY = "retry"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Inline only: the unit stopped between two events to let the loop do
    # its own work (commit, look at signals); it goes on at the next call.
    YIELDED = "yielded"


class _Lane:
    __slots__ = ("busy", "failed_generation", "key", "units")

    def __init__(self, key: LaneKey) -> None:
        self.key = key
        self.units: deque[tuple[Handler, Unit]] = deque()
        self.busy = False
        self.failed_generation = -1


class Dispatcher:
    """Hands units to worker threads; never blocks the caller.

    :meth:`submit`, :meth:`discard` and :meth:`abandon_retries` are called
    from the loop's thread; :meth:`close` waits for the workers to stop (a
    handler call in progress is waited for, up to ``timeout_s``).
    """

    def __init__(
        self,
        *,
        concurrency: int = 1,
        ordering: str = "partition",
        dead_letters: DeadLetters | None = None,
        clock: Clock = time.monotonic,
        inline: bool = False,
        slice_s: float = 0.1,
    ) -> None:
        if inline and concurrency != 1:
            raise ValueError("an inline dispatcher runs one lane at a time")
        # Inline: no worker threads; the loop's thread runs the ready units
        # itself, with run_ready().
        self.inline = inline
        self._inline_caller = Caller("streamcp-call-inline") if inline else None
        # Inline, a ticker asks the running unit to yield every ``slice_s``,
        # so that a slow handler does not hold the loop for a whole poll.
        self._slice_s = slice_s
        self._inline_running: Unit | None = None
        self._ticker: threading.Thread | None = None
        self._concurrency = concurrency
        self._by_key = ordering == "key"
        self._dead_letters = dead_letters
        self._clock = clock
        self._lanes: dict[LaneKey, _Lane] = {}
        self._ready: deque[_Lane] = deque()
        self._delayed: list[tuple[float, int, _Lane]] = []
        self._sequence = count()
        self._cond = threading.Condition()
        self._closing = False
        self.finished_counts = [0] * concurrency
        self.crashed: BaseException | None = None
        self.failed: deque[Unit] = deque()
        # Told how long each run of a unit took (on the worker's thread):
        # the handler-duration metric, per unit rather than per event.
        self.on_unit_ran: Callable[[Unit, float], None] | None = None
        self._threads = [
            threading.Thread(
                target=self._work,
                args=(index,),
                name=f"streamcp-worker-{index}",
                daemon=True,
            )
            for index in range(0 if inline else concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def finished_events(self) -> int:
        """Events that succeeded (or were skipped or dead-lettered) so far."""
        return sum(self.finished_counts)

    def split(self, events: Sequence[Event]) -> list[tuple[int, Sequence[Event]]]:
        """Group one partition's events into (lane index, events) runs."""
        if not self._by_key or self._concurrency == 1:
            return [(0, events)]
        batch = events if isinstance(events, Batch) else Batch(events)
        buckets: dict[int, list[int]] = {}
        lanes = self._concurrency
        for position, key in enumerate(batch.keys()):
            index = zlib.crc32(key) % lanes if key is not None else 0
            buckets.setdefault(index, []).append(position)
        return [
            (index, batch.take(positions))
            for index, positions in sorted(buckets.items())
        ]

    def submit(self, handler: Handler, unit: Unit, lane_index: int = 0) -> None:
        key = (unit.topic_partition, lane_index)
        with self._cond:
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane(key)
            lane.units.append((handler, unit))
            if not lane.busy:
                lane.busy = True
                self._ready.append(lane)
                self._cond.notify()

    def discard(self, tp: TopicPartition) -> None:
        """Drop queued units of ``tp``; a running one is cancelled by its unit."""
        with self._cond:
            for key in [k for k in self._lanes if k[0] == tp]:
                lane = self._lanes[key]
                for _, unit in lane.units:
                    unit.cancelled = True
                lane.units.clear()

    def abandon_retries(
        self, partitions: Sequence[TopicPartition] | None = None
    ) -> None:
        """Cancel lanes waiting out a backoff (shutdown, revocation).

        Their events were not handled; they are delivered again after the
        next assignment, from the committed checkpoint.
        """
        wanted = None if partitions is None else set(partitions)
        with self._cond:
            for lane in self._lanes.values():
                if wanted is not None and lane.key[0] not in wanted:
                    continue
                if lane.units and lane.units[0][1].retry_at is not None:
                    for _, unit in lane.units:
                        unit.cancelled = True

    def close(self, timeout_s: float = 10.0) -> bool:
        """Stop the workers; True when all stopped within ``timeout_s``."""
        with self._cond:
            self._closing = True
            for lane in self._lanes.values():
                for _, unit in lane.units:
                    unit.cancelled = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._dead_letters is not None:
            self._dead_letters.close()
        return not any(thread.is_alive() for thread in self._threads)

    def run_ready(self, deadline: float | None = None) -> None:
        """Inline mode: run every ready unit on the calling thread.

        Units whose retry backoff ended are ready too; a unit still waiting
        out its backoff is left for a later call. With ``deadline`` (of the
        dispatcher's clock), no further lane is started once it passed.
        Nothing is done by a dispatcher with worker threads.
        """
        caller = self._inline_caller
        if caller is None:
            return
        if self._ticker is None:
            self._ticker = threading.Thread(
                target=self._tick, name="streamcp-inline-ticker", daemon=True
            )
            self._ticker.start()
        while True:
            with self._cond:
                if self._closing:
                    return
                self._move_due(self._clock())
                if not self._ready:
                    return
                lane = self._ready.popleft()
            if self._drain(lane, 0, caller) is Outcome.YIELDED:
                return
            if deadline is not None and self._clock() >= deadline:
                return

    def has_ready(self) -> bool:
        """Inline mode: whether run_ready() would run something now."""
        with self._cond:
            self._move_due(self._clock())
            return bool(self._ready)

    def _tick(self) -> None:
        while not self._closing:
            time.sleep(self._slice_s)
            unit = self._inline_running
            if unit is not None:
                unit.yield_now = True

    def _move_due(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, lane = heapq.heappop(self._delayed)
            self._ready.append(lane)

    def _work(self, index: int) -> None:
        caller = Caller(f"streamcp-call-{index}")
        try:
            while True:
                lane = self._next_lane()
                if lane is None:
                    return
                self._drain(lane, index, caller)
        except BaseException as exc:
            # A worker that dies would leave its lanes unserved while the
            # loop looks healthy: record it, so that the service stops.
            self.crashed = exc
            log.error("dispatcher.worker_died", worker=index, error=repr(exc))
            raise

    def _next_lane(self) -> _Lane | None:
        with self._cond:
            while True:
                if self._closing:
                    return None
                now = self._clock()
                self._move_due(now)
                if self._ready:
                    return self._ready.popleft()
                wait = self._delayed[0][0] - now if self._delayed else None
                self._cond.wait(wait)

    def _drain(self, lane: _Lane, index: int, executor: Caller) -> Outcome | None:
        while True:
            with self._cond:
                if not lane.units or self._closing:
                    lane.busy = False
                    if not lane.units:
                        self._lanes.pop(lane.key, None)
                    return None
                handler, unit = lane.units[0]
                if unit.cancelled or unit.generation == lane.failed_generation:
                    unit.cancelled = True
                    lane.units.popleft()
                    continue
                unit.running = True
                unit.retry_at = None
                unit.yield_now = False
            before = unit.done
            started = time.perf_counter()
            if self.inline:
                self._inline_running = unit
            try:
                outcome = run_unit(
                    handler, unit, self._dead_letters, executor, self._clock
                )
            finally:
                unit.running = False
                self._inline_running = None
            if self.on_unit_ran is not None:
                self.on_unit_ran(unit, time.perf_counter() - started)
            self.finished_counts[index] += unit.done - before
            if outcome is Outcome.RETRY:
                with self._cond:
                    assert unit.retry_at is not None  # set by run_unit
                    heapq.heappush(
                        self._delayed, (unit.retry_at, next(self._sequence), lane)
                    )
                    self._cond.notify()
                return outcome
            if outcome is Outcome.YIELDED:
                with self._cond:
                    self._ready.appendleft(lane)  # first again at the next call
                return outcome
            if outcome is Outcome.DONE:
                # Nothing reads a finished unit's events: let them go now,
                # while they are young to the garbage collector, rather
                # than when the commit releases the unit.
                unit.events = ()
            with self._cond:
                # discard() may have emptied the lane while the unit ran, and
                # a newer unit may stand at the front since: pop only this one.
                if lane.units and lane.units[0][1] is unit:
                    lane.units.popleft()
                if outcome is Outcome.FAILED:
                    lane.failed_generation = unit.generation
                    self.failed.append(unit)


def runs_inline(consumer: ConsumerConfig, handlers: Sequence[Handler]) -> bool:
    """Whether handlers run on the loop's thread (``consumer.execution``).

    ``auto`` is inline unless there are several workers or a handler sets
    ``timeout_s``: an overrun call can be given up on only by a loop that
    goes on polling meanwhile. Raises ConfigError for ``inline`` with such
    a handler.
    """
    timed = [h.name for h in handlers if h.policy.timeout_s is not None]
    if consumer.execution == "threads":
        return False
    if consumer.execution == "inline":
        if timed:
            raise ConfigError(
                "consumer.execution",
                '"inline" cannot enforce a handler timeout_s (set for '
                f'{", ".join(timed)}); use "threads" or "auto"',
            )
        return True
    return consumer.concurrency == 1 and not timed


def run_unit(
    handler: Handler,
    unit: Unit,
    dead_letters: DeadLetters | None = None,
    executor: concurrent.futures.Executor | None = None,
    clock: Clock = time.monotonic,
) -> Outcome:
    """Handle a unit's events from ``unit.done`` on, applying the policy.

    Progress goes to ``unit.done`` after each event. Returns RETRY with
    ``unit.retry_at`` set when the event at ``done`` should be called again
    later; FAILED with ``unit.failure`` set when the policy stops the
    partition there; YIELDED when ``unit.yield_now`` asked it to stop
    between two events. Never raises for a handler error.
    """
    policy: FailurePolicy = getattr(handler, "policy", DEFAULT_POLICY)
    while True:
        if unit.cancelled:
            return Outcome.CANCELLED
        if unit.done >= unit.size:
            return Outcome.DONE
        if unit.yield_now:
            return Outcome.YIELDED
        error = _attempt(handler, unit, policy, executor)
        if error is None:
            continue
        outcome = _after_failure(handler, unit, policy, error, dead_letters, clock)
        if outcome is not None:
            return outcome


def _attempt(
    handler: Handler,
    unit: Unit,
    policy: FailurePolicy,
    executor: concurrent.futures.Executor | None,
) -> BaseException | None:
    """Run events from ``unit.done`` until one fails; returns its error."""
    events = unit.events
    start = unit.done
    decode = _decoder(policy)
    timed = policy.timeout_s is not None and executor is not None
    if getattr(handler, "batches", False):
        return _attempt_batch(handler, unit, policy, executor, decode)
    handle: Any = getattr(handler, "per_event", None) or handler.handle
    done = start
    # A consumed batch makes each event as it is reached.
    from_start = getattr(events, "events_from", None)
    pending = from_start(start) if from_start else islice(events, start, None)
    try:
        if decode is None and not timed:
            for event in pending:
                if unit.cancelled or unit.yield_now:
                    return None
                handle(event)
                done += 1
                unit.done = done
                unit.attempts = 0
        else:
            for event in pending:
                if unit.cancelled or unit.yield_now:
                    return None
                if decode is not None:
                    decode(event)
                if timed:
                    _call_with_timeout(handle, event, policy, executor, event, unit)
                else:
                    handle(event)
                done += 1
                unit.done = done
                unit.attempts = 0
    except Exception as exc:  # noqa: BLE001  # any handler error is an outcome
        return exc
    return None


def _attempt_batch(
    handler: Handler,
    unit: Unit,
    policy: FailurePolicy,
    executor: concurrent.futures.Executor | None,
    decode: Callable[[Event], None] | None,
) -> BaseException | None:
    """One ``handle_batch`` call over the events from ``unit.done`` on.

    With codecs, the batch ends before the first event that does not
    decode: the events before it are handled, then that event fails alone.
    """
    start = unit.done
    events = unit.events
    batch = events[start:] if isinstance(events, Batch) else Batch(events[start:])
    timed = policy.timeout_s is not None and executor is not None
    undecodable: DecodeError | None = None
    if decode is not None:
        # Decoded fields live on the event objects: keep the ones decoded.
        decoded = list(batch)
        for index, event in enumerate(decoded):
            try:
                decode(event)
            except DecodeError as exc:
                undecodable = exc
                decoded = decoded[:index]
                break
        if not decoded:
            return undecodable
        batch = Batch(decoded)
    try:
        call = _call_with_timeout if timed else _call
        call(handler.handle_batch, batch, policy, executor, batch[0], unit)
    except BatchFailed as exc:
        index = _index_of(batch, exc.offset)
        cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
        if index >= len(batch):
            # The offset is past the batch: the handler broke the contract,
            # and nothing says which events succeeded. Fail at the first.
            log.warning(
                "handler.batch_failed_offset_outside_batch",
                handler=handler.name,
                offset=exc.offset,
                first=batch[0].offset,
                last=batch[-1].offset,
            )
            return cause
        unit.done = start + index
        unit.attempts = 0 if unit.done > start else unit.attempts
        return cause
    except Exception as exc:  # noqa: BLE001  # any handler error is an outcome
        return exc
    unit.done = start + len(batch)
    unit.attempts = 0
    return undecodable


def _call(function: Any, argument: Any, *_: Any) -> None:
    function(argument)


class Caller(concurrent.futures.Executor):
    """Runs one call at a time on a daemon thread of its own.

    A handler call that never returns must not keep the process alive after
    shutdown, which a pool's non-daemon threads would.
    """

    def __init__(self, name: str) -> None:
        self._requests: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]
        ] = queue.SimpleQueue()
        self._name = name
        self._thread: threading.Thread | None = None

    def submit(  # type: ignore[override]  # positional arguments only
        self, fn: Callable[..., Any], /, *args: Any
    ) -> concurrent.futures.Future[Any]:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, name=self._name, daemon=True
            )
            self._thread.start()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._requests.put((future, fn, args))
        return future

    def _serve(self) -> None:
        while True:
            future, fn, args = self._requests.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001  # handed to the waiter
                future.set_exception(exc)


# While an abandoned call keeps running, say so this often.
STILL_RUNNING_LOG_S = 30.0


def _call_with_timeout(
    function: Any,
    argument: Any,
    policy: FailurePolicy,
    executor: concurrent.futures.Executor | None,
    event: Event,
    unit: Unit | None = None,
) -> None:
    assert executor is not None and policy.timeout_s is not None
    future = executor.submit(function, argument)
    try:
        future.result(timeout=policy.timeout_s)
    except concurrent.futures.TimeoutError:
        # The call is abandoned: its late result is ignored, and the next
        # attempt starts only once it has returned (or the unit is given up
        # on by shutdown or revocation).
        context = {
            "topic": event.topic,
            "partition": event.partition,
            "offset": event.offset,
            "timeout_s": policy.timeout_s,
        }
        log.warning("handler.timed_out", **context)
        waited = 0.0
        while not future.done():
            concurrent.futures.wait([future], timeout=0.5)
            waited += 0.5
            if unit is not None and unit.cancelled:
                break
            if waited % STILL_RUNNING_LOG_S == 0 and not future.done():
                log.warning("handler.still_running", waited_s=waited, **context)
        raise HandlerTimeout(
            event.topic,
            event.partition,
            event.offset,
            f"handler call overran its timeout of {policy.timeout_s}s",
        ) from None


def _decoder(policy: FailurePolicy) -> Callable[[Event], None] | None:
    if policy.key_codec.name == "bytes" and policy.value_codec.name == "bytes":
        return None

    def decode(event: Event) -> None:
        decode_fields(policy, event)

    return decode


def decode_fields(policy: FailurePolicy, event: Event) -> None:
    """Set the event's decoded key and value with the policy's codecs.

    Raises :class:`~streamcp.errors.DecodeError` naming what did not decode.
    """
    event.decoded_key = _decode(policy.key_codec, event.key, event, "key")
    event.decoded_value = _decode(policy.value_codec, event.value, event, "value")


def _decode(codec: Any, data: bytes | None, event: Event, what: str) -> Any:
    if data is None:
        if codec.tombstones or what == "key":
            return None
        raise DecodeError(
            event.topic,
            event.partition,
            event.offset,
            f"tombstone (no {what}) where the {codec.name} codec needs one",
        )
    try:
        return codec.decode(data)
    except Exception as exc:  # any codec error means undecodable
        raise DecodeError(
            event.topic,
            event.partition,
            event.offset,
            f"{what} is not valid {codec.name}: {exc}",
        ) from exc


def _after_failure(
    handler: Handler,
    unit: Unit,
    policy: FailurePolicy,
    error: BaseException,
    dead_letters: DeadLetters | None,
    clock: Clock,
) -> Outcome | None:
    """Retry, or apply the policy; None means go on with the next event."""
    event = unit.events[unit.done]
    unit.attempts += 1
    context = {
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "handler": handler.name,
        "attempt": unit.attempts,
        "error": f"{type(error).__name__}: {error}",
    }
    if policy.retryable(error) and unit.attempts < policy.attempts:
        delay = policy.delay_s(unit.attempts)
        unit.retry_at = clock() + delay
        unit.retried += 1
        log.warning("event.retrying", retry_in_s=round(delay, 3), **context)
        return Outcome.RETRY
    action = policy.on_failure
    if action == "skip":
        log.warning("event.skipped", **context)
        unit.skipped += 1
        _passed(unit)
        return None
    if action == "dead-letter":
        topic = policy.dead_letter_topic_for(event.topic)
        if dead_letters is not None and dead_letters.send(
            topic, event, error, unit.attempts, handler.name
        ):
            unit.dead_lettered += 1
            _passed(unit)
            return None
        error = DeadLetterFailed(
            event.topic,
            event.partition,
            event.offset,
            f"dead-letter topic {topic!r} did not take the event "
            f"after {type(error).__name__}: {error}",
        )
    unit.failure = error
    log.error("event.failed", action="stop" if action == "stop" else "pause", **context)
    return Outcome.FAILED


def _passed(unit: Unit) -> None:
    unit.done += 1
    unit.attempts = 0


def _index_of(events: Batch, offset: int) -> int:
    for index, event_offset in enumerate(events.offsets()):
        if event_offset >= offset:
            return index
    return len(events)
