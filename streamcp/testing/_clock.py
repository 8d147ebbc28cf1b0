"""A clock that moves only when told to."""

from __future__ import annotations


class ManualClock:
    """A monotonic clock in seconds for tests: ``clock()`` reads it.

    It starts at ``start_s`` and moves only by :meth:`advance`, so commit
    policies measured in seconds fire exactly when a test says.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = start_s

    def __call__(self) -> float:
        return self._now_s

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds``; returns the new reading.

        Raises ``ValueError`` for a negative step: a monotonic clock never
        goes back.
        """
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back, got {seconds!r}")
        self._now_s += seconds
        return self._now_s
