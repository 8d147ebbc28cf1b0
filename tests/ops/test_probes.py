"""/healthz and /readyz: the probes' logic, and readiness against real Redis."""

from __future__ import annotations

import socket
from collections.abc import Callable

from structlog.testing import capture_logs

from streamcp.health import Health, HealthServer
from streamcp.metrics import Metrics
from streamcp.services import KafkaService, RedisService
from tests.ops.conftest import Setup
from tests.ops.probe import get, probe
from tests.service.harness import ServiceThread, checkpoints, produce, wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_healthz_fails_once_the_loop_has_not_iterated_within_the_bound() -> None:
    """Liveness holds while the loop iterated within the bound and fails
    (503, "stalled") once it has not, served over real HTTP."""
    clock = FakeClock()
    health = Health(liveness_timeout_s=5.0, kafka_stale_s=6.0, clock=clock)
    server = HealthServer("127.0.0.1", 0, Metrics(), health)
    address = server.start()
    try:
        assert probe(address, "/healthz")[0] == 200
        clock.now += 5.5
        status, body = probe(address, "/healthz")
        assert (status, body["status"]) == (503, "stalled")
        health.iterated()
        assert probe(address, "/healthz")[0] == 200
    finally:
        server.close()


def test_readyz_needs_a_fresh_broker_report_and_redis_and_not_stopping() -> None:
    """Readiness is 503 until both the broker and Redis were seen up, turns
    503 when the broker report grows stale or Redis is down, and stays 503
    once the service is stopping."""
    clock = FakeClock()
    health = Health(liveness_timeout_s=5.0, kafka_stale_s=6.0, clock=clock)
    assert health.readiness() == (
        False,
        {"status": "unready", "kafka": "unknown", "redis": "unknown"},
    )
    health.kafka(True)
    health.redis(True)
    assert health.readiness()[0]
    clock.now += 7
    assert health.readiness() == (
        False,
        {"status": "unready", "kafka": "unknown", "redis": "up"},
    )
    health.kafka(True)
    health.redis(False)
    assert not health.readiness()[0]
    health.redis(True)
    health.stopping()
    assert health.readiness() == (
        False,
        {"status": "stopping", "kafka": "up", "redis": "up"},
    )


def test_unknown_path_is_404_and_metrics_is_prometheus_text() -> None:
    """The endpoint answers 404 for other paths and serves the registry at
    /metrics in Prometheus text format."""
    metrics = Metrics()
    metrics.count_events("orders", "handled", 3)
    server = HealthServer(
        "127.0.0.1", 0, metrics, Health(liveness_timeout_s=1, kafka_stale_s=1)
    )
    address = server.start()
    try:
        assert get(address, "/nope")[0] == 404
        status, body = get(address, "/metrics")
        assert status == 200
        assert b'streamcp_events_total{outcome="handled",topic="orders"} 3.0' in body
    finally:
        server.close()


def test_readyz_turns_unready_while_redis_is_stopped_and_ready_after_start(
    setup_factory: Callable[..., Setup],
    redis_factory: Callable[..., RedisService],
) -> None:
    """With its Redis stopped the running service's /readyz answers 503 with
    redis "down"; after the same Redis starts again it answers 200."""
    private = redis_factory()
    setup = setup_factory(redis_url=private.url)
    with ServiceThread(setup.config(), lambda event: None) as running:
        address = wait_for(lambda: running.service.http_address, what="endpoint")
        wait_for(lambda: probe(address, "/readyz")[0] == 200, what="ready at start")
        private.stop()
        _, body = wait_for(
            lambda: (r := probe(address, "/readyz"))[0] == 503 and r,
            timeout_s=15,
            what="unready while Redis is stopped",
        )
        assert body["redis"] == "down" and body["kafka"] == "up"
        assert probe(address, "/healthz")[0] == 200
        private.start()
        wait_for(
            lambda: probe(address, "/readyz")[0] == 200,
            timeout_s=15,
            what="ready again after Redis started",
        )


def test_instance_with_no_partition_assigned_is_ready(
    setup_factory: Callable[..., Setup],
) -> None:
    """Of two instances of a group on a 1-partition topic, the one that got
    no partition still answers /readyz with 200."""
    setup = setup_factory(partitions=1)
    with (
        ServiceThread(setup.config(), lambda event: None) as one,
        ServiceThread(setup.config(), lambda event: None) as two,
    ):

        def idle() -> ServiceThread | None:
            counts = {
                r: r.service.metrics.registry.get_sample_value(
                    "streamcp_assigned_partitions"
                )
                for r in (one, two)
            }
            if sorted(counts.values()) != [0, 1]:
                return None
            return next(r for r, n in counts.items() if n == 0)

        idle_one = wait_for(idle, timeout_s=45, what="one instance with 0 partitions")
        address = idle_one.service.http_address
        assert address is not None
        wait_for(
            lambda: probe(address, "/readyz")[0] == 200, what="the idle instance ready"
        )


def test_readyz_turns_unready_once_the_broker_is_gone(
    setup_factory: Callable[..., Setup],
    kafka_factory: Callable[[], KafkaService],
) -> None:
    """With its private broker stopped, a running service's /readyz answers
    503 with kafka "down" within a few statistics intervals, while /healthz
    stays 200 (the loop still iterates)."""
    broker = kafka_factory()
    setup = setup_factory()
    setup.kafka = broker
    broker.create_topic(setup.topic, 3)
    with ServiceThread(setup.config(), lambda event: None) as running:
        address = wait_for(lambda: running.service.http_address, what="endpoint")
        wait_for(
            lambda: probe(address, "/readyz")[0] == 200,
            timeout_s=30,
            what="ready at start",
        )
        broker.stop()
        _, body = wait_for(
            lambda: (r := probe(address, "/readyz"))[0] == 503 and r,
            timeout_s=20,
            what="unready once the broker is gone",
        )
        assert body["kafka"] in ("down", "unknown") and body["redis"] == "up"
        assert probe(address, "/healthz")[0] == 200


def test_taken_metrics_port_is_logged_and_the_service_consumes_anyway(
    setup: Setup,
) -> None:
    """When the configured address is taken the service logs
    metrics.bind_failed at error level, has no endpoint, and still commits."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        produce(setup.kafka.bootstrap_servers, setup.topic, 3, 2)
        config = setup.config(metrics={"address": f"127.0.0.1:{port}"})
        with (
            capture_logs() as logs,
            ServiceThread(config, lambda event: None) as running,
        ):
            wait_for(
                lambda: checkpoints(setup.store, setup.group) == {0: 2, 1: 2, 2: 2},
                what="checkpoints at 2",
            )
            assert running.service.http_address is None
    finally:
        taken.close()
    failed = [e for e in logs if e["event"] == "metrics.bind_failed"]
    assert len(failed) == 1 and failed[0]["log_level"] == "error"
    assert failed[0]["address"] == f"127.0.0.1:{port}"
