"""Conformance checks: each passes on a correct handler and fails on the
handler made wrong for it, with a message that says what to change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from streamcp.testing import (
    CHECKS,
    ConformanceError,
    ExpectedError,
    check_conformance,
    events_from_dicts,
)
from tests.testing.samples import (
    BAD_EVENT,
    EVENTS,
    AcceptsBadEvents,
    BatchWordCount,
    CachesState,
    CountsRedeliveries,
    CountsReplays,
    InvalidEvent,
    LeavesSocket,
    LeavesThread,
    Ledger,
    RaisesOnClose,
    RetriesBadEvents,
    WordCount,
)

FINAL_BAD_EVENT = [ExpectedError(BAD_EVENT, raises=InvalidEvent, retryable=False)]


def run_checks(factory: Callable[[Ledger], object], **settings: Any) -> Any:
    settings.setdefault("replay", "skip")
    settings.setdefault("errors", FINAL_BAD_EVENT)
    settings.setdefault("close_timeout_s", 0.2)
    return check_conformance(
        factory,
        EVENTS,
        state=Ledger,
        snapshot=Ledger.snapshot,
        raise_on_failure=False,
        **settings,
    )


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(WordCount, id="per-event"),
        pytest.param(BatchWordCount, id="batch"),
    ],
)
def test_a_correct_handler_passes_every_check(handler: type[WordCount]) -> None:
    """An idempotent handler that skips replays, fails bad events with a
    NonRetryable error and closes what it opened passes all five checks,
    per event and in batches."""
    report = run_checks(handler)

    assert report.passed, str(report)
    assert [r.name for r in report.results] == list(CHECKS)
    assert {r.status for r in report.results} == {"passed"}


class Cleanup:
    """A factory that remembers what it made, to undo their leaks after."""

    def __init__(self, cls: type[WordCount]) -> None:
        self.cls = cls
        self.made: list[WordCount] = []

    def __call__(self, ledger: Ledger) -> WordCount:
        handler = self.cls(ledger)
        self.made.append(handler)
        return handler

    def release(self) -> None:
        for handler in self.made:
            release = getattr(handler, "release", None)
            if release is not None:
                release()


@pytest.mark.parametrize(
    ("check", "handler", "settings", "advice"),
    [
        pytest.param(
            "at_least_once",
            CountsRedeliveries,
            {},
            "idempotent",
            id="at_least_once-counts-redelivered-events",
        ),
        pytest.param(
            "replay",
            CountsReplays,
            {"replay": "skip"},
            "event.is_replay",
            id="replay-declared-skip-but-applies-them",
        ),
        pytest.param(
            "replay",
            WordCount,
            {"replay": "overwrite"},
            "apply replayed events",
            id="replay-declared-overwrite-but-skips",
        ),
        pytest.param(
            "errors",
            RetriesBadEvents,
            {},
            "raise NonRetryable",
            id="errors-final-error-is-retried",
        ),
        pytest.param(
            "errors",
            AcceptsBadEvents,
            {},
            "must raise InvalidEvent",
            id="errors-bad-event-succeeds",
        ),
        pytest.param(
            "rebalance",
            CachesState,
            {},
            "not from a copy loaded in setup()",
            id="rebalance-state-cached-in-memory",
        ),
        pytest.param(
            "close", LeavesThread, {}, "'word-flusher'", id="close-thread-left-running"
        ),
        pytest.param(
            "close",
            LeavesSocket,
            {},
            "file descriptor(s) that setup() opened",
            id="close-socket-left-open",
        ),
        pytest.param(
            "close", RaisesOnClose, {}, "close() raised OSError", id="close-raises"
        ),
    ],
)
def test_a_check_fails_on_the_handler_made_wrong_for_it_and_only_that_check(
    check: str, handler: type[WordCount], settings: dict[str, Any], advice: str
) -> None:
    """Each deliberately wrong handler fails exactly the check aimed at its
    fault, and the message names the fault and what to change."""
    factory = Cleanup(handler)
    try:
        report = run_checks(factory, **settings)
    finally:
        factory.release()

    assert [r.name for r in report.failures] == [check], str(report)
    problems = " ".join(report.result(check).problems)
    assert advice in problems


def test_failed_checks_raise_one_conformance_error_listing_them_all() -> None:
    """By default a failure raises ConformanceError; its message lists every
    failed check with its problems, and it carries the whole report."""
    with pytest.raises(ConformanceError) as caught:
        check_conformance(
            CountsRedeliveries,
            EVENTS,
            state=Ledger,
            snapshot=Ledger.snapshot,
            replay="overwrite",
        )

    message = str(caught.value)
    assert "at_least_once, replay" in message
    assert "delivered again" in message
    assert caught.value.report.result("rebalance").status == "passed"


def test_a_passing_handler_returns_the_report_without_raising() -> None:
    """check_conformance returns the report when every check passed."""
    report = check_conformance(
        WordCount,
        EVENTS,
        state=Ledger,
        snapshot=Ledger.snapshot,
        replay="skip",
        errors=FINAL_BAD_EVENT,
    )
    assert report.passed


def test_undeclared_replay_and_errors_are_reported_not_run_with_what_to_pass() -> None:
    """Without replay= and errors= those two checks do not run; the report
    says so and what to pass, and not running is not a failure."""
    report = check_conformance(
        WordCount, EVENTS, state=Ledger, snapshot=Ledger.snapshot
    )

    assert report.passed
    assert report.result("replay").status == "not_run"
    assert "replay='overwrite' or 'skip'" in report.result("replay").problems[0]
    assert report.result("errors").status == "not_run"


def test_checks_picks_which_checks_run() -> None:
    """checks= runs only the named checks, in the standard order."""
    report = run_checks(CountsRedeliveries, checks=["close", "at_least_once"])

    assert [r.name for r in report.results] == ["at_least_once", "close"]
    assert report.result("at_least_once").status == "failed"


def test_a_sample_event_that_fails_in_the_clean_run_fails_every_check() -> None:
    """When a good event fails even once delivered, nothing can be compared:
    every check fails saying which event and to move it to errors=."""
    events = events_from_dicts([{"word": "fig"}, {"nope": 1}])
    report = check_conformance(
        WordCount,
        events,
        state=Ledger,
        snapshot=Ledger.snapshot,
        replay="skip",
        raise_on_failure=False,
    )

    assert not report.passed
    for result in report.failures:
        assert "the clean run failed" in result.problems[0]
        assert "offset 1" in result.problems[0]
        assert "errors=[...]" in result.problems[0]


def test_an_error_declared_retryable_that_is_final_fails_the_errors_check() -> None:
    """Declaring a NonRetryable error retryable fails: the kit saw one call."""
    report = run_checks(WordCount, errors=[ExpectedError(BAD_EVENT, retryable=True)])

    assert [r.name for r in report.failures] == ["errors"]
    assert "was not retried" in report.result("errors").problems[0]


@pytest.mark.parametrize(
    ("events", "message"),
    [
        pytest.param(EVENTS[:1], "at least 2", id="one-event"),
        pytest.param(
            [*EVENTS, *events_from_dicts([{"word": "x"}], topic="other")],
            "one topic",
            id="two-topics",
        ),
    ],
)
def test_unusable_sample_events_raise_value_error(events: Any, message: str) -> None:
    """Fewer than two events, or events of two topics, are refused."""
    with pytest.raises(ValueError, match=message):
        check_conformance(WordCount, events, state=Ledger, snapshot=Ledger.snapshot)


def test_an_unknown_check_name_raises_value_error() -> None:
    """A misspelt check name is refused, listing the known ones."""
    with pytest.raises(ValueError, match="at_least_once"):
        check_conformance(
            WordCount,
            EVENTS,
            state=Ledger,
            snapshot=Ledger.snapshot,
            checks=["idempotency"],
        )  # type: ignore[list-item]


def test_expected_error_needs_raises_or_retryable() -> None:
    """An ExpectedError that declares nothing is refused at once."""
    with pytest.raises(ValueError, match="raises="):
        ExpectedError(BAD_EVENT)
