"""What every contender process shares: its spec, its meter, its report.

This module must import in every contender's interpreter, including the
peers' virtual environments, so it uses the standard library only. A
contender reads its spec (JSON) from ``argv[1]``, consumes until it has
*counted* ``spec["events"]`` events (never by asking the broker for end
offsets, which the local broker gets wrong for multi-record batches), and
prints one line ``BENCH-RESULT {...}`` on stdout.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

RESULT_MARK = "BENCH-RESULT "


def load_spec() -> dict[str, Any]:
    """The spec the runner passed as the first argument."""
    spec: dict[str, Any] = json.loads(sys.argv[1])
    return spec


def kafka_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """The librdkafka settings every confluent-kafka contender gets."""
    settings: dict[str, Any] = {
        "bootstrap.servers": spec["bootstrap"],
        "group.id": spec["group"],
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "range",
    }
    settings.update(spec["librdkafka"])
    return settings


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """Wall and CPU time from the first event to the last, and peak RSS.

    ``start`` is called when the first event is seen, ``stop`` when the
    last one counted is; CPU time covers every thread of the process.
    """

    def __init__(self) -> None:
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self._cpu_start = 0.0
        self._cpu_stop = 0.0
        self._rss_start_kb = 0

    def start(self) -> None:
        if self.started_at is None:
            self._rss_start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self._cpu_start = _cpu_s()
            self.started_at = time.perf_counter()

    def stop(self) -> None:
        if self.stopped_at is None:
            self.stopped_at = time.perf_counter()
            self._cpu_stop = _cpu_s()

    def result(self, events: int, **extra: Any) -> dict[str, Any]:
        wall = 0.0
        if self.started_at is not None and self.stopped_at is not None:
            wall = self.stopped_at - self.started_at
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "events": events,
            "wall_s": wall,
            "cpu_s": self._cpu_stop - self._cpu_start,
            "cpu_total_s": usage.ru_utime + usage.ru_stime,
            # Linux reports ru_maxrss in KiB.
            "peak_rss_kb": usage.ru_maxrss,
            # Peak RSS when the first event arrived: start-up and imports.
            "rss_at_first_event_kb": self._rss_start_kb,
            **extra,
        }


def emit(result: dict[str, Any]) -> None:
    """Report to the runner: one marked JSON line on stdout.

    Written to file descriptor 1 itself: some frameworks replace
    ``sys.stdout`` with a logger.
    """
    sys.stdout.flush()
    os.write(1, (RESULT_MARK + json.dumps(result) + "\n").encode())
