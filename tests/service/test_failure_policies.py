"""Retries, dead-letter, pause, skip, poison events and slow handlers."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from click.testing import CliRunner

from streamcp.cli import main
from streamcp.events import Event
from streamcp.services import produce_records
from tests.recorder import read_handled
from tests.service.conftest import raw_for
from tests.service.harness import (
    ServiceProcess,
    ServiceThread,
    checkpoints,
    config_from,
    produce,
    tp,
    wait_for,
    write_config,
)


def _config(s: dict[str, Any], **sections: Any) -> Any:
    return config_from(raw_for(s, **sections))


class Flaky:
    """Fails chosen events a number of times, then lets them through."""

    def __init__(
        self,
        failures: dict[tuple[int, int], int],
        error: type[Exception] = RuntimeError,
    ) -> None:
        self.remaining = dict(failures)
        self.error = error
        self.calls: list[tuple[int, int]] = []
        self.handled: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        where = (event.partition, event.offset)
        with self.lock:
            self.calls.append(where)
            if self.remaining.get(where, 0) > 0:
                self.remaining[where] -= 1
                raise self.error(f"failing {where} on purpose")
            self.handled.append(where)


def consume_all(bootstrap: str, topic: str, expected: int) -> list[Any]:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    found: list[Any] = []
    deadline = time.monotonic() + 30
    while len(found) < expected and time.monotonic() < deadline:
        found += [m for m in consumer.consume(10, 0.5) if m.error() is None]
    consumer.close()
    return found


def test_event_failing_twice_then_succeeding_is_handled_before_later_events_commit(
    setup: dict[str, Any],
) -> None:
    """Partition 0's event 3 fails twice then succeeds: nothing after it in its
    partition is handled or committed before it, and the other partitions
    reach their end while it backs off."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 10)
    handler = Flaky({(0, 3): 2})
    seen_checkpoints: list[int | None] = []
    config = _config(setup, commit={"every_events": 1, "every_seconds": 0.1})
    with ServiceThread(
        config, handler, policy={"retry_attempts": 3, "retry_backoff_s": 1.0}
    ):

        def others_done() -> bool:
            seen_checkpoints.append(checkpoints(setup["store"], setup["group"]).get(0))
            return (
                checkpoints(setup["store"], setup["group"]).get(1) == 10
                and checkpoints(setup["store"], setup["group"]).get(2) == 10
            )

        wait_for(others_done, what="partitions 1 and 2 at their end")
        assert (0, 3) not in handler.handled, "the others finished during the backoff"
        wait_for(
            lambda: checkpoints(setup["store"], setup["group"])[0] == 10,
            what="partition 0 at its end",
        )
    p0 = [o for p, o in handler.handled if p == 0]
    assert p0 == list(range(10))
    assert handler.calls.count((0, 3)) == 3
    assert all(c is None or c <= 3 for c in seen_checkpoints)


def test_dead_letter_holds_the_event_with_every_header_then_checkpoint_passes(
    setup: dict[str, Any],
) -> None:
    """After the last attempt the event goes to the dead-letter topic with its
    key, value, headers and streamcp's headers; the checkpoint then passes it."""
    dlq = f"{setup['topic']}.dlq"
    setup["kafka"].create_topic(dlq, 1)
    produce_records(
        setup["kafka"].bootstrap_servers,
        setup["topic"],
        [
            (b"k0", b"v0", 1_690_000_000_000, 0),
            (b"bad", b"poison", 1_690_000_001_000, 0),
            (b"k2", b"v2", 1_690_000_002_000, 0),
        ],
    )
    handler = Flaky({(0, 1): 99}, error=ValueError)
    config = _config(setup)
    with ServiceThread(
        config,
        handler,
        policy={
            "on_failure": "dead-letter",
            "retry_attempts": 2,
            "retry_backoff_s": 0.05,
        },
    ):
        wait_for(
            lambda: checkpoints(setup["store"], setup["group"]).get(0) == 3,
            what="checkpoint past the dead-lettered event",
        )
    (record,) = consume_all(setup["kafka"].bootstrap_servers, dlq, 1)
    assert (record.key(), record.value()) == (b"bad", b"poison")
    headers = {k: v.decode() for k, v in record.headers()}
    assert headers["streamcp.original.topic"] == setup["topic"]
    assert headers["streamcp.original.partition"] == "0"
    assert headers["streamcp.original.offset"] == "1"
    assert headers["streamcp.original.timestamp"] == "1690000001000"
    assert headers["streamcp.error.type"] == "ValueError"
    assert "failing (0, 1)" in headers["streamcp.error.message"]
    assert headers["streamcp.attempts"] == "2"
    assert headers["streamcp.handler"] == "test-handler"
    assert headers["streamcp.failed_at"].endswith("+00:00")
    assert handler.handled == [(0, 0), (0, 2)]


def test_dead_letter_produce_failing_at_broker_keeps_checkpoint_and_pauses(
    setup: dict[str, Any],
) -> None:
    """With the dead-letter topic missing (the broker refuses the produce), the
    checkpoint never passes the failed event and the partition is paused."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 1, 4)
    handler = Flaky({(0, 1): 99})
    config = _config(setup, consumer={"dead_letter_timeout_s": 3.0})
    missing = f"no-such-topic-{uuid.uuid4().hex[:6]}"
    with ServiceThread(
        config,
        handler,
        policy={
            "on_failure": "dead-letter",
            "retry_attempts": 1,
            "dead_letter_topic": missing,
        },
    ):
        wait_for(
            lambda: (
                setup["store"].read(setup["group"]).get(tp(setup["topic"], 0))
                is not None
                and setup["store"].read(setup["group"])[tp(setup["topic"], 0)].paused
            ),
            timeout_s=30,
            what="partition 0 paused",
        )
        time.sleep(1)
        stored = setup["store"].read(setup["group"])[tp(setup["topic"], 0)]
        assert stored.offset == 1
        assert "DeadLetterFailed" in stored.paused_reason
    assert (0, 2) not in handler.handled


def test_pause_keeps_checkpoint_others_reach_end_and_resume_continues(
    setup: dict[str, Any],
) -> None:
    """With the default policy, a failing event pauses its partition at that
    offset (visible in the store and in `checkpoints show`), the other
    partitions reach their end, and `checkpoints resume` continues from the
    failed event once the handler is fixed."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 6)
    handler = Flaky({(1, 2): 99})
    config = _config(setup)
    with ServiceThread(
        config, handler, policy={"retry_attempts": 2, "retry_backoff_s": 0.05}
    ):
        # The checkpoint of 1 may reach 2 (a commit) before its retries run
        # out and the pause is recorded: wait for both.
        wait_for(
            lambda: (
                checkpoints(setup["store"], setup["group"]) == {0: 6, 1: 2, 2: 6}
                and setup["store"].read(setup["group"])[tp(setup["topic"], 1)].paused
            ),
            what="1 paused at 2, others at 6",
        )
        stored = setup["store"].read(setup["group"])[tp(setup["topic"], 1)]
        assert (stored.paused, stored.paused_offset) == (True, 2)
        args = [
            "--group",
            setup["group"],
            "--redis-url",
            setup["redis"].url,
            "--key-prefix",
            setup["prefix"],
        ]
        shown = CliRunner().invoke(main, ["checkpoints", "show", *args])
        assert shown.exit_code == 0
        assert f"paused: {setup['topic']}[1] at offset 2" in shown.output
        handler.remaining.clear()  # the fix is deployed
        resumed = CliRunner().invoke(
            main,
            [
                "checkpoints",
                "resume",
                *args,
                "--topic",
                setup["topic"],
                "--partition",
                "1",
            ],
            input="y\n",
        )
        assert resumed.exit_code == 0, resumed.output
        assert "Resume" in resumed.output  # it asked before changing anything
        wait_for(
            lambda: checkpoints(setup["store"], setup["group"])[1] == 6,
            what="partition 1 continues after resume",
        )
    assert [o for p, o in handler.handled if p == 1] == list(range(6))


def test_pause_survives_a_rebalance_to_another_consumer(setup: dict[str, Any]) -> None:
    """The next owner of a paused partition keeps it paused at the failed event."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 4)
    policy = {"retry_attempts": 1}
    with ServiceThread(_config(setup), Flaky({(0, 1): 99}), policy=policy):
        wait_for(
            lambda: (
                setup["store"].read(setup["group"]).get(tp(setup["topic"], 0))
                is not None
                and setup["store"].read(setup["group"])[tp(setup["topic"], 0)].paused
            ),
            what="paused",
        )
    healthy = Flaky({})
    with ServiceThread(_config(setup), healthy, policy=policy):
        wait_for(
            lambda: (
                {p for p, _ in healthy.handled} >= {1, 2}
                or checkpoints(setup["store"], setup["group"]) == {0: 1, 1: 4, 2: 4}
            ),
            what="second consumer running",
        )
        time.sleep(1.5)
        assert all(p != 0 for p, _ in healthy.handled)
    stored = setup["store"].read(setup["group"])[tp(setup["topic"], 0)]
    assert (stored.offset, stored.paused) == (1, True)


@pytest.mark.parametrize(
    ("value", "policy", "expected_pause"),
    [
        pytest.param(
            b"{not json",
            {"value_codec": "json", "on_failure": "skip"},
            False,
            id="invalid-json-skip",
        ),
        pytest.param(
            b"\xff\xfe",
            {"value_codec": "text", "on_failure": "pause"},
            True,
            id="invalid-utf8-pause",
        ),
        pytest.param(
            None,
            {"value_codec": "json", "on_failure": "skip"},
            False,
            id="tombstone-skip",
        ),
    ],
)
def test_poison_event_takes_the_configured_path_without_looping(
    setup: dict[str, Any],
    value: bytes | None,
    policy: dict[str, Any],
    expected_pause: bool,
) -> None:
    """An undecodable value is not retried (one decode attempt), takes the
    handler's policy, and costs no busy loop while the partition waits."""
    produce_records(
        setup["kafka"].bootstrap_servers,
        setup["topic"],
        [
            (b"a", b'{"n": 1}', None, 0),
            (b"b", value, None, 0),
            (b"c", b'{"n": 3}', None, 0),
        ],
    )
    seen: list[Any] = []

    def handler(event: Event) -> None:
        seen.append(event.decoded_value)

    config = _config(setup)
    with ServiceThread(
        config, handler, policy={**policy, "retry_attempts": 5, "retry_backoff_s": 0.01}
    ):
        if expected_pause:
            wait_for(
                lambda: (
                    checkpoints(setup["store"], setup["group"]).get(0) == 1
                    and setup["store"]
                    .read(setup["group"])[tp(setup["topic"], 0)]
                    .paused
                ),
                what="paused at the poison event",
            )
            cpu_before = time.process_time()
            time.sleep(2)
            assert time.process_time() - cpu_before < 0.6, "the consumer spins"
            assert (
                seen == [{"n": 1}]
                if policy["value_codec"] == "json"
                else len(seen) == 1
            )
        else:
            wait_for(
                lambda: checkpoints(setup["store"], setup["group"]).get(0) == 3,
                what="checkpoint past the skipped event",
            )
            assert seen == [{"n": 1}, {"n": 3}]


def test_handler_slower_than_max_poll_interval_causes_no_rebalance(
    setup: dict[str, Any],
    tmp_path: Path,
) -> None:
    """With handlers on worker threads, a real process whose handler takes
    8 s on one event, with max.poll.interval.ms at 6 s, keeps its single
    assignment for the whole run and handles every event."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 3)
    record = tmp_path / "handled.txt"
    raw = raw_for(
        setup,
        kafka={"max_poll_interval_ms": 6000},
        consumer={"execution": "threads"},
        handler={"options": {"path": str(record), "slow_at": ["0:1:8"]}},
    )
    proc = ServiceProcess(
        write_config(tmp_path / "c.toml", raw),
        tmp_path / "log",
        "--stop-when-caught-up",
    )
    try:
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    assert len(proc.saw("partition.assigned")) == 1
    assert proc.saw("partition.revoking") == [] or all(
        not e["partitions"] for e in proc.saw("partition.revoking")
    )
    assert sorted((r.partition, r.offset) for r in read_handled(record)) == [
        (p, o) for p in range(3) for o in range(3)
    ]


def test_inline_a_call_past_max_poll_interval_loses_the_partitions_not_events(
    setup: dict[str, Any],
    tmp_path: Path,
) -> None:
    """With handlers inline (the default here), one 8 s call with
    max.poll.interval.ms at 6 s makes librdkafka leave the group: the service
    says why and what to change, joins again, and every event is handled
    with the checkpoints at the end; none moved past an unhandled event."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 3)
    record = tmp_path / "handled.txt"
    raw = raw_for(
        setup,
        kafka={"max_poll_interval_ms": 6000},
        handler={
            "options": {"path": str(record), "slow_at": ["0:1:8"], "slow_once": True}
        },
    )
    proc = ServiceProcess(
        write_config(tmp_path / "c.toml", raw),
        tmp_path / "log",
        "--stop-when-caught-up",
    )
    try:
        assert proc.wait(90) == 0
    finally:
        proc.kill()
    [exceeded] = proc.saw("consumer.max_poll_exceeded")
    assert "threads" in exceeded["hint"] and "timeout_s" in exceeded["hint"]
    assert len(proc.saw("partition.assigned")) >= 2
    handled = {(r.partition, r.offset) for r in read_handled(record)}
    assert handled == {(p, o) for p in range(3) for o in range(3)}
    assert checkpoints(setup["store"], setup["group"]) == {0: 3, 1: 3, 2: 3}


def test_handler_timeout_counts_as_failure_and_retry_waits_for_the_call(
    setup: dict[str, Any],
) -> None:
    """A call overrunning timeout_s is abandoned (its late result ignored) and
    retried only after it returned; the second call succeeds."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 1, 2)
    calls: list[tuple[int, float, float]] = []

    def handler(event: Event) -> None:
        started = time.monotonic()
        if event.offset == 0 and len(calls) == 0:
            time.sleep(1.5)
        calls.append((event.offset, started, time.monotonic()))

    with ServiceThread(
        _config(setup),
        handler,
        policy={"timeout_s": 0.5, "retry_attempts": 3, "retry_backoff_s": 0.01},
    ):
        wait_for(
            lambda: checkpoints(setup["store"], setup["group"]).get(0) == 2,
            what="both events committed",
        )
    first, second = calls[0], calls[1]
    assert first[0] == second[0] == 0
    assert second[1] >= first[2], "the retry started before the abandoned call returned"


def test_timeout_longer_than_max_poll_interval_is_refused_at_start(
    setup: dict[str, Any],
) -> None:
    """A handler timeout that cannot work with max.poll.interval.ms exits 2."""
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--topic",
            "t",
            "--handler",
            "tests.recorder:Recorder",
            "--set",
            "handler.options.path='x'",
            "--set",
            "handler.timeout_s=400",
            "--set",
            "kafka.max_poll_interval_ms=300000",
        ],
    )
    assert result.exit_code == 2
    assert "handler.timeout_s" in result.output


def test_shutdown_during_backoff_ends_promptly_and_commits_only_successes(
    setup: dict[str, Any],
) -> None:
    """Stopping while an event waits out a 30 s backoff returns within a few
    seconds, with the checkpoint at the failed event."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 1, 5)
    handler = Flaky({(0, 2): 99})
    service = ServiceThread(
        _config(setup),
        handler,
        policy={
            "retry_attempts": 5,
            "retry_backoff_s": 30.0,
            "retry_max_backoff_s": 30.0,
        },
    )
    with service:
        wait_for(lambda: handler.calls.count((0, 2)) == 1, what="first failure")
        time.sleep(0.3)
        started = time.monotonic()
        service.stop()
        assert time.monotonic() - started < 5
    assert checkpoints(setup["store"], setup["group"])[0] == 2
    assert handler.handled == [(0, 0), (0, 1)]


def _hanging_process(setup: dict[str, Any], tmp_path: Path) -> tuple[Any, Path]:
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 3)
    record = tmp_path / "handled.txt"
    raw = raw_for(
        setup,
        consumer={"drain_timeout_s": 1.0},
        handler={"options": {"path": str(record), "slow_at": ["0:1:120"]}},
    )
    proc = ServiceProcess(write_config(tmp_path / "c.toml", raw), tmp_path / "log")
    wait_for(
        lambda: (0, 0) in {(r.partition, r.offset) for r in read_handled(record)},
        what="partition 0 handled up to the hanging call",
    )
    time.sleep(0.5)
    return proc, record


def test_a_second_signal_exits_at_once_while_a_call_hangs_inline(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """Inline, a call that never returns holds the loop: a first SIGTERM
    cannot drain, a second one exits at once with status 1, saying so, and
    the checkpoint never passed the hanging event."""
    proc, _ = _hanging_process(setup, tmp_path)
    try:
        proc.signal(signal.SIGTERM)
        time.sleep(0.5)
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 1
        assert time.monotonic() - started < 5
    finally:
        proc.kill()
    assert "second signal (SIGTERM): exiting now" in proc.log_path.read_text()
    assert (checkpoints(setup["store"], setup["group"]).get(0) or 0) <= 1


def test_a_graceful_stop_held_by_a_hanging_call_ends_after_its_grace(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """One SIGTERM while an inline call hangs: after three drain timeouts
    and five seconds (8 s here) the process exits with status 1, saying
    why, and the checkpoint never passed the hanging event."""
    proc, _ = _hanging_process(setup, tmp_path)
    try:
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 1
        assert 7 < time.monotonic() - started < 20
    finally:
        proc.kill()
    assert "still stopping after 8s: exiting now" in proc.log_path.read_text()
    assert (checkpoints(setup["store"], setup["group"]).get(0) or 0) <= 1


def test_stop_when_caught_up_with_a_paused_partition_exits_1_naming_it(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """--stop-when-caught-up stops once the other partitions reached their
    end, but a partition paused at a failed event is not caught up: exit
    status 1, naming it, with its checkpoint at the failed event."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 5)
    record = tmp_path / "handled.txt"
    raw = raw_for(
        setup,
        handler={
            "options": {"path": str(record), "fail_at": ["1:3"]},
            "retry_attempts": 1,
        },
    )
    proc = ServiceProcess(
        write_config(tmp_path / "c.toml", raw),
        tmp_path / "log",
        "--stop-when-caught-up",
    )
    try:
        assert proc.wait(60) == 1
    finally:
        proc.kill()
    log = proc.log_path.read_text()
    assert f"caught up except the paused partition(s) {setup['topic']}[1]" in log
    assert checkpoints(setup["store"], setup["group"]) == {0: 5, 1: 3, 2: 5}
