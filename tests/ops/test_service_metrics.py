"""Scraping a running service's endpoint: counts, checkpoints, lag, probes."""

from __future__ import annotations

import threading
import time

from streamcp.events import Event
from tests.ops.conftest import Setup
from tests.ops.probe import probe, samples, value
from tests.service.harness import ServiceThread, checkpoints, produce, wait_for


class Gate:
    """A handler that holds every event until the gate opens."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.handled = 0
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        self.open.wait(60)
        with self._lock:
            self.handled += 1


def _address(running: ServiceThread) -> tuple[str, int]:
    return wait_for(
        lambda: running.service.http_address,
        timeout_s=10,
        what="the metrics endpoint to listen",
    )


def _partition_values(
    address: tuple[str, int], name: str, topic: str
) -> dict[int, float]:
    return {
        int(dict(labels)["partition"]): v
        for (sample, labels), v in samples(address).items()
        if sample == name and dict(labels).get("topic") == topic
    }


def test_scrape_while_held_shows_lag_and_in_flight_then_zero_lag_when_caught_up(
    setup: Setup,
) -> None:
    """While a handler on a worker thread holds 30 delivered events, /metrics
    shows lag 10 per partition and 30 events in flight; once released and
    committed it shows 30 handled, checkpoints at 10, lag 0 and the commits
    and rebalance."""
    produce(setup.kafka.bootstrap_servers, setup.topic, 3, 10)
    gate = Gate()
    config = setup.config(
        commit={"every_events": 5, "every_seconds": 0.5},
        consumer={"execution": "threads"},
    )
    with ServiceThread(config, gate) as running:
        address = _address(running)
        wait_for(
            lambda: (
                _partition_values(address, "streamcp_lag_events", setup.topic)
                == {0: 10, 1: 10, 2: 10}
            ),
            what="lag 10 on each partition while held",
        )
        wait_for(
            lambda: value(address, "streamcp_events_in_flight") == 30,
            what="30 events in flight",
        )
        assert value(address, "streamcp_assigned_partitions") == 3
        # Checkpoint 0 (nothing finished yet) may already be committed.
        assert _partition_values(
            address, "streamcp_checkpoint_offset", setup.topic
        ) in ({}, {0: 0, 1: 0, 2: 0})

        gate.open.set()
        wait_for(
            lambda: checkpoints(setup.store, setup.group) == {0: 10, 1: 10, 2: 10},
            what="checkpoints at 10",
        )
        wait_for(
            lambda: (
                _partition_values(address, "streamcp_lag_events", setup.topic)
                == {0: 0, 1: 0, 2: 0}
            ),
            what="lag 0 once caught up",
        )
        wait_for(
            lambda: (
                value(
                    address,
                    "streamcp_events_total",
                    topic=setup.topic,
                    outcome="handled",
                )
                == 30
            ),
            what="30 handled",
        )
        assert _partition_values(
            address, "streamcp_checkpoint_offset", setup.topic
        ) == {0: 10, 1: 10, 2: 10}
        wait_for(
            lambda: value(address, "streamcp_events_in_flight") == 0,
            what="nothing in flight",
        )
        found = samples(address)
        assert found[("streamcp_rebalances_total", (("kind", "assigned"),))] >= 1
        assert found[("streamcp_commits_total", (("result", "accepted"),))] >= 1
        assert found[("streamcp_commit_duration_seconds_count", ())] >= 1
        assert (
            found[
                ("streamcp_handler_duration_seconds_count", (("topic", setup.topic),))
            ]
            >= 3
        )
        assert (
            "streamcp_events_total",
            (("outcome", "failed"), ("topic", setup.topic)),
        ) not in found
        ages = _partition_values(
            address, "streamcp_checkpoint_age_seconds", setup.topic
        )
        assert set(ages) == {0, 1, 2} and all(0 <= age < 30 for age in ages.values())


def test_healthz_stays_healthy_while_a_handler_is_slow(setup: Setup) -> None:
    """With handlers on worker threads and a liveness bound of 1 s, a handler
    that takes 3 s per event never makes /healthz fail: the loop keeps
    polling meanwhile."""
    produce(setup.kafka.bootstrap_servers, setup.topic, 3, 1)
    gate = Gate()
    config = setup.config(
        metrics={"address": "127.0.0.1:0", "liveness_timeout_s": 1.0},
        consumer={"execution": "threads"},
    )
    with ServiceThread(config, gate) as running:
        address = _address(running)
        wait_for(
            lambda: value(address, "streamcp_events_in_flight") == 3,
            what="3 events held by the handler",
        )
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            status, body = probe(address, "/healthz")
            assert status == 200, body
            assert body["status"] == "alive"
            time.sleep(0.1)
        assert gate.handled == 0
        gate.open.set()


def test_inline_healthz_fails_only_while_one_call_holds_the_loop_past_the_bound(
    setup: Setup,
) -> None:
    """With handlers inline and a liveness bound of 1 s, a call held for
    longer makes /healthz say "stalled" (the loop cannot poll meanwhile);
    once it returns the instance is alive again and the events are
    committed."""
    produce(setup.kafka.bootstrap_servers, setup.topic, 1, 1)
    gate = Gate()
    config = setup.config(
        metrics={"address": "127.0.0.1:0", "liveness_timeout_s": 1.0},
        consumer={"execution": "inline"},
    )
    with ServiceThread(config, gate) as running:
        address = _address(running)
        wait_for(
            lambda: probe(address, "/healthz")[1]["status"] == "stalled",
            what="stalled while the call holds the loop",
        )
        assert gate.handled == 0
        gate.open.set()
        wait_for(
            lambda: probe(address, "/healthz")[1]["status"] == "alive",
            what="alive once the call returned",
        )
        wait_for(
            lambda: checkpoints(setup.store, setup.group).get(0) == 1,
            what="the event committed",
        )
