"""The commit timer: every N events and/or every T seconds, with backoff."""

from __future__ import annotations

import pytest

from streamcp.committer import RETRY_FIRST_S, RETRY_MAX_S, CommitTimer
from streamcp.config import CommitConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_due_after_n_events() -> None:
    """With N=10, the commit is due at the tenth finished event."""
    clock = FakeClock()
    timer = CommitTimer(CommitConfig(every_events=10, every_seconds=0), clock)
    assert not timer.due(9)
    assert timer.due(10)
    timer.succeeded(10)
    assert not timer.due(19)
    assert timer.due(20)


def test_due_after_t_seconds_without_events() -> None:
    """The timer fires on idle polls too: no new event is needed."""
    clock = FakeClock()
    timer = CommitTimer(CommitConfig(every_events=0, every_seconds=2.0), clock)
    assert not timer.due(0)
    clock.now += 2.0
    assert timer.due(0)


def test_whichever_comes_first() -> None:
    """With both set, events reach N before T elapses, and T fires without events."""
    clock = FakeClock()
    timer = CommitTimer(CommitConfig(every_events=5, every_seconds=10.0), clock)
    assert timer.due(5)
    timer.succeeded(5)
    clock.now += 10.0
    assert timer.due(5)


def test_failed_commit_backs_off_exponentially_to_a_cap() -> None:
    """After failures the next attempt waits 50 ms, doubling up to 2 s."""
    clock = FakeClock()
    timer = CommitTimer(CommitConfig(every_events=1, every_seconds=0), clock)
    delays = [timer.failed() for _ in range(10)]
    assert delays[0] == RETRY_FIRST_S
    assert delays[1] == 2 * RETRY_FIRST_S
    assert max(delays) == RETRY_MAX_S
    assert not timer.due(1000)
    clock.now += RETRY_MAX_S
    assert timer.due(1000)
    timer.succeeded(1000)
    assert not timer.retrying


@pytest.mark.parametrize(
    ("events", "seconds"),
    [pytest.param(0, 0, id="both-off"), pytest.param(-1, 1, id="negative-events")],
)
def test_invalid_policy_is_refused(events: int, seconds: float) -> None:
    """A policy with neither N nor T, or a negative value, is refused."""
    from streamcp.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        CommitConfig(every_events=events, every_seconds=seconds)
    assert info.value.field == "commit.every_events"
