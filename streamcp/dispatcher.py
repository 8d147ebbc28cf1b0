"""The dispatcher: runs handler work off the polling thread.

Units are queued on *lanes*. With ``ordering = "partition"`` a lane is one
topic-partition, so a partition's events are handled one at a time in
offset order; with ``ordering = "key"`` a partition's events are spread over
``concurrency`` lanes by key, so events of one key keep their order while
different keys run side by side. A lane runs on at most one worker at a
time; ``concurrency`` worker threads serve all lanes.

Workers record progress on the unit itself (see :mod:`streamcp.tracker`);
the loop reads it. After a failure a lane runs nothing more of that
partition's generation, because later events must not overtake it.
"""

from __future__ import annotations

import threading
import zlib
from collections import deque
from collections.abc import Sequence
from typing import Any

import structlog

from streamcp.events import Event, TopicPartition
from streamcp.handlers import BatchFailed, Handler
from streamcp.tracker import Unit

log = structlog.get_logger("streamcp.dispatcher")

LaneKey = tuple[TopicPartition, int]


class _Lane:
    __slots__ = ("busy", "failed_generation", "key", "units")

    def __init__(self, key: LaneKey) -> None:
        self.key = key
        self.units: deque[tuple[Handler, Unit]] = deque()
        self.busy = False
        self.failed_generation = -1


class Dispatcher:
    """Hands units to worker threads; never blocks the caller.

    :meth:`submit` and :meth:`discard` are called from the loop's thread;
    :meth:`close` waits for the workers to stop (a handler call in progress
    is waited for, up to ``timeout_s``).
    """

    def __init__(self, *, concurrency: int = 1, ordering: str = "partition") -> None:
        self._concurrency = concurrency
        self._by_key = ordering == "key"
        self._lanes: dict[LaneKey, _Lane] = {}
        self._ready: deque[_Lane] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self.finished_counts = [0] * concurrency
        self._threads = [
            threading.Thread(
                target=self._work, args=(index,), name=f"streamcp-worker-{index}",
                daemon=True,
            )
            for index in range(concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def finished_events(self) -> int:
        """Events that succeeded since the dispatcher started."""
        return sum(self.finished_counts)

    def split(self, events: Sequence[Event]) -> list[tuple[int, list[Event]]]:
        """Group one partition's events into (lane index, events) runs."""
        if not self._by_key or self._concurrency == 1:
            return [(0, list(events))]
        buckets: dict[int, list[Event]] = {}
        lanes = self._concurrency
        for event in events:
            index = zlib.crc32(event.key) % lanes if event.key is not None else 0
            buckets.setdefault(index, []).append(event)
        return sorted(buckets.items())

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
                if not lane.busy:
                    del self._lanes[key]

    def close(self, timeout_s: float = 10.0) -> bool:
        """Stop the workers; True when all stopped within ``timeout_s``."""
        with self._cond:
            self._closing = True
            for lane in self._lanes.values():
                for _, unit in lane.units:
                    unit.cancelled = True
            self._cond.notify_all()
        deadline = timeout_s
        for thread in self._threads:
            thread.join(deadline)
        return not any(thread.is_alive() for thread in self._threads)

    def _work(self, index: int) -> None:
        while True:
            with self._cond:
                while not self._ready and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                lane = self._ready.popleft()
            self._drain(lane, index)

    def _drain(self, lane: _Lane, index: int) -> None:
        while True:
            with self._cond:
                if not lane.units or self._closing:
                    lane.busy = False
                    if not lane.units:
                        self._lanes.pop(lane.key, None)
                    return
                handler, unit = lane.units.popleft()
            if unit.cancelled or unit.generation == lane.failed_generation:
                continue
            self.finished_counts[index] += run_unit(handler, unit)
            if unit.failure is not None:
                lane.failed_generation = unit.generation


def run_unit(handler: Handler, unit: Unit) -> int:
    """Handle one unit's events; returns how many succeeded.

    Progress goes to ``unit.done`` after each event; a failure is stored in
    ``unit.failure`` and stops the unit. Never raises for a handler error.
    """
    events = unit.events
    if unit.cancelled or not events:
        return 0
    if getattr(handler, "batches", False):
        return _run_batch(handler, unit, events)
    handle: Any = getattr(handler, "per_event", None) or handler.handle
    done = 0
    try:
        for event in events:
            if unit.cancelled:
                break
            handle(event)
            done += 1
            unit.done = done
    except Exception as exc:  # noqa: BLE001  # any handler error is an outcome
        unit.failure = exc
    return done


def _run_batch(handler: Handler, unit: Unit, events: Sequence[Event]) -> int:
    try:
        handler.handle_batch(events)
    except BatchFailed as exc:
        done = _index_of(events, exc.offset)
        unit.done = done
        unit.failure = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
        return done
    except Exception as exc:  # noqa: BLE001  # any handler error is an outcome
        unit.failure = exc
        return 0
    unit.done = len(events)
    return len(events)


def _index_of(events: Sequence[Event], offset: int) -> int:
    for index, event in enumerate(events):
        if event.offset >= offset:
            return index
    return len(events)
