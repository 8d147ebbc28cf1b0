"""What the suite measures: data sets, contenders and scenarios.

A *contender* is one process configuration (a script, the interpreter that
runs it, and what its spec adds). A *scenario* runs some contenders on one
data set and compares each with a baseline measured in the same round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DataSet:
    """One topic: ``events`` events spread evenly over ``partitions``."""

    name: str
    partitions: int
    events: int


@dataclass(frozen=True)
class Contender:
    """One way of consuming, as one process per run.

    ``venv`` names a peer virtual environment (see venvs.py), or is empty
    for this interpreter.
    """

    name: str
    script: str
    label: str
    venv: str = ""
    spec: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """Contenders on one data set, each compared with ``baseline``.

    ``events`` overrides how many events each contender counts (default:
    the whole data set). The baseline is ``(scenario, contender)``, measured
    in the same round.
    """

    name: str
    title: str
    data: str
    contenders: tuple[str, ...]
    baseline: tuple[str, str]
    events: int | None = None


def _streamcp(mode: str, label: str, **spec: Any) -> Contender:
    return Contender(
        f"streamcp-{mode}", "streamcp_bench.py", label, spec={"mode": mode, **spec}
    )


CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in (
        Contender("raw", "raw.py", "raw consume() loop", spec={"variant": "plain"}),
        Contender(
            "raw-checkpoint",
            "raw.py",
            "raw loop + Redis checkpoint every 1 s",
            spec={"variant": "checkpoint"},
        ),
        Contender(
            "raw-json", "raw.py", "raw loop + json.loads", spec={"variant": "json"}
        ),
        _streamcp(
            "event", "streamcp handle(), commit every 1 s", count_round_trips=True
        ),
        _streamcp(
            "batch", "streamcp handle_batch(), commit every 1 s", count_round_trips=True
        ),
        _streamcp("json", "streamcp handle() + json.loads, commit every 1 s"),
        _streamcp("replay", "streamcp replay, handle(), commit every 1 s"),
        Contender(
            "streamcp-event-commit-1",
            "streamcp_bench.py",
            "streamcp handle(), commit every event",
            spec={"mode": "event", "commit_every_events": 1, "commit_every_seconds": 0},
        ),
        Contender(
            "streamcp-event-commit-1000",
            "streamcp_bench.py",
            "streamcp handle(), commit every 1,000 events",
            spec={
                "mode": "event",
                "commit_every_events": 1000,
                "commit_every_seconds": 0,
            },
        ),
        Contender(
            "quixstreams",
            "quixstreams_bench.py",
            "quixstreams no-op step, commit every 1 s",
            venv="quixstreams",
        ),
        Contender(
            "arroyo",
            "arroyo_bench.py",
            "sentry-arroyo no-op RunTask, commit every 1 s",
            venv="arroyo",
        ),
        Contender(
            "faust", "faust_bench.py", "faust-streaming no-op agent", venv="faust"
        ),
    )
}

PEERS = ("quixstreams", "arroyo", "faust")


def data_sets(
    events: int,
    memory_events: int,
    partition_counts: tuple[int, ...],
) -> dict[str, DataSet]:
    sets = {"p4": DataSet("p4", 4, events), "mem": DataSet("mem", 4, memory_events)}
    for count in partition_counts:
        sets.setdefault(f"p{count}", DataSet(f"p{count}", count, events))
    return sets


def scenarios(
    events: int, memory_events: int, partition_counts: tuple[int, ...], peers: bool
) -> list[Scenario]:
    headline = ("raw", "raw-checkpoint", "streamcp-event", "streamcp-batch")
    if peers:
        headline += PEERS
    found = [
        Scenario(
            "headline",
            "4 partitions, no-op handlers",
            "p4",
            headline,
            ("headline", "raw"),
        ),
        Scenario(
            "json",
            "4 partitions, json.loads of every value",
            "p4",
            ("raw-json", "streamcp-json"),
            ("json", "raw-json"),
        ),
        Scenario(
            "commit",
            "4 partitions, commit policies (every 1 s: headline)",
            "p4",
            ("streamcp-event-commit-1", "streamcp-event-commit-1000"),
            ("headline", "raw"),
        ),
        Scenario(
            "replay",
            "4 partitions, replay run (live: headline)",
            "p4",
            ("streamcp-replay",),
            ("headline", "raw"),
        ),
    ]
    for count in partition_counts:
        if count == 4:
            continue
        found.append(
            Scenario(
                f"partitions-{count}",
                f"{count} partition(s)",
                f"p{count}",
                ("raw", "streamcp-event", "streamcp-batch"),
                (f"partitions-{count}", "raw"),
            )
        )
    for name, count in (("memory-small", events), ("memory-large", memory_events)):
        found.append(
            Scenario(
                name,
                f"memory: {count:,} events of a larger topic",
                "mem",
                ("raw", "streamcp-event", "streamcp-batch"),
                (name, "raw"),
                events=count,
            )
        )
    return found
