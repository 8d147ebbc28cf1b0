"""The redrive handler and the choice of handler, without a broker."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

from streamcp.config import build_config
from streamcp.dispatcher import Outcome, run_unit
from streamcp.errors import ConfigError, NonRetryable, NotADeadLetter
from streamcp.events import Event, TopicPartition
from streamcp.failures import FailurePolicy
from streamcp.handlers import BatchFailed, build, failure_policy
from streamcp.redrive import RedriveHandler, original_event, redrive_handler
from streamcp.redrive_ledger import Outcome as Noted
from streamcp.redrive_ledger import Refused, StillFailing
from streamcp.tracker import Unit

DLQ = TopicPartition("orders.dlq", 0)
HEADERS = [
    ("trace", b"t-1"),
    ("streamcp.original.topic", b"orders"),
    ("streamcp.original.partition", b"3"),
    ("streamcp.original.offset", b"41"),
    ("streamcp.original.timestamp", b"1700000000000"),
    ("streamcp.error.type", b"ValueError"),
    ("streamcp.attempts", b"3"),
    ("other", b"o"),
]


def _record(
    offset: int = 7,
    headers: Sequence[tuple[str, bytes | None]] = HEADERS,
    value: bytes | None = b'{"n": 1}',
) -> Event:
    return Event(
        topic=DLQ.topic,
        partition=DLQ.partition,
        offset=offset,
        key=b"k",
        value=value,
        headers=headers,
        timestamp_ms=1_800_000_000_000,
        run_id="run-1",
    )


class FakeLedger:
    def __init__(self) -> None:
        self.noted: dict[tuple[int, int], Noted] = {}

    def note(self, partition: int, offset: int, outcome: Noted) -> None:
        self.noted[(partition, offset)] = outcome


class RefusingDeadLetters:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, *args: Any) -> bool:
        self.sent.append(args)
        return False

    def close(self) -> None:
        pass


def _wrap(target: Any, **policy: Any) -> tuple[RedriveHandler, FakeLedger]:
    handler = build(target, {}, name="fixed")
    handler.policy = failure_policy(
        target, {"retry_backoff_s": 0.0, "retry_max_backoff_s": 0.0, **policy}
    )
    ledger = FakeLedger()
    return RedriveHandler(handler, ledger), ledger  # type: ignore[arg-type]


def _drive(wrapper: RedriveHandler, *records: Event) -> Outcome:
    """Run the records through the dispatcher's unit runner, retries included."""
    unit = Unit(DLQ, list(records), 0, 1)
    while (outcome := run_unit(wrapper, unit)) is Outcome.RETRY:
        time.sleep(max(0.0, (unit.retry_at or 0) - time.monotonic()))
    return outcome


def test_original_event_is_rebuilt_from_the_streamcp_headers() -> None:
    """Topic, partition, offset and timestamp come from the
    streamcp.original.* headers; key and value stay; only the record's own
    headers without streamcp's remain; the run id carries over."""
    event = original_event(_record())
    assert (event.topic, event.partition, event.offset) == ("orders", 3, 41)
    assert event.timestamp_ms == 1_700_000_000_000
    assert (event.key, event.value) == (b"k", b'{"n": 1}')
    assert list(event.headers) == [("trace", b"t-1"), ("other", b"o")]
    assert event.run_id == "run-1" and event.is_replay


@pytest.mark.parametrize(
    ("drop", "replace", "reason"),
    [
        pytest.param(
            "streamcp.original.topic",
            None,
            "it has no streamcp.original.topic header",
            id="no-topic",
        ),
        pytest.param(
            "streamcp.original.offset",
            None,
            "it has no streamcp.original.offset header",
            id="no-offset",
        ),
        pytest.param(
            "streamcp.original.partition",
            b"-1",
            "its streamcp.original.partition header is not a number: '-1'",
            id="negative-partition",
        ),
        pytest.param(
            "streamcp.original.timestamp",
            b"soon",
            "its streamcp.original.timestamp header is not a number: 'soon'",
            id="bad-timestamp",
        ),
        pytest.param(
            "streamcp.original.topic",
            b"\xff",
            "its streamcp.original.topic header is not UTF-8 text",
            id="not-utf8",
        ),
    ],
)
def test_record_without_usable_headers_is_not_a_dead_letter_record(
    drop: str, replace: bytes | None, reason: str
) -> None:
    """A missing or malformed streamcp.original.* header raises
    NotADeadLetter at the record's own position, saying which header."""
    headers = [(n, v) for n, v in HEADERS if n != drop]
    if replace is not None:
        headers.append((drop, replace))
    with pytest.raises(NotADeadLetter) as caught:
        original_event(_record(headers=headers))
    assert caught.value.reason == reason
    assert (caught.value.topic, caught.value.offset) == ("orders.dlq", 7)
    assert "not a streamcp dead-letter record" in str(caught.value)


def test_the_last_streamcp_headers_name_the_event_that_failed() -> None:
    """A record whose event carried streamcp headers of its own when it
    failed (it came from a dead-letter topic) has two sets; the last one,
    added for this failure, names the original event."""
    older = [
        ("streamcp.original.topic", b"upstream"),
        ("streamcp.original.partition", b"0"),
        ("streamcp.original.offset", b"5"),
    ]
    event = original_event(_record(headers=[*older, *HEADERS]))
    assert (event.topic, event.partition, event.offset) == ("orders", 3, 41)


def test_missing_timestamp_header_gives_an_event_without_timestamp() -> None:
    """Only topic, partition and offset are required; no timestamp header
    (or an empty one) means an event with no timestamp."""
    headers = [(n, v) for n, v in HEADERS if n != "streamcp.original.timestamp"]
    assert original_event(_record(headers=headers)).timestamp_ms is None


def test_retries_apply_and_a_recovered_event_is_noted_redriven() -> None:
    """A handler failing twice then succeeding, with 3 attempts, is called
    three times through the dispatcher's retries and noted redriven."""
    calls: list[Event] = []

    def flaky(event: Event) -> None:
        calls.append(event)
        if len(calls) < 3:
            raise RuntimeError("not yet")

    wrapper, ledger = _wrap(flaky, retry_attempts=3)
    assert _drive(wrapper, _record()) is Outcome.DONE
    assert len(calls) == 3 and calls[0].topic == "orders"
    assert ledger.noted == {(0, 7): None}


def test_event_failing_every_attempt_is_noted_still_failing_and_passed() -> None:
    """After the last attempt the record is noted still failing, with the
    error, the attempts and both positions, and the unit goes on to the
    next record (nothing pauses or fails)."""

    def broken(event: Event) -> None:
        if event.offset == 41:
            raise ValueError("still bad")

    wrapper, ledger = _wrap(broken, retry_attempts=2)
    second = [(n, v) for n, v in HEADERS if n != "streamcp.original.offset"]
    second.append(("streamcp.original.offset", b"42"))
    assert _drive(wrapper, _record(7), _record(8, second)) is Outcome.DONE
    entry = ledger.noted[(0, 7)]
    assert isinstance(entry, StillFailing)
    assert (entry.partition, entry.offset) == (0, 7)
    assert (entry.original_topic, entry.original_partition) == ("orders", 3)
    assert (entry.original_offset, entry.attempts) == (41, 2)
    assert (entry.error_type, entry.error_message) == ("ValueError", "still bad")
    assert ledger.noted[(0, 8)] is None


@pytest.mark.parametrize(
    ("policy", "error", "expected_type"),
    [
        pytest.param({}, NonRetryable("no use"), "NonRetryable", id="non-retryable"),
        pytest.param(
            {"value_codec": "json"}, None, "DecodeError", id="undecodable-value"
        ),
    ],
)
def test_errors_not_worth_retrying_are_still_failing_after_one_attempt(
    policy: dict[str, Any], error: Exception | None, expected_type: str
) -> None:
    """A NonRetryable error, or a value the handler's codec cannot decode,
    is noted still failing at once, with attempts 1."""
    calls: list[Event] = []

    def handler(event: Event) -> None:
        calls.append(event)
        if error is not None:
            raise error

    wrapper, ledger = _wrap(handler, retry_attempts=5, **policy)
    record = _record(value=b"{not json" if policy else b"x")
    assert _drive(wrapper, record) is Outcome.DONE
    entry = ledger.noted[(0, 7)]
    assert isinstance(entry, StillFailing)
    assert (entry.error_type, entry.attempts) == (expected_type, 1)
    assert len(calls) == (0 if policy else 1)


def test_decoded_value_reaches_the_handler_with_its_codec() -> None:
    """The handler's codecs decode the original event's key and value."""
    seen: list[Any] = []
    wrapper, ledger = _wrap(lambda e: seen.append(e.decoded_value), value_codec="json")
    assert _drive(wrapper, _record()) is Outcome.DONE
    assert seen == [{"n": 1}] and ledger.noted == {(0, 7): None}


def test_call_overrunning_the_timeout_counts_as_a_failed_attempt() -> None:
    """A call that takes longer than the handler's timeout_s fails that
    attempt (HandlerTimeout) even though it returned."""
    wrapper, ledger = _wrap(
        lambda e: time.sleep(0.05), retry_attempts=2, timeout_s=0.01
    )
    assert _drive(wrapper, _record()) is Outcome.DONE
    entry = ledger.noted[(0, 7)]
    assert isinstance(entry, StillFailing)
    assert (entry.error_type, entry.attempts) == ("HandlerTimeout", 2)


def test_batch_handler_failure_notes_the_cause() -> None:
    """A handler with only handle_batch gets one original event per call;
    BatchFailed's cause is the error recorded."""

    class Batches:
        def handle_batch(self, events: Sequence[Event]) -> None:
            raise BatchFailed(events[0].offset) from KeyError("gone")

    wrapper, ledger = _wrap(Batches, retry_attempts=1)
    assert _drive(wrapper, _record()) is Outcome.DONE
    entry = ledger.noted[(0, 7)]
    assert isinstance(entry, StillFailing) and entry.error_type == "KeyError"


def test_record_that_is_not_a_dead_letter_is_noted_refused_without_a_call() -> None:
    """A record without the headers never reaches the handler; it is noted
    refused with the reason and the unit goes on."""
    calls: list[Event] = []
    wrapper, ledger = _wrap(calls.append)
    assert _drive(wrapper, _record(headers=[("trace", b"t")])) is Outcome.DONE
    assert calls == []
    assert ledger.noted == {
        (0, 7): Refused(
            partition=0, offset=7, reason="it has no streamcp.original.topic header"
        )
    }


def test_dead_letter_to_that_does_not_take_the_event_fails_the_unit() -> None:
    """When --dead-letter-to does not acknowledge a still-failing event,
    the unit fails at that record (so the run stops there and a resume
    retries it) and no outcome is noted for it."""

    def broken(event: Event) -> None:
        raise ValueError("still bad")

    handler = build(broken, {}, name="fixed")
    handler.policy = FailurePolicy(attempts=1)
    ledger = FakeLedger()
    dead_letters = RefusingDeadLetters()
    wrapper = RedriveHandler(
        handler,
        ledger,  # type: ignore[arg-type]
        dead_letter_to="orders.retry",
        dead_letters=dead_letters,  # type: ignore[arg-type]
    )
    unit = Unit(DLQ, [_record()], 0, 1)
    assert run_unit(wrapper, unit) is Outcome.FAILED
    assert "did not take the still-failing event orders[3] offset 41" in str(
        unit.failure
    )
    assert ledger.noted == {}
    assert dead_letters.sent[0][0] == "orders.retry"


def _config(**raw: Any) -> Any:
    return build_config({"kafka": {"topics": ["orders", "users"]}, **raw})


def test_the_handler_whose_dead_letter_topic_it_is_redrives_it() -> None:
    """Without --handler: the configured handler that dead-letters to the
    topic, with its options and policy; else [handler]; with --handler, the
    table of that name, else that handler with the default policy."""
    config = _config(
        handler={"name": "tests.recorder:Recorder", "options": {"path": "a"}},
        handlers={
            "users": {
                "name": "tests.recorder:Recorder",
                "options": {"path": "u"},
                "dead_letter_topic": "users.failed",
                "retry_attempts": 7,
            }
        },
    )
    handler, name = redrive_handler(config, "users.failed", None)
    assert handler.policy.attempts == 7 and name == "tests.recorder:Recorder"
    handler, _ = redrive_handler(config, "orders.dlq", None)
    assert handler.policy.attempts == 3
    handler, _ = redrive_handler(config, "elsewhere", None)
    assert handler.policy.attempts == 3
    handler, name = redrive_handler(config, "users.failed", "tests.recorder:Recorder")
    assert handler.policy.attempts == 7
    handler, name = redrive_handler(config, "orders.dlq", "tests.redrive.handlers:noop")
    assert name == "tests.redrive.handlers:noop" and handler.policy.attempts == 3


def test_no_handler_for_the_topic_is_a_config_error() -> None:
    """No [handler], no table dead-lettering to the topic and no --handler:
    ConfigError naming handler.name."""
    config = _config(
        handlers={
            "users": {"name": "tests.recorder:Recorder", "options": {"path": "u"}}
        }
    )
    with pytest.raises(ConfigError) as caught:
        redrive_handler(config, "orders.dlq", None)
    assert caught.value.field == "handler.name"
    assert "no handler dead-letters to 'orders.dlq'" in str(caught.value)
