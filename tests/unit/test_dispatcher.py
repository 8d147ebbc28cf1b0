"""The dispatcher: revocation races, hung handler calls, and inline mode."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence

import pytest

from streamcp.config import ConsumerConfig
from streamcp.dispatcher import Dispatcher, Outcome, run_unit, runs_inline
from streamcp.errors import ConfigError
from streamcp.events import Event, TopicPartition
from streamcp.handlers import BatchFailed, build, failure_policy
from streamcp.tracker import OffsetTracker

TP = TopicPartition("t", 0)


def _events(*offsets: int) -> list[Event]:
    return [Event(topic="t", partition=0, offset=o, value=b"x") for o in offsets]


def test_discard_while_a_unit_runs_leaves_the_worker_serving_later_units() -> None:
    """A partition discarded while its unit is running (revocation, fencing,
    an operator change) does not kill the worker: a unit submitted afterwards
    for the same partition is still handled."""
    started, release = threading.Event(), threading.Event()
    handled: list[int] = []

    def handle(event: Event) -> None:
        if event.offset == 0:
            started.set()
            release.wait(10)
        handled.append(event.offset)

    handler = build(handle, {})
    dispatcher = Dispatcher()
    tracker = OffsetTracker()
    track = tracker.start(TP, 0)
    dispatcher.submit(handler, tracker.deliver(track, _events(0), 1))
    assert started.wait(10)
    dispatcher.discard(TP)
    tracker.forget(TP)
    track = tracker.start(TP, 0)
    later = tracker.deliver(track, _events(0, 1), 2)
    dispatcher.submit(handler, later)
    release.set()
    deadline = time.monotonic() + 10
    while not later.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    assert later.finished
    assert dispatcher.crashed is None
    assert dispatcher.close(5)


def test_a_hung_call_with_a_timeout_does_not_keep_the_process_alive() -> None:
    """A handler call that never returns, abandoned by its timeout, runs on a
    daemon thread: the process exits once the dispatcher is closed."""
    script = textwrap.dedent("""
        import threading, time
        from streamcp.dispatcher import Dispatcher
        from streamcp.events import Event, TopicPartition
        from streamcp.handlers import BatchFailed, build, failure_policy
        from streamcp.tracker import OffsetTracker

        def hang(event):
            threading.Event().wait()

        handler = build(hang, {})
        handler.policy = failure_policy(hang, {"timeout_s": 0.2, "retry_attempts": 1})
        tracker = OffsetTracker()
        track = tracker.start(TopicPartition("t", 0), 0)
        unit = tracker.deliver(track, [Event(topic="t", partition=0, offset=0)], 0)
        dispatcher = Dispatcher()
        dispatcher.submit(handler, unit)
        time.sleep(0.5)
        tracker.forget(TopicPartition("t", 0))
        dispatcher.close(2)
        print("closed")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "closed" in proc.stdout


def test_an_inline_dispatcher_runs_units_on_the_callers_thread_in_run_ready() -> None:
    """Inline, nothing runs until run_ready(), which handles every queued
    unit on the calling thread; no worker thread is started."""
    threads: list[int] = []
    handler = build(lambda event: threads.append(threading.get_ident()), {})
    before = threading.active_count()
    dispatcher = Dispatcher(inline=True)
    assert threading.active_count() == before
    tracker = OffsetTracker()
    units = []
    for partition in (0, 1):
        tp = TopicPartition("t", partition)
        track = tracker.start(tp, 0)
        events = [Event(topic="t", partition=partition, offset=o) for o in (0, 1)]
        units.append(tracker.deliver(track, events, 0))
        dispatcher.submit(handler, units[-1])
    time.sleep(0.05)
    assert not any(unit.done for unit in units)
    dispatcher.run_ready()
    assert all(unit.finished for unit in units)
    assert threads == [threading.get_ident()] * 4
    assert dispatcher.finished_events() == 4
    assert dispatcher.close(1)


def test_inline_a_retry_waits_out_its_backoff_without_holding_other_partitions() -> (
    None
):
    """A failed event's retry is not run until its backoff has passed: the
    call returns at once, the other partition's unit is handled meanwhile,
    and a later call after the backoff resumes at the failed event."""
    now = [100.0]
    calls: list[tuple[int, int]] = []

    def handle(event: Event) -> None:
        calls.append((event.partition, event.offset))
        if event.partition == 0 and event.offset == 1 and calls.count((0, 1)) == 1:
            raise RuntimeError("first attempt fails")

    handler = build(handle, {})
    handler.policy = failure_policy(
        handle, {"retry_attempts": 3, "retry_backoff_s": 5.0}
    )
    dispatcher = Dispatcher(inline=True, clock=lambda: now[0])
    tracker = OffsetTracker()
    failing = tracker.deliver(tracker.start(TP, 0), _events(0, 1, 2), 0)
    other_tp = TopicPartition("t", 1)
    other = tracker.deliver(
        tracker.start(other_tp, 0),
        [Event(topic="t", partition=1, offset=o) for o in (0, 1)],
        0,
    )
    dispatcher.submit(handler, failing)
    dispatcher.submit(handler, other)
    dispatcher.run_ready()
    assert (failing.done, failing.retry_at is not None) == (1, True)
    assert other.finished
    dispatcher.run_ready()  # the backoff has not passed: nothing is retried
    assert calls.count((0, 1)) == 1
    now[0] += 5.0
    dispatcher.run_ready()
    assert failing.finished
    assert calls == [(0, 0), (0, 1), (1, 0), (1, 1), (0, 1), (0, 2)]
    assert dispatcher.close(1)


@pytest.mark.parametrize(
    ("execution", "concurrency", "timeout_s", "inline"),
    [
        ("auto", 1, None, True),
        ("auto", 2, None, False),
        ("auto", 1, 5.0, False),
        ("threads", 1, None, False),
        ("inline", 1, None, True),
    ],
)
def test_where_handlers_run_follows_consumer_execution(
    execution: str, concurrency: int, timeout_s: float | None, inline: bool
) -> None:
    """auto is inline unless several workers or a handler timeout need the
    loop to go on polling while a handler works."""

    def handle(event: Event) -> None:
        pass

    handler = build(handle, {})
    if timeout_s is not None:
        handler.policy = failure_policy(handle, {"timeout_s": timeout_s})
    consumer = ConsumerConfig(execution=execution, concurrency=concurrency)  # type: ignore[arg-type]
    assert runs_inline(consumer, [handler]) is inline


def test_inline_refuses_a_handler_timeout_and_several_workers() -> None:
    """A timeout cannot be enforced inline, nor can concurrency: both are
    configuration errors naming consumer.execution."""

    def handle(event: Event) -> None:
        pass

    handler = build(handle, {})
    handler.policy = failure_policy(handle, {"timeout_s": 1.0})
    with pytest.raises(ConfigError, match="timeout_s") as refused:
        runs_inline(ConsumerConfig(execution="inline"), [handler])
    assert refused.value.field == "consumer.execution"
    with pytest.raises(ConfigError, match="concurrency is 2") as refused:
        ConsumerConfig(execution="inline", concurrency=2)
    assert refused.value.field == "consumer.execution"


def test_inline_a_slow_unit_yields_to_the_loop_between_events() -> None:
    """Inline, a unit that runs longer than the slice stops between two
    events and hands the thread back (the loop can commit and see signals);
    the next run_ready() goes on at the next event, none handled twice."""
    handled: list[int] = []

    def handle(event: Event) -> None:
        time.sleep(0.02)
        handled.append(event.offset)

    dispatcher = Dispatcher(inline=True, slice_s=0.05)
    tracker = OffsetTracker()
    unit = tracker.deliver(tracker.start(TP, 0), _events(*range(20)), 0)
    dispatcher.submit(build(handle, {}), unit)
    calls = 0
    while not unit.finished and calls < 100:
        dispatcher.run_ready()
        calls += 1
        if not unit.finished:
            assert dispatcher.has_ready()
    assert unit.finished
    assert calls > 1, "the unit never yielded"
    assert handled == list(range(20))
    assert not dispatcher.has_ready()
    assert dispatcher.close(1)


class _JsonBatches:
    value_codec = "json"

    def __init__(self) -> None:
        self.handled: list[int] = []

    def handle_batch(self, events: Sequence[Event]) -> None:
        self.handled.extend(event.offset for event in events)


def test_an_undecodable_event_fails_alone_and_the_batch_before_it_is_handled() -> None:
    """A batch handler with a codec: the events before one that does not
    decode are handled, that one takes the policy (skip here) by itself, and
    the rest of the batch is handled after it."""
    values = [b'{"n": %d}' % o for o in range(10)]
    values[6] = b"not json"
    events = [
        Event(topic="t", partition=0, offset=o, value=v) for o, v in enumerate(values)
    ]
    handler = build(_JsonBatches, {})
    handler.policy = failure_policy(
        _JsonBatches, {"value_codec": "json", "on_failure": "skip"}
    )
    tracker = OffsetTracker()
    unit = tracker.deliver(tracker.start(TP, 0), events, 0)
    assert run_unit(handler, unit) is Outcome.DONE
    instance = handler.instance  # type: ignore[attr-defined]
    assert instance.handled == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    assert (unit.skipped, unit.done) == (1, 10)


def test_a_batch_failed_offset_past_the_batch_moves_nothing() -> None:
    """BatchFailed naming an offset beyond the batch breaks the contract:
    the unit stays at its first event (it fails there), nothing counts as
    succeeded, and nothing raises."""

    class Liar:
        def handle_batch(self, events: Sequence[Event]) -> None:
            raise BatchFailed(10**9) from ValueError("bad")

    handler = build(Liar, {})
    handler.policy = failure_policy(Liar, {"retry_attempts": 1, "on_failure": "pause"})
    tracker = OffsetTracker()
    track = tracker.start(TP, 0)
    unit = tracker.deliver(track, _events(0, 1, 2), 0)
    assert run_unit(handler, unit) is Outcome.FAILED
    assert unit.done == 0
    assert isinstance(unit.failure, ValueError)
    assert track.checkpoint() == 0
