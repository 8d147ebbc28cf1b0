"""A handler for replay tests: records each handled event with its run id.

Each handled event appends one line
``<pid> <topic> <partition> <offset> <run id or -> <is_replay>`` to ``path``,
in one ``write`` of an ``O_APPEND`` file, after the event succeeded.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamcp.events import Event


@dataclass(frozen=True)
class ReplayRecorderOptions:
    path: str
    delay_ms: int = 0
    fail_at: list[str] = field(default_factory=list)  # "partition:offset"


class ReplayRecorder:
    Options = ReplayRecorderOptions

    def __init__(self, options: ReplayRecorderOptions) -> None:
        self.options = options
        self._fail = {tuple(map(int, s.split(":"))) for s in options.fail_at}
        self._fd = -1

    def setup(self) -> None:
        self._fd = os.open(self.options.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def handle(self, event: Event) -> None:
        if (event.partition, event.offset) in self._fail:
            raise RuntimeError(f"told to fail at {event.partition}:{event.offset}")
        if self.options.delay_ms:
            time.sleep(self.options.delay_ms / 1000)
        line = (
            f"{os.getpid()} {event.topic} {event.partition} {event.offset} "
            f"{event.run_id or '-'} {int(event.is_replay)}\n"
        )
        os.write(self._fd, line.encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)


@dataclass(frozen=True)
class Seen:
    pid: int
    partition: int
    offset: int
    run_id: str | None
    is_replay: bool


def read_seen(path: Path) -> list[Seen]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        pid, _topic, partition, offset, run_id, replay = line.split()
        rows.append(
            Seen(
                int(pid),
                int(partition),
                int(offset),
                None if run_id == "-" else run_id,
                replay == "1",
            )
        )
    return rows


def offsets_of(rows: list[Seen]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for row in rows:
        found.setdefault(row.partition, []).append(row.offset)
    return found
