"""Log events: bound context, lifecycle at info, per batch at debug."""

from __future__ import annotations

from structlog.testing import capture_logs

from tests.ops.conftest import Setup
from tests.service.harness import ServiceThread, checkpoints, produce, wait_for


def test_service_events_carry_the_group_and_partition_events_their_partition(
    setup: Setup,
) -> None:
    """Every event of a run carries the group; partition events carry topic
    and partition; lifecycle events are at info, each batch and commit at
    debug, and metrics.listening names the chosen port."""
    produce(setup.kafka.bootstrap_servers, setup.topic, 3, 4)
    with capture_logs() as logs, ServiceThread(setup.config(), lambda event: None):
        wait_for(
            lambda: checkpoints(setup.store, setup.group) == {0: 4, 1: 4, 2: 4},
            what="checkpoints at 4",
        )
    service_events = [
        e
        for e in logs
        if e["event"].split(".")[0]
        in ("service", "partition", "checkpoint", "batch", "metrics")
    ]
    assert service_events
    assert all(e.get("group") == setup.group for e in service_events)
    levels = {e["event"]: e["log_level"] for e in service_events}
    for name in (
        "service.started",
        "partition.assigned",
        "partition.started",
        "service.stopping",
        "service.stopped",
        "metrics.listening",
    ):
        assert levels[name] == "info", name
    assert levels["batch.polled"] == "debug"
    assert levels["checkpoint.committed"] == "debug"
    started = [e for e in logs if e["event"] == "partition.started"]
    assert sorted((e["topic"], e["partition"]) for e in started) == [
        (setup.topic, p) for p in range(3)
    ]
    listening = next(e for e in logs if e["event"] == "metrics.listening")
    assert listening["port"] > 0
