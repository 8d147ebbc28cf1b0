"""A handler for tests: records every handled event, fails or stalls on cue.

Each handled event appends one line ``<pid> <topic> <partition> <offset>``
to ``path`` (one ``write`` of an ``O_APPEND`` file, so lines from several
processes never interleave), after the event succeeded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamcp.events import Event


@dataclass(frozen=True)
class RecorderOptions:
    path: str
    fail_at: list[str] = field(default_factory=list)  # "partition:offset"
    delay_ms: int = 0
    slow_at: list[str] = field(default_factory=list)  # "partition:offset:seconds"
    slow_once: bool = False  # stall at a slow_at event the first time only


class Recorder:
    Options = RecorderOptions

    def __init__(self, options: RecorderOptions) -> None:
        self.options = options
        self._fail = {tuple(map(int, s.split(":"))) for s in options.fail_at}
        self._slow = {
            (int(p), int(o)): float(s)
            for p, o, s in (item.split(":") for item in options.slow_at)
        }
        self._fd = -1

    def setup(self) -> None:
        self._fd = os.open(self.options.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def handle(self, event: Event) -> None:
        where = (event.partition, event.offset)
        if where in self._fail:
            raise RuntimeError(f"told to fail at {where}")
        if where in self._slow:
            stall = self._slow[where]
            if self.options.slow_once:
                del self._slow[where]
            time.sleep(stall)
        if self.options.delay_ms:
            time.sleep(self.options.delay_ms / 1000)
        line = f"{os.getpid()} {event.topic} {event.partition} {event.offset}\n"
        os.write(self._fd, line.encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)


@dataclass(frozen=True)
class Handled:
    pid: int
    topic: str
    partition: int
    offset: int


def read_handled(path: Path) -> list[Handled]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        pid, topic, partition, offset = line.split()
        rows.append(Handled(int(pid), topic, int(partition), int(offset)))
    return rows


def offsets_by_partition(rows: Sequence[Handled]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for row in rows:
        found.setdefault(row.partition, []).append(row.offset)
    return found
