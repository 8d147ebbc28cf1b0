"""The dispatcher under revocation races and hung handler calls."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

from streamcp.dispatcher import Dispatcher
from streamcp.events import Event, TopicPartition
from streamcp.handlers import build
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
        from streamcp.handlers import build, failure_policy
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
