"""A handler for redrive tests: the fixed handler, with every event it saw.

Each call appends one JSON line to ``path`` (one ``write`` of an
``O_APPEND`` file): the outcome (``ok`` or ``fail``), the process id and
everything the event carried (topic, partition, offset, key, value,
headers, timestamp, run id, is_replay). An event whose original position
is in ``fail_at`` fails every time; one in ``flaky_at`` fails on its first
call in this process only.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamcp.events import Event


@dataclass(frozen=True)
class FixedOptions:
    path: str
    fail_at: list[str] = field(default_factory=list)  # "partition:offset"
    flaky_at: list[str] = field(default_factory=list)  # "partition:offset"
    delay_ms: int = 0


class Fixed:
    Options = FixedOptions

    def __init__(self, options: FixedOptions) -> None:
        self.options = options
        self._failed_once: set[str] = set()
        self._fd = -1

    def setup(self) -> None:
        self._fd = os.open(self.options.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def handle(self, event: Event) -> None:
        where = f"{event.partition}:{event.offset}"
        if where in self.options.fail_at:
            self._write(event, "fail")
            raise RuntimeError(f"still broken at {where}")
        if where in self.options.flaky_at and where not in self._failed_once:
            self._failed_once.add(where)
            self._write(event, "fail")
            raise RuntimeError(f"flaky at {where}")
        if self.options.delay_ms:
            time.sleep(self.options.delay_ms / 1000)
        self._write(event, "ok")

    def _write(self, event: Event, outcome: str) -> None:
        line = {
            "outcome": outcome,
            "pid": os.getpid(),
            "topic": event.topic,
            "partition": event.partition,
            "offset": event.offset,
            "key": _text(event.key),
            "value": _text(event.value),
            "headers": [[name, _text(value)] for name, value in event.headers],
            "timestamp_ms": event.timestamp_ms,
            "run_id": event.run_id,
            "is_replay": event.is_replay,
        }
        os.write(self._fd, (json.dumps(line) + "\n").encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode()


def read_calls(path: Path) -> list[dict[str, Any]]:
    """Every call the handler recorded, in order."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def handled(path: Path) -> list[dict[str, Any]]:
    """The calls that succeeded."""
    return [call for call in read_calls(path) if call["outcome"] == "ok"]


def noop(event: Event) -> None:
    """A handler with no options that does nothing."""
