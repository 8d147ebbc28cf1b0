"""The metrics table in docs/metrics.md is what the registry exposes."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from streamcp.events import TopicPartition
from streamcp.metrics import OUTCOMES, Metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `(streamcp_[a-z_]+)` \| (\w+) \|([^|]*)\|")


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            name, kind, labels = match.groups()
            rows[name] = (kind, frozenset(re.findall(r"`(\w+)`", labels)))
    return rows


def exercised_registry() -> Metrics:
    """A Metrics with every collector given one sample, so each shows labels."""
    metrics = Metrics()
    tp = TopicPartition("orders", 0)
    for outcome in OUTCOMES:
        metrics.count_events("orders", outcome)
    metrics.observe_handler("orders", 0.01)
    metrics.observe_commit("accepted", 0.001)
    metrics.count_refusal("orders", "stale_epoch")
    metrics.set_partition(tp, checkpoint=5, age_s=1.0, lag=2)
    metrics.set_consumer(in_flight=1, paused=0, assigned=1)
    metrics.count_rebalance("assigned")
    metrics.set_dependency("redis", True)
    metrics.replay_progress("run-1", 3, 10)
    return metrics


def exposed() -> dict[str, tuple[str, frozenset[str]]]:
    body, _ = exercised_registry().exposition()
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name.endswith("_created"):
            continue  # the client's creation time of a counter or histogram
        labels: set[str] = set()
        for sample in family.samples:
            labels.update(k for k in sample.labels if k != "le")
        name = family.name + ("_total" if family.type == "counter" else "")
        found[name] = (family.type, frozenset(labels))
    return found


def test_every_documented_metric_is_registered_with_its_type_and_labels() -> None:
    """Each row of the table names a metric the registry exposes, with the
    same type and label names; and the registry exposes nothing else."""
    table = documented()
    assert len(table) >= 15
    assert exposed() == table


def test_every_metric_name_starts_with_streamcp_and_has_help_text() -> None:
    """Names carry the streamcp_ prefix and every family has help text."""
    body, _ = exercised_registry().exposition()
    for family in text_string_to_metric_families(body.decode()):
        assert family.name.startswith("streamcp_")
        assert len(family.documentation) > 20, family.name


def test_two_instances_in_one_process_do_not_share_collectors() -> None:
    """Each Metrics has its own registry: counting in one leaves the other
    at zero, and creating a second one raises no duplicate-name error."""
    one, two = Metrics(), Metrics()
    one.count_events("orders", "handled", 5)
    assert (
        one.registry.get_sample_value(
            "streamcp_events_total", {"topic": "orders", "outcome": "handled"}
        )
        == 5
    )
    assert (
        two.registry.get_sample_value(
            "streamcp_events_total", {"topic": "orders", "outcome": "handled"}
        )
        is None
    )


def test_dropping_a_partition_removes_its_gauges() -> None:
    """After drop_partition the partition's checkpoint, age and lag gauges
    are no longer exposed; replay_ended does the same for a run."""
    metrics = exercised_registry()
    metrics.drop_partition(TopicPartition("orders", 0))
    metrics.replay_ended("run-1")
    body, _ = metrics.exposition()
    text = body.decode()
    for name in (
        "streamcp_checkpoint_offset{",
        "streamcp_lag_events{",
        "streamcp_checkpoint_age_seconds{",
        "streamcp_replay_events_done{",
    ):
        assert name not in text
