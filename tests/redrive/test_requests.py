"""Bad redrive requests are refused before anything runs: exit 2, with why."""

from __future__ import annotations

import pytest

from tests.redrive.handlers import read_calls
from tests.redrive.helpers import RedriveSetup
from tests.replay.helpers import run_id_of, streamcp

# (arguments, with {dlq} for the dead-letter topic; words the refusal says)
BAD_REDRIVES = [
    pytest.param(
        ["--topic", "no-such-topic-3f9a"],
        "no such topic: 'no-such-topic-3f9a'",
        id="unknown-topic",
    ),
    pytest.param([], "--topic: is missing", id="no-topic"),
    pytest.param(
        ["--topic", "{dlq}", "--from", "5", "--to", "2"],
        "start offset 5 is after end offset 2",
        id="start-after-end",
    ),
    pytest.param(
        ["--topic", "{dlq}", "--partition", "9"],
        "has no partition 9",
        id="unknown-partition",
    ),
    pytest.param(
        ["--topic", "{dlq}", "--dead-letter-to", "no-such-topic-77c1"],
        "--dead-letter-to: no such topic: 'no-such-topic-77c1'",
        id="unknown-dead-letter-to",
    ),
    pytest.param(
        ["--topic", "{dlq}", "--dead-letter-to", "{dlq}"],
        "--dead-letter-to: is the topic being redriven",
        id="dead-letter-to-itself",
    ),
    pytest.param(
        ["--resume", "20240101-000000-abcd", "--topic", "{dlq}"],
        "--resume: redrives the recorded topic",
        id="resume-with-a-topic",
    ),
    pytest.param(
        ["--resume", "20240101-000000-abcd"],
        "--resume: no run '20240101-000000-abcd'",
        id="resume-unknown-run",
    ),
]


@pytest.mark.parametrize(("args", "reason"), BAD_REDRIVES)
def test_bad_redrive_request_exits_2_with_reason_and_runs_nothing(
    setup: RedriveSetup, args: list[str], reason: str
) -> None:
    """Each bad request exits with status 2, prints why on stderr, hands
    nothing to the handler and records no run."""
    result = setup.redrive(*(a.format(dlq=setup.dlq) for a in args))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert reason in result.stderr
    assert read_calls(setup.seen) == []
    assert setup.cli("runs", "list").stdout.startswith("0 run(s)")


def test_resuming_across_kinds_is_refused(setup: RedriveSetup) -> None:
    """A replay run is not resumed as a redrive, nor a redrive run by
    streamcp replay: both exit 2 and name the command that resumes it."""
    config = setup.redrive_config()
    replayed = streamcp(
        "replay", "--config", str(config), "--topic", setup.topic, "--no-progress"
    )
    assert replayed.returncode == 0, replayed.stderr
    replay_id = run_id_of(replayed.stdout)
    redriven = setup.redrive("--topic", setup.dlq, config=config)
    assert redriven.returncode == 0, redriven.stderr
    redrive_id = run_id_of(redriven.stdout)

    as_redrive = setup.redrive("--resume", replay_id, config=config)
    assert as_redrive.returncode == 2
    assert f"streamcp replay --resume {replay_id}" in as_redrive.stderr
    as_replay = streamcp("replay", "--config", str(config), "--resume", redrive_id)
    assert as_replay.returncode == 2
    assert f"streamcp dlq redrive --resume {redrive_id}" in as_replay.stderr
    rerun = streamcp("replay", "--config", str(config), "--rerun", redrive_id)
    assert rerun.returncode == 2
