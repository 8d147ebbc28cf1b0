"""The harness: the service's dispatch, failure policy and commits, run on
the test's thread over fed events."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from streamcp.errors import ConfigError, HandlerFailed, NonRetryable
from streamcp.events import Event, TopicPartition
from streamcp.handlers import BatchFailed
from streamcp.store import InMemoryCheckpointStore
from streamcp.testing import Harness, ManualClock
from tests.testing.samples import Ledger, WordCount

T0, T1 = TopicPartition("events", 0), TopicPartition("events", 1)


class Recorder:
    """Notes each event it is given; raises for values listed in ``fail``."""

    def __init__(self, fail: Sequence[bytes] = (), times: int | None = None) -> None:
        self.seen: list[tuple[int, int]] = []
        self.threads: set[str] = set()
        self.fail = set(fail)
        self.times = times
        self.closed = 0

    def handle(self, event: Event) -> None:
        self.seen.append((event.partition, event.offset))
        self.threads.add(threading.current_thread().name)
        if event.value in self.fail:
            if self.times is not None:
                self.times -= 1
                if self.times < 0:
                    return
            raise ValueError(f"cannot take {event.value!r}")

    def close(self) -> None:
        self.closed += 1


def test_each_partition_gets_its_events_in_offset_order_on_the_callers_thread() -> None:
    """Events fed in any interleaving reach the handler per partition in
    offset order, on the test's own thread, and all succeed."""
    recorder = Recorder()
    harness = Harness(recorder, partitions=2)
    events = harness.events_from_bytes([b"a", b"b", b"c", b"d", b"e"])

    outcomes = harness.feed(events)

    assert [o.status for o in outcomes] == ["succeeded"] * 5
    assert [o.attempts for o in outcomes] == [1] * 5
    assert recorder.seen == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert recorder.threads == {threading.current_thread().name}


def test_checkpoints_are_committed_every_n_events_as_the_next_offset() -> None:
    """With commit_every_events=3, a commit happens after the poll in which
    the third event succeeded; the checkpoint is the offset after it."""
    harness = Harness(Recorder(), commit_every_events=3, batch_size=1)
    events = harness.events_from_bytes([b"a", b"b", b"c", b"d"])

    harness.feed(events[:2])
    assert harness.checkpoints() == {}
    harness.feed(events[2:])
    assert harness.checkpoints() == {T0: 3}


def test_the_time_policy_commits_on_an_idle_poll_once_the_clock_passed_it() -> None:
    """Nothing is committed before commit_every_seconds passed on the manual
    clock; an idle poll after that commits."""
    clock = ManualClock()
    harness = Harness(
        Recorder(), commit_every_events=1000, commit_every_seconds=5, clock=clock
    )
    harness.feed(harness.events_from_bytes([b"a", b"b"]))

    clock.advance(4.9)
    assert harness.poll() == {}
    clock.advance(0.1)
    assert harness.poll() == {T0: 2}
    assert harness.checkpoints() == {T0: 2}


def test_close_commits_what_succeeded_and_closes_the_handler_once() -> None:
    """close() makes the shutdown commit and calls the handler's close once;
    a second close does nothing, and feeding afterwards raises."""
    recorder = Recorder()
    harness = Harness(recorder)
    harness.feed(harness.events_from_bytes([b"a"]))

    harness.close()
    harness.close()

    assert harness.checkpoints() == {T0: 1}
    assert recorder.closed == 1
    assert harness.state == "closed"
    with pytest.raises(RuntimeError, match="closed"):
        harness.feed([])


def test_a_failing_event_is_retried_then_pauses_only_its_partition() -> None:
    """Under the default policy a failing event is called 3 times, its
    partition pauses there (checkpoint committed just before it, pause
    recorded in the store), later events of it are not run, and the other
    partition goes on."""
    recorder = Recorder(fail=[b"bad"])
    harness = Harness(recorder, partitions=2)
    first = harness.events_from_bytes([b"ok", b"ok"])  # offset 0 of each
    bad = harness.events_from_bytes([b"bad", b"ok", b"later"])  # p0 1, p1 1, p0 2

    outcomes = harness.feed([*first, *bad])

    assert [(o.status, o.attempts) for o in outcomes] == [
        ("succeeded", 1),
        ("succeeded", 1),
        ("failed", 3),
        ("succeeded", 1),
        ("not_run", 0),
    ]
    failed = outcomes[2]
    assert isinstance(failed.error, ValueError)
    assert len(failed.errors) == 3
    assert harness.paused() == {T0: 1}
    assert harness.checkpoints()[T0] == 1
    assert harness.store.read(harness.group)[T0].paused
    later = Event(topic="events", partition=0, offset=3, value=b"ok")
    assert harness.feed([later])[0].status == "not_run"


def test_a_retry_that_succeeds_shows_the_attempts_and_the_errors_before() -> None:
    """An event that fails once and then passes succeeds with 2 attempts and
    the first attempt's error; the backoff moved the manual clock, not time."""
    clock = ManualClock()
    harness = Harness(Recorder(fail=[b"flaky"], times=1), clock=clock)

    (outcome,) = harness.feed(harness.events_from_bytes([b"flaky"]))

    assert outcome.status == "succeeded"
    assert outcome.attempts == 2
    assert [type(e) for e in outcome.errors] == [ValueError]
    assert 0 <= clock() <= 0.2


def test_a_non_retryable_error_is_tried_once() -> None:
    """NonRetryable skips the retries: one call, then the policy."""

    def handle(event: Event) -> None:
        raise NonRetryable("schema mismatch")

    harness = Harness(handle)
    (outcome,) = harness.feed(harness.events_from_bytes([b"x"]))

    assert (outcome.status, outcome.attempts) == ("failed", 1)


def test_the_skip_policy_passes_over_the_failed_event_and_commits_past_it() -> None:
    """on_failure='skip': the failed event is skipped after its attempts, the
    next one succeeds, and the checkpoint moves past both."""
    harness = Harness(
        Recorder(fail=[b"bad"]), policy={"on_failure": "skip", "retry_attempts": 2}
    )
    outcomes = harness.feed(harness.events_from_bytes([b"bad", b"ok"]))
    harness.commit()

    assert [(o.status, o.attempts) for o in outcomes] == [
        ("skipped", 2),
        ("succeeded", 1),
    ]
    assert isinstance(outcomes[0].error, ValueError)
    assert harness.checkpoints() == {T0: 2}


def test_the_dead_letter_policy_records_the_event_and_moves_past_it() -> None:
    """on_failure='dead-letter': the event goes to '<topic>.dlq' with its
    error and attempts, and the checkpoint moves past it."""
    harness = Harness(Recorder(fail=[b"bad"]), policy={"on_failure": "dead-letter"})
    outcomes = harness.feed(harness.events_from_bytes([b"bad", b"ok"]))
    harness.commit()

    assert [o.status for o in outcomes] == ["dead_lettered", "succeeded"]
    (letter,) = harness.dead_letters
    assert (letter.topic, letter.event.offset, letter.attempts) == ("events.dlq", 0, 3)
    assert isinstance(letter.error, ValueError)
    assert harness.checkpoints() == {T0: 2}


def test_the_stop_policy_stops_the_consumer_after_the_poll_of_the_failure() -> None:
    """on_failure='stop': the failure is a HandlerFailed naming the event; the
    rest of that poll runs (the service's workers had it), what succeeded is
    committed, and nothing of later polls runs."""
    harness = Harness(
        Recorder(fail=[b"bad"]), policy={"on_failure": "stop"}, partitions=2
    )
    # Round-robin: p0 offset 0, p1 offset 0, p0 offset 1, p1 offset 1.
    outcomes = harness.feed(harness.events_from_bytes([b"ok", b"ok", b"bad", b"ok"]))
    later = harness.feed(harness.events_from_bytes([b"ok", b"ok"]))

    assert [o.status for o in outcomes] == [
        "succeeded",
        "succeeded",
        "failed",
        "succeeded",
    ]
    assert [o.status for o in later] == ["not_run", "not_run"]
    assert isinstance(harness.failure, HandlerFailed)
    assert (harness.failure.topic_partition, harness.failure.offset) == (T0, 1)
    assert harness.state == "stopped"
    assert harness.checkpoints() == {T0: 1, T1: 2}


def test_batch_failed_counts_the_events_before_its_offset_as_succeeded() -> None:
    """A handle_batch raising BatchFailed(offset) from a cause: the events
    before the offset succeeded, the one at it failed with the cause."""

    class Batches:
        non_retryable = (KeyError,)

        def __init__(self) -> None:
            self.batches: list[list[int]] = []

        def handle_batch(self, events: Sequence[Event]) -> None:
            self.batches.append([e.offset for e in events])
            for event in events:
                if event.value == b"bad":
                    raise BatchFailed(event.offset) from KeyError("id")

    batches = Batches()
    harness = Harness(batches)
    outcomes = harness.feed(harness.events_from_bytes([b"a", b"b", b"bad", b"c"]))

    assert [o.status for o in outcomes] == [
        "succeeded",
        "succeeded",
        "failed",
        "not_run",
    ]
    assert isinstance(outcomes[2].error, KeyError)
    assert batches.batches == [[0, 1, 2, 3]]
    assert harness.checkpoints() == {T0: 2}


def test_revoke_commits_and_later_events_of_it_are_not_assigned() -> None:
    """revoke() commits the partition's checkpoint and releases it; events fed
    for it then are not_assigned; other partitions go on."""
    harness = Harness(Recorder(), partitions=2)
    harness.feed(harness.events_from_bytes([b"a", b"b"]))

    harness.revoke([0])
    outcomes = harness.feed(harness.events_from_bytes([b"c", b"d"]))

    assert harness.checkpoints() == {T0: 1}
    assert [o.status for o in outcomes] == ["not_assigned", "succeeded"]
    assert harness.assigned() == [T1]
    assert harness.store.read(harness.group)[T0].owner == ""


def test_assign_resumes_at_the_checkpoint_and_redeliver_feeds_from_there() -> None:
    """After revoke and assign, redeliver() of the whole log hands over only
    the events from the committed checkpoint on."""
    recorder = Recorder()
    harness = Harness(recorder)
    log = harness.events_from_bytes([b"a", b"b", b"c", b"d"])
    harness.feed(log[:2])
    harness.revoke()

    assert harness.assign([0]) == {T0: 2}
    outcomes = harness.redeliver(log)

    assert [o.offset for o in outcomes] == [2, 3]
    assert recorder.seen == [(0, 0), (0, 1), (0, 2), (0, 3)]


def test_a_crash_loses_uncommitted_work_and_the_restart_redelivers_it() -> None:
    """crash() commits nothing and does not close the handler; a new harness
    on the same store resumes at the last commit, so redeliver() hands the
    uncommitted events over again (at least once)."""
    first = Recorder()
    crashed = Harness(first)
    log = crashed.events_from_bytes([b"a", b"b", b"c"])
    crashed.feed(log[:1])
    crashed.commit()
    crashed.feed(log[1:])
    crashed.crash()

    second = Recorder()
    restarted = Harness(second, store=crashed.store)
    restarted.redeliver(log)
    restarted.close()

    assert first.closed == 0
    assert second.seen == [(0, 1), (0, 2)]
    assert restarted.checkpoints() == {T0: 3}
    with pytest.raises(RuntimeError, match="crashed"):
        crashed.feed(log)


def test_a_paused_partition_stays_paused_for_the_next_consumer_until_unpaused() -> None:
    """A pause recorded in the store holds when another consumer claims the
    partition; unpause() resumes it at the failed event."""
    recorder = Recorder(fail=[b"bad"], times=3)
    harness = Harness(recorder, policy={"retry_attempts": 3})
    log = harness.events_from_bytes([b"ok", b"bad", b"ok"])
    harness.feed(log)
    harness.close()

    restarted = Harness(recorder, store=harness.store)
    assert restarted.paused() == {T0: 1}
    assert restarted.redeliver(log) == []
    restarted.unpause()
    outcomes = restarted.redeliver(log)

    assert [(o.offset, o.status) for o in outcomes] == [
        (1, "succeeded"),
        (2, "succeeded"),
    ]


def test_an_offset_that_goes_back_is_refused() -> None:
    """Feeding a partition an offset below one already fed raises ValueError
    saying to revoke, assign and redeliver instead."""
    harness = Harness(Recorder())
    log = harness.events_from_bytes([b"a", b"b"])
    harness.feed(log)

    with pytest.raises(ValueError, match="redeliver"):
        harness.feed(log[:1])


def test_a_handler_given_by_name_gets_its_options_checked_as_the_service_does() -> None:
    """An entry point name is resolved and its options checked, before any
    connection: a missing required option is a ConfigError naming it."""
    harness = Harness(
        "wikistats", options={"redis_url": "redis://127.0.0.1:1"}, setup=False
    )
    assert type(harness.instance).__name__ == "WikiStats"
    assert harness.instance.options.key_prefix == "wikistats"

    with pytest.raises(ConfigError, match="redis_url"):
        Harness("wikistats", options={}, setup=False)


def test_an_async_handler_runs_to_completion_on_the_callers_thread() -> None:
    """An async def handle is awaited in the test's thread; no thread starts."""
    seen: list[int] = []

    async def handle(event: Event) -> None:
        await asyncio.sleep(0)
        seen.append(event.offset)

    before = threading.active_count()
    harness = Harness(handle)
    harness.feed(harness.events_from_bytes([b"a", b"b"]))
    harness.close()

    assert seen == [0, 1]
    assert threading.active_count() == before


def test_a_refused_commit_takes_the_partition_away_as_in_the_service() -> None:
    """When another consumer claimed the partition meanwhile, the commit is
    refused (stale epoch) and the harness drops the partition."""
    store = InMemoryCheckpointStore()
    harness = Harness(Recorder(), store=store)
    harness.feed(harness.events_from_bytes([b"a"]))
    Harness(Recorder(), store=store)  # claims partition 0: a new epoch

    assert harness.commit() == {}
    assert [r.reason for r in harness.refusals] == ["stale_epoch"]
    assert harness.assigned() == []


def test_instance_is_the_object_the_handler_was_built_from() -> None:
    """instance gives the test the handler object to inspect."""
    ledger = Ledger()
    counter = WordCount(ledger)
    harness = Harness(counter)
    harness.feed(harness.events_from_dicts([{"word": "fig"}]))

    assert harness.instance is counter
    assert ledger.counts == {"fig": 1}
