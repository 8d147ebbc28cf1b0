"""``streamcp lag`` and ``streamcp checkpoints ...`` against real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner, Result

from streamcp.cli import main
from streamcp.events import Event, TopicPartition
from streamcp.redis_store import RedisCheckpointStore
from streamcp.services import RedisService, produce_records
from streamcp.store import CommitRequest, Owner
from tests.ops.conftest import Setup
from tests.service.harness import REPO, ServiceThread, checkpoints, produce, wait_for


class Seen:
    def __init__(self) -> None:
        self.offsets: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.offsets.append((event.partition, event.offset))

    def of(self, partition: int) -> list[int]:
        with self._lock:
            return [o for p, o in self.offsets if p == partition]


def cli(setup: Setup, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, [*args, *setup.cli_args()], input=input)


def _lag(setup: Setup) -> dict[int, dict[str, object]]:
    result = cli(setup, "lag", "--json", "--topic", setup.topic)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["group"] == setup.group
    return {row["partition"]: row for row in document["partitions"]}


def test_lag_while_running_and_stopped_counts_from_the_redis_checkpoint(
    setup: Setup,
) -> None:
    """``lag --json`` lists every partition of the topic before any commit,
    shows lag 0 with checkpoint, watermark, age and committer while the
    service runs caught up, and 3 per partition once stopped with 3 more."""
    produce(setup.kafka.bootstrap_servers, setup.topic, 3, 5)
    before = _lag(setup)
    assert {
        p: (r["checkpoint"], r["high_watermark"], r["lag"]) for p, r in before.items()
    } == {p: (None, 5, 5) for p in range(3)}
    with ServiceThread(setup.config(), Seen()) as running:
        wait_for(
            lambda: checkpoints(setup.store, setup.group) == {0: 5, 1: 5, 2: 5},
            what="checkpoints at 5",
        )
        rows = _lag(setup)
        assert {p: (r["checkpoint"], r["lag"]) for p, r in rows.items()} == {
            p: (5, 0) for p in range(3)
        }
        host, pid = running.service.owner.host, running.service.owner.pid
        for row in rows.values():
            assert str(row["committed_by"]).startswith(f"{host}/{pid}/")
            assert row["owner"] == running.service.owner.instance_id
            assert 0 <= float(row["checkpoint_age_s"]) < 60  # type: ignore[arg-type]
    produce(setup.kafka.bootstrap_servers, setup.topic, 3, 3, start=5)
    rows = _lag(setup)
    assert {
        p: (r["high_watermark"], r["lag"], r["owner"]) for p, r in rows.items()
    } == {p: (8, 3, "") for p in range(3)}
    table = cli(setup, "lag", "--topic", setup.topic)
    assert table.exit_code == 0
    assert f"group {setup.group}: 3 partition(s), lag 9" in table.stdout


def test_set_dry_run_and_declined_prompt_change_nothing(setup: Setup) -> None:
    """``checkpoints set --dry-run`` prints the plan and exits 0, answering
    "n" to the prompt exits 1; neither changes a checkpoint."""
    tp = TopicPartition(setup.topic, 0)
    owner = Owner.for_this_process()
    setup.store.claim(setup.group, [tp], owner)
    setup.store.commit(setup.group, owner, [CommitRequest(tp, 7, 1)])
    dry = cli(
        setup,
        "checkpoints",
        "set",
        "--topic",
        setup.topic,
        "--partition",
        "0",
        "--offset",
        "2",
        "--dry-run",
    )
    assert dry.exit_code == 0, dry.output
    assert "dry run: nothing changed" in dry.stdout
    assert "new_checkpoint" in dry.stdout and " 7 " in dry.stdout
    declined = cli(
        setup,
        "checkpoints",
        "set",
        "--topic",
        setup.topic,
        "--partition",
        "0",
        "--offset",
        "2",
        input="n\n",
    )
    assert declined.exit_code == 1
    assert "nothing changed" in declined.output
    assert checkpoints(setup.store, setup.group) == {0: 7}


def test_set_by_time_finds_the_first_offset_at_or_after_that_time(
    setup: Setup,
) -> None:
    """``set --time`` sets every partition to the first offset whose
    timestamp is at or after that time, even on a broker whose own time
    lookup answers offset 0 for every time (it reads forward from there)."""
    base = 1_700_000_000_000
    produce_records(
        setup.kafka.bootstrap_servers,
        setup.topic,
        [(b"k", b"v", base + i * 1000, p) for p in range(3) for i in range(6)],
    )
    at = datetime.fromtimestamp((base + 3500) / 1000, UTC).isoformat()
    result = cli(
        setup, "checkpoints", "set", "--topic", setup.topic, "--time", at, "--yes"
    )
    assert result.exit_code == 0, result.output
    assert checkpoints(setup.store, setup.group) == {0: 4, 1: 4, 2: 4}
    assert all(cp.operator_change for cp in setup.store.read(setup.group).values())


def test_reset_to_either_end_moves_checkpoints_and_is_in_history(
    setup: Setup,
) -> None:
    """``reset --to earliest`` and ``--to latest`` move checkpoints to the
    log's ends, marked as operator changes; each is an operator entry in
    ``history``."""
    produce(setup.kafka.bootstrap_servers, setup.topic, 3, 6)
    result = cli(
        setup, "checkpoints", "set", "--topic", setup.topic, "--offset", "4", "--yes"
    )
    assert result.exit_code == 0, result.output
    assert "set 3 checkpoint(s)" in result.stdout
    result = cli(
        setup,
        "checkpoints",
        "reset",
        "--topic",
        setup.topic,
        "--partition",
        "1",
        "--to",
        "earliest",
        "--yes",
    )
    assert result.exit_code == 0, result.output
    result = cli(
        setup,
        "checkpoints",
        "reset",
        "--topic",
        setup.topic,
        "--partition",
        "2",
        "--to",
        "latest",
        "--yes",
    )
    assert result.exit_code == 0, result.output
    assert checkpoints(setup.store, setup.group) == {0: 4, 1: 0, 2: 6}
    assert all(cp.operator_change for cp in setup.store.read(setup.group).values())

    history = cli(setup, "checkpoints", "history", "--json")
    assert history.exit_code == 0, history.output
    entries = json.loads(history.stdout)["history"]
    assert [(e["kind"], e["partition"], e["offset"]) for e in entries][-2:] == [
        ("operator", 1, 0),
        ("operator", 2, 6),
    ]
    table = cli(setup, "checkpoints", "history")
    assert table.exit_code == 0
    assert f"group {setup.group}: {len(entries)} history entries" in table.stdout


def test_export_then_import_into_an_empty_redis_reproduces_every_checkpoint(
    setup: Setup,
    redis_factory: Callable[..., RedisService],
    tmp_path: object,
) -> None:
    """A group's export imported into an empty Redis gives the same
    checkpoint for every partition: offset, epoch, committed_at, who
    committed and events; owners are cleared. A second import is refused
    without --force."""
    produce(setup.kafka.bootstrap_servers, setup.topic, 3, 4)
    with ServiceThread(setup.config(), Seen()):
        wait_for(
            lambda: checkpoints(setup.store, setup.group) == {0: 4, 1: 4, 2: 4},
            what="checkpoints at 4",
        )
    exported = cli(setup, "checkpoints", "export")
    assert exported.exit_code == 0, exported.output
    document = exported.stdout
    assert len(json.loads(document)["checkpoints"]) == 3

    target = redis_factory()
    moved = RedisCheckpointStore.from_url(target.url, key_prefix=setup.prefix)
    args = [
        "--group",
        setup.group,
        "--redis-url",
        target.url,
        "--key-prefix",
        setup.prefix,
    ]
    runner = CliRunner()
    try:
        result = runner.invoke(
            main, ["checkpoints", "import", "-", "--yes", *args], input=document
        )
        assert result.exit_code == 0, result.output
        source = setup.store.read(setup.group)
        copied = moved.read(setup.group)
        assert set(copied) == set(source)
        for tp, cp in source.items():
            assert copied[tp].owner == ""
            for field in (
                "offset",
                "epoch",
                "committed_at",
                "committed_by_host",
                "committed_by_pid",
                "committed_by_member",
                "events",
            ):
                assert getattr(copied[tp], field) == getattr(cp, field), field
        again = runner.invoke(
            main, ["checkpoints", "import", "-", "--yes", *args], input=document
        )
        assert again.exit_code == 1
        assert "--force" in again.output
    finally:
        moved.close()


def test_delete_refuses_while_a_partition_has_an_owner_unless_forced(
    setup: Setup,
) -> None:
    """``checkpoints delete`` exits 1 naming the owner while one is recorded,
    changes nothing on --dry-run, and with --force --yes removes every key."""
    tp = TopicPartition(setup.topic, 0)
    owner = Owner.for_this_process()
    setup.store.claim(setup.group, [tp], owner)
    refused = cli(setup, "checkpoints", "delete", "--yes")
    assert refused.exit_code == 1
    assert owner.instance_id in refused.output
    dry = cli(setup, "checkpoints", "delete", "--force", "--dry-run")
    assert dry.exit_code == 0 and "dry run" in dry.stdout
    assert setup.store.read(setup.group)
    forced = cli(setup, "checkpoints", "delete", "--force", "--yes")
    assert forced.exit_code == 0, forced.output
    assert setup.store.read(setup.group) == {}
    assert setup.store.history(setup.group) == []


def test_set_while_running_makes_the_consumer_continue_from_the_new_offset(
    setup: Setup,
) -> None:
    """``checkpoints set`` (a real subprocess) while the service runs: the
    service's next commit of that partition is refused, it re-handles from
    the new offset, and no commit after the operator change carries the
    older in-memory position or the old epoch."""
    produce(setup.kafka.bootstrap_servers, setup.topic, 3, 10)
    seen = Seen()
    config = setup.config(commit={"every_events": 5, "every_seconds": 0.3})
    with ServiceThread(config, seen):
        wait_for(
            lambda: checkpoints(setup.store, setup.group) == {0: 10, 1: 10, 2: 10},
            what="checkpoints at 10",
        )
        handled_before = len(seen.of(0))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "streamcp.cli",
                "checkpoints",
                "set",
                "--topic",
                setup.topic,
                "--partition",
                "0",
                "--offset",
                "3",
                "--yes",
                *setup.cli_args(),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert result.returncode == 0, result.stderr
        operator_epoch = setup.store.read(setup.group)[
            TopicPartition(setup.topic, 0)
        ].epoch
        produce(setup.kafka.bootstrap_servers, setup.topic, 3, 2, start=10)
        wait_for(
            lambda: checkpoints(setup.store, setup.group) == {0: 12, 1: 12, 2: 12},
            what="checkpoints at 12",
        )
    # Events 10 and 11 may be handled before the refused commit tells the
    # service; after that it handles everything from 3 on again.
    again = seen.of(0)[handled_before:]
    assert again[-9:] == list(range(3, 12)), again
    assert seen.of(1) == list(range(12))

    entries = [
        e
        for e in setup.store.history(setup.group, 0)
        if e.topic_partition.partition == 0
    ]
    kinds = [e.kind for e in entries]
    at = kinds.index("operator")
    assert entries[at].offset == 3
    later = [e for e in entries[at + 1 :] if e.kind == "commit"]
    assert later, kinds
    assert all(e.epoch >= operator_epoch for e in later)
    offsets = [e.offset or 0 for e in later]
    assert offsets == sorted(offsets) and offsets[-1] == 12


def test_set_on_an_idle_partition_is_adopted_without_new_events(setup: Setup) -> None:
    """An idle partition whose checkpoint an operator sets back is re-handled
    from the new offset within a few seconds, with no new event arriving."""
    produce(setup.kafka.bootstrap_servers, setup.topic, 3, 6)
    seen = Seen()
    config = setup.config(commit={"every_events": 1000, "every_seconds": 0.3})
    with ServiceThread(config, seen):
        wait_for(
            lambda: checkpoints(setup.store, setup.group) == {0: 6, 1: 6, 2: 6},
            what="checkpoints at 6",
        )
        result = cli(
            setup,
            "checkpoints",
            "set",
            "--topic",
            setup.topic,
            "--partition",
            "1",
            "--offset",
            "2",
            "--yes",
        )
        assert result.exit_code == 0, result.output
        wait_for(
            lambda: seen.of(1) == [*range(6), *range(2, 6)],
            timeout_s=15,
            what="partition 1 handled again from offset 2",
        )
        wait_for(
            lambda: checkpoints(setup.store, setup.group)[1] == 6,
            what="partition 1 committed again at its end",
        )
    assert seen.of(0) == list(range(6))


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        pytest.param(
            ["--partition", "9", "--offset", "1"],
            "no such partition",
            id="unknown-partition",
        ),
        pytest.param(
            ["--offset", "99999999999999999999"],
            "must be between 0 and",
            id="offset-past-64-bits",
        ),
        pytest.param(["--offset", "-3"], "not in the range", id="negative-offset"),
    ],
)
def test_set_refuses_impossible_targets_with_exit_2(
    setup: Setup, args: list[str], reason: str
) -> None:
    """``set`` refuses a partition the topic does not have, and an offset no
    Kafka log can hold, before writing anything."""
    result = cli(setup, "checkpoints", "set", "--topic", setup.topic, *args, "--yes")
    assert result.exit_code == 2, result.output
    assert reason in result.output
    assert setup.store.read(setup.group) == {}
