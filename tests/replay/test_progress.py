"""The progress display: a bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

from streamcp.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_terminal_shows_a_redrawn_bar_with_rate_and_time_left() -> None:
    """On a terminal the line is redrawn in place with a bar, events done of
    the total, the rate and the time left."""
    out, clock = io.StringIO(), Clock()
    progress = Progress("r1", 1000, out, tty=True, clock=clock)
    clock.now += 2
    progress.update(200)
    text = out.getvalue()
    assert text.startswith("\r\x1b[2K[######")
    assert "200/1000 events (20%), 100 events/s, 800 remaining, about 8s left" in text
    assert "\n" not in text


def test_off_a_terminal_plain_lines_name_the_run_at_most_every_interval() -> None:
    """Off a terminal each line is plain and names the run, and updates
    within the interval print nothing."""
    out, clock = io.StringIO(), Clock()
    progress = Progress("r1", 100, out, tty=False, clock=clock, interval_s=10)
    clock.now += 5
    progress.update(10)
    assert out.getvalue() == ""
    clock.now += 5
    progress.update(50)
    assert out.getvalue() == (
        "replay r1: 50/100 events (50%), 5 events/s, 50 remaining, about 10s left\n"
    )


def test_finish_reports_the_outcome_and_counts_from_the_resumed_total() -> None:
    """The last line gives the status, and the rate counts only events done
    by this process (a resumed run starts from its earlier count)."""
    out, clock = io.StringIO(), Clock()
    progress = Progress("r1", 100, out, done=60, tty=False, clock=clock)
    clock.now += 4
    progress.finish(100, "completed")
    assert (
        out.getvalue()
        == "replay r1: 100/100 events (100%) in 4s, 10 events/s: completed\n"
    )
