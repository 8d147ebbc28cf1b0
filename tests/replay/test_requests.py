"""Bad requests are refused before anything runs: exit 2, with the reason."""

from __future__ import annotations

import pytest

from tests.replay.helpers import ReplaySetup, produce_per_partition, run_id_of
from tests.replay.recorder import read_seen

# (arguments after --topic, words the refusal must contain)
BAD_REPLAYS = [
    pytest.param(
        ["--from", "5", "--to", "2"],
        "start offset 5 is after end offset 2",
        id="start-after-end",
    ),
    pytest.param(
        ["--from", "-1"], "offsets are not negative, got -1", id="negative-start"
    ),
    pytest.param(["--to", "-3"], "offsets are not negative, got -3", id="negative-end"),
    pytest.param(["--partition", "7"], "has no partition 7", id="unknown-partition"),
    pytest.param(
        ["--partition", "-1"], "partitions are not negative", id="negative-partition"
    ),
    pytest.param(
        ["--from-time", "yesterday"],
        "not an ISO 8601 time, got 'yesterday'",
        id="malformed-time",
    ),
    pytest.param(
        ["--from-time", "2024-05-02T00:00:00Z", "--to-time", "2024-05-01"],
        "start time '2024-05-02T00:00:00+00:00' is after end time",
        id="start-time-after-end-time",
    ),
    pytest.param(
        ["--from", "1", "--from-time", "2024-05-01"],
        "give --from or --from-time, not both",
        id="two-starts",
    ),
    pytest.param(
        ["--resume", "20240101-000000-abcd"],
        "--resume: replays the recorded",
        id="resume-with-a-topic",
    ),
]


@pytest.mark.parametrize(("args", "reason"), BAD_REPLAYS)
def test_bad_replay_request_exits_2_with_reason_and_runs_nothing(
    setup: ReplaySetup, args: list[str], reason: str
) -> None:
    """Each bad request exits with status 2, prints why on stderr, handles
    no event and records no run."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 5)
    result = setup.replay(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert reason in result.stderr
    assert read_seen(setup.out) == []
    assert setup.cli("runs", "list").stdout.startswith("0 run(s)")


def test_unknown_topic_exits_2_with_reason(setup: ReplaySetup) -> None:
    """A topic the broker does not know exits with status 2, naming it."""
    result = setup.cli("replay", "--topic", "no-such-topic-here")
    assert result.returncode == 2
    assert "no such topic: 'no-such-topic-here'" in result.stderr


def test_missing_topic_exits_2_with_reason(setup: ReplaySetup) -> None:
    """A new replay without --topic exits with status 2."""
    result = setup.cli("replay", "--from", "1")
    assert result.returncode == 2
    assert "--topic: is missing" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["replay", "--resume", "nope-1"], id="resume"),
        pytest.param(["replay", "--rerun", "nope-1"], id="rerun"),
        pytest.param(["runs", "show", "nope-1"], id="show"),
        pytest.param(["runs", "cancel", "nope-1"], id="cancel"),
    ],
)
def test_unknown_run_id_exits_2_with_reason(
    setup: ReplaySetup, command: list[str]
) -> None:
    """Every command that names a run refuses an unknown run id with status 2."""
    result = setup.cli(*command)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "no run 'nope-1'" in result.stderr


def test_resuming_a_completed_run_is_refused_and_rerun_replays_it_anew(
    setup: ReplaySetup,
) -> None:
    """--resume of a completed run exits 2 and handles nothing; --rerun of it
    starts a new run over the same recorded offsets, even after more events
    arrived, and records which run it reran."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 4)
    first = setup.replay("--to", "3")
    assert first.returncode == 0, first.stderr
    run_id = run_id_of(first.stdout)
    produce_per_partition(setup.bootstrap, setup.topic, 3, 4, start=4)
    setup.out.unlink()

    resumed = setup.cli("replay", "--resume", run_id)
    assert resumed.returncode == 2
    assert f"run {run_id!r} is completed; use --rerun {run_id}" in resumed.stderr
    assert read_seen(setup.out) == []

    rerun = setup.cli("replay", "--rerun", run_id)
    assert rerun.returncode == 0, rerun.stderr
    new_id = run_id_of(rerun.stdout)
    assert new_id != run_id
    assert sorted((r.partition, r.offset) for r in read_seen(setup.out)) == [
        (p, o) for p in range(3) for o in range(3)
    ]
    shown = setup.show(new_id)
    assert shown["rerun_of"] == run_id
    assert [(p["start"], p["end"]) for p in shown["partitions"]] == [(0, 3)] * 3


def test_cancelling_a_finished_run_exits_2(setup: ReplaySetup) -> None:
    """runs cancel of a completed run exits 2: only a running run can be."""
    produce_per_partition(setup.bootstrap, setup.topic, 3, 2)
    done = setup.replay()
    assert done.returncode == 0, done.stderr
    result = setup.cli("runs", "cancel", run_id_of(done.stdout))
    assert result.returncode == 2
    assert "is completed: only a running run can be cancelled" in result.stderr
