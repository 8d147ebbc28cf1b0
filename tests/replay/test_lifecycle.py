"""Runs over their life: listed, shown, cancelled, killed and resumed."""

from __future__ import annotations

import signal
import socket
import time

from tests.replay.helpers import (
    ReplayProcess,
    ReplaySetup,
    decode,
    json_of,
    produce_per_partition,
    run_id_of,
)
from tests.replay.recorder import offsets_of, read_seen
from tests.service.harness import wait_for

SLOW = {
    "handler_options": {"delay_ms": 20},
    "commit": {"every_events": 5, "every_seconds": 0.5},
}


def test_runs_list_and_show_describe_a_finished_run(setup: ReplaySetup) -> None:
    """runs list and runs show, as JSON and as text, give the run's topic,
    partitions, requested range, resolved offsets, handler, status, counts,
    who started it and when."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 6)
    result = setup.replay("--from", "1", "--to", "4")
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result.stdout)

    listed = json_of(setup.cli("runs", "list", "--json"))["runs"]
    assert [r["id"] for r in listed] == [run_id]
    shown = setup.show(run_id)
    assert shown == listed[0]
    assert shown["topic"] == setup.topic
    assert shown["handler"] == "tests.replay.recorder:ReplayRecorder"
    assert shown["status"] == "completed"
    assert (shown["events_handled"], shown["events_failed"]) == (9, 0)
    assert shown["requested"]["from"] == 1 and shown["requested"]["to"] == 4
    assert decode(shown) == {p: (1, 4, 4) for p in range(3)}
    assert shown["started_by"]["host"] == socket.gethostname()
    assert shown["started_by"]["pid"] > 0 and shown["started_by"]["user"]
    assert shown["started_at"] <= shown["finished_at"]

    table = setup.cli("runs", "list")
    assert table.returncode == 0
    assert run_id in table.stdout and "completed" in table.stdout
    text = setup.cli("runs", "show", run_id)
    assert text.returncode == 0
    assert f"id: {run_id}" in text.stdout and "status: completed" in text.stdout


def test_cancel_stops_a_running_replay_within_seconds_committing_what_succeeded(
    setup: ReplaySetup,
) -> None:
    """runs cancel makes a running replay stop gracefully with status
    cancelled (exit 3) within a few seconds; its checkpoints cover exactly
    the events it handled, and a resume handles the rest, none twice."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 100)
    proc = ReplayProcess(setup, "--topic", setup.topic, config=setup.config(**SLOW))
    run_id = proc.run_id()
    wait_for(
        lambda: setup.show(run_id)["events_handled"] >= 10, 30, "some events committed"
    )

    asked = time.monotonic()
    cancel = setup.cli("runs", "cancel", run_id)
    assert cancel.returncode == 0, cancel.stderr
    assert proc.wait(30) == 3
    assert time.monotonic() - asked < 5
    shown = setup.show(run_id)
    assert shown["status"] == "cancelled" and shown["finished_at"]
    handled = offsets_of(read_seen(setup.out))
    for partition, (start, _end, checkpoint) in decode(shown).items():
        done = handled.get(partition, [])
        assert done == list(range(start, start + len(done)))
        assert checkpoint == start + len(done)
    assert shown["events_handled"] == sum(len(v) for v in handled.values()) < 300

    resumed = setup.cli("replay", "--resume", run_id, timeout_s=120)
    assert resumed.returncode == 0, resumed.stderr
    assert offsets_of(read_seen(setup.out)) == {p: list(range(100)) for p in range(3)}
    final = setup.show(run_id)
    assert final["status"] == "completed" and final["resumes"] == 1
    assert final["events_handled"] == 300


def test_sigterm_stops_a_replay_as_cancelled(setup: ReplaySetup) -> None:
    """SIGTERM makes a replay commit what succeeded and end cancelled (exit 3)."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 100)
    proc = ReplayProcess(setup, "--topic", setup.topic, config=setup.config(**SLOW))
    run_id = proc.run_id()
    wait_for(lambda: read_seen(setup.out), 30, "a first event handled")
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 3
    shown = setup.show(run_id)
    assert shown["status"] == "cancelled"
    assert shown["events_handled"] == len(read_seen(setup.out))


def test_kill_9_then_resume_handles_every_event_of_the_recorded_range(
    setup: ReplaySetup,
) -> None:
    """After kill -9 mid-run the run stays 'running' with no live process;
    --resume continues each partition from its last committed checkpoint,
    handles every event of the range at least once and nothing past the
    recorded end offsets (though more events arrived), and completes with
    the offsets it first recorded."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 60)
    config = setup.config(**SLOW)
    proc = ReplayProcess(setup, "--topic", setup.topic, "--to", "50", config=config)
    run_id = proc.run_id()
    wait_for(
        lambda: setup.show(run_id)["events_handled"] >= 15, 30, "some events committed"
    )
    proc.kill()
    before = setup.show(run_id)
    assert before["status"] == "running" and before["stale"]
    committed = {p: cp for p, (_s, _e, cp) in decode(before).items()}
    first_pid = proc.proc.pid
    produce_per_partition(setup.bootstrap, setup.topic, 3, 10, start=60)

    resumed = setup.cli(
        "replay", "--resume", run_id, "--no-progress", config=config, timeout_s=120
    )
    assert resumed.returncode == 0, resumed.stderr
    seen = read_seen(setup.out)
    assert {p: sorted(set(o)) for p, o in offsets_of(seen).items()} == {
        p: list(range(50)) for p in range(3)
    }
    after = setup.show(run_id)
    assert after["status"] == "completed" and after["resumes"] == 1
    assert decode(after) == {p: (0, 50, 50) for p in range(3)}
    second = [r for r in seen if r.pid != first_pid]
    for partition, checkpoint in committed.items():
        again = [r.offset for r in second if r.partition == partition]
        assert min(again, default=50) >= (checkpoint or 0)


def test_resume_of_a_run_whose_process_still_runs_is_refused(
    setup: ReplaySetup,
) -> None:
    """--resume of a run that is running in a live process exits 2."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 100)
    config = setup.config(**SLOW)
    proc = ReplayProcess(setup, "--topic", setup.topic, config=config)
    run_id = proc.run_id()
    try:
        wait_for(lambda: read_seen(setup.out), 30, "a first event handled")
        result = setup.cli("replay", "--resume", run_id, config=config)
        assert result.returncode == 2
        assert f"run {run_id!r} is running" in result.stderr
    finally:
        proc.kill()


def test_handler_failure_fails_the_run_at_that_event_and_resume_retries_it(
    setup: ReplaySetup,
) -> None:
    """A handler that fails for good at partition 1 offset 3 makes the run end
    failed (exit 1, one failed event) with that partition's checkpoint at 3;
    a resume with a handler that no longer fails handles offset 3 onward and
    completes the run."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 6)
    failing = setup.config(
        handler_options={"fail_at": ["1:3"]}, handler={"retry_attempts": 1}
    )
    result = setup.replay(config=failing)
    assert result.returncode == 1, result.stderr
    run_id = run_id_of(result.stdout)
    assert "failed at" in result.stderr and "offset 3" in result.stderr
    shown = setup.show(run_id)
    assert shown["status"] == "failed" and shown["events_failed"] == 1
    assert decode(shown)[1] == (0, 6, 3)
    assert offsets_of(read_seen(setup.out))[1] == [0, 1, 2]

    resumed = setup.cli("replay", "--resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert offsets_of(read_seen(setup.out))[1] == [0, 1, 2, 3, 4, 5]
    final = setup.show(run_id)
    assert final["status"] == "completed"
    assert decode(final) == {p: (0, 6, 6) for p in range(3)}


def test_cancel_of_a_killed_run_marks_it_cancelled_at_once_and_it_resumes(
    setup: ReplaySetup,
) -> None:
    """runs cancel of a run whose process was killed marks it cancelled
    without waiting, and list shows it so; a resume then completes it."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 40)
    config = setup.config(**SLOW)
    proc = ReplayProcess(setup, "--topic", setup.topic, config=config)
    run_id = proc.run_id()
    wait_for(lambda: read_seen(setup.out), 30, "a first event handled")
    proc.kill()
    assert "running (no heartbeat)" in setup.cli("runs", "list").stdout

    started = time.monotonic()
    cancel = setup.cli("runs", "cancel", run_id, "--wait", "30")
    assert cancel.returncode == 0, cancel.stderr
    assert "marked cancelled" in cancel.stdout
    assert time.monotonic() - started < 10
    assert setup.show(run_id)["status"] == "cancelled"

    resumed = setup.cli("replay", "--resume", run_id, config=config)
    assert resumed.returncode == 0, resumed.stderr
    assert setup.show(run_id)["status"] == "completed"
    seen = offsets_of(read_seen(setup.out))
    assert {p: sorted(set(o)) for p, o in seen.items()} == {
        p: list(range(40)) for p in range(3)
    }
