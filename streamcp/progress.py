"""Progress of a replay: a bar on a terminal, plain lines elsewhere.

The total is the number of offsets in the run's ranges, the most events the
run can hold: gaps (compaction, transaction markers) hold none, so a run can
end below 100 %; the final line says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

Clock = Callable[[], float]

# A terminal bar is redrawn at most ten times a second; plain lines, meant
# for log files, come every ten seconds.
TTY_INTERVAL_S = 0.1
LINE_INTERVAL_S = 10.0
BAR_WIDTH = 30


class Progress:
    """Shows events done against the run's offsets; never raises on output.

    :meth:`update` is cheap to call on every loop iteration: it draws only
    when the interval has passed.
    """

    def __init__(
        self,
        run_id: str,
        total: int,
        stream: TextIO,
        *,
        done: int = 0,
        tty: bool | None = None,
        clock: Clock = time.monotonic,
        interval_s: float | None = None,
    ) -> None:
        self._run_id = run_id
        self._total = max(total, 0)
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._clock = clock
        self._interval_s = (
            interval_s
            if interval_s is not None
            else (TTY_INTERVAL_S if self._tty else LINE_INTERVAL_S)
        )
        self._started_at = clock()
        self._shown_at = self._started_at
        # Events done before this process started (a resumed run's).
        self._base = done

    def update(self, done: int) -> None:
        """Draw the current state when the interval has passed."""
        now = self._clock()
        if now - self._shown_at < self._interval_s:
            return
        self._shown_at = now
        self._write(self.render(done, now), final=False)

    def finish(self, done: int, status: str) -> None:
        """Draw the last state and end the line."""
        now = self._clock()
        share = done / self._total if self._total else 1.0
        text = (
            f"{done}/{self._total} events ({share:.0%}) in "
            f"{_duration(now - self._started_at)}, "
            f"{self._rate(done, now):.0f} events/s: {status}"
        )
        if not self._tty:
            text = f"replay {self._run_id}: {text}"
        self._write(text, final=True)

    def render(self, done: int, now: float) -> str:
        """One line: events done, share of offsets, rate, time left."""
        rate = self._rate(done, now)
        remaining = max(self._total - done, 0)
        share = done / self._total if self._total else 1.0
        left = f"about {_duration(remaining / rate)} left" if rate > 0 else "-- left"
        counts = (
            f"{done}/{self._total} events ({share:.0%}), {rate:.0f} events/s, "
            f"{remaining} remaining, {left}"
        )
        if not self._tty:
            return f"replay {self._run_id}: {counts}"
        filled = int(BAR_WIDTH * min(share, 1.0))
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {counts}"

    def _rate(self, done: int, now: float) -> float:
        elapsed = now - self._started_at
        return (done - self._base) / elapsed if elapsed > 0 else 0.0

    def _write(self, text: str, *, final: bool) -> None:
        try:
            if self._tty:
                self._stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
            else:
                self._stream.write(text + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            # A closed or broken stream must not stop the run.
            return


def _duration(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
