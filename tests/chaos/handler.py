"""The chaos suite's handler: records every handled event, apart from the
checkpoints, and mixes in slow calls and calls that fail once.

Each call appends one line to ``path`` (one ``write`` of an ``O_APPEND``
file, so lines from several processes never interleave)::

    <kind> <unix time> <pid> <partition> <offset> <event id>

``kind`` is ``H`` for an event handled successfully, ``F`` for a call that
failed on purpose (its retry must succeed), ``S`` for a call slowed down on
purpose (an ``H`` line follows when it succeeds). Which events fail or slow
down is a pure function of the seed, partition and offset, so every process
picks the same ones; an event fails only on its first call in a process.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streamcp.events import Event


class InjectedFailureError(RuntimeError):
    """A failure the suite asked for; the retry succeeds."""


@dataclass(frozen=True)
class ChaosHandlerOptions:
    path: str
    seed: int = 0
    fail_every: int = 0  # about one event in N fails on its first call
    slow_every: int = 0  # about one event in N is slow
    slow_ms: int = 200


class ChaosHandler:
    Options = ChaosHandlerOptions

    def __init__(self, options: ChaosHandlerOptions) -> None:
        self.options = options
        self._failed: set[tuple[int, int]] = set()
        self._fd = -1

    def setup(self) -> None:
        self._fd = os.open(
            self.options.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )

    def handle(self, event: Event) -> None:
        where = (event.partition, event.offset)
        draw = zlib.crc32(f"{self.options.seed}:{where}".encode())
        if self._picked(draw, self.options.fail_every) and where not in self._failed:
            self._failed.add(where)
            self._write("F", event)
            raise InjectedFailureError(f"injected failure at {where}")
        if self._picked(draw >> 12, self.options.slow_every):
            self._write("S", event)
            time.sleep(self.options.slow_ms / 1000)
        self._write("H", event)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @staticmethod
    def _picked(draw: int, every: int) -> bool:
        return every > 0 and draw % every == 0

    def _write(self, kind: str, event: Event) -> None:
        value = (event.value or b"").decode(errors="replace") or "-"
        line = (
            f"{kind} {time.time():.6f} {os.getpid()} {event.partition} "
            f"{event.offset} {value}\n"
        )
        os.write(self._fd, line.encode())


@dataclass(frozen=True, slots=True)
class Call:
    """One line of the record."""

    kind: str
    at: float
    pid: int
    partition: int
    offset: int
    event_id: str


def read_calls(path: Path) -> Iterator[Call]:
    """The record's lines in the order they were written.

    A torn last line (a process killed in the middle of ``write`` cannot
    tear one, but a full disk could) is skipped.
    """
    if not path.exists():
        return
    with path.open() as lines:
        for line in lines:
            parts = line.split()
            if len(parts) != 6:
                continue
            kind, at, pid, partition, offset, event_id = parts
            yield Call(kind, float(at), int(pid), int(partition), int(offset), event_id)
