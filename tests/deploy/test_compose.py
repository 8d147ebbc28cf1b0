"""The Compose stack: valid against the Compose Specification and wired so
that ``docker compose up`` works from a clean checkout."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from streamcp.config import load_config, split_address
from streamcp.router import HandlerRouter
from tests.deploy.manifests import DEPLOY, ROOT, compose_errors, load_yaml

COMPOSE = load_yaml(ROOT / "docker-compose.yml")
SERVICES: dict[str, Any] = COMPOSE["services"]
CONFIG_PATH = DEPLOY / "compose" / "streamcp.toml"


def _config() -> Any:
    return load_config(CONFIG_PATH, environ=SERVICES["streamcp"]["environment"])


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match is not None, duration
    return int(match[1]) * (60 if match[2] == "m" else 1)


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts.append((source, target))
    return mounts


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    """docker-compose.yml validates against the Compose Specification's JSON
    schema (vendored from check-jsonschema)."""
    assert compose_errors(COMPOSE) == []


def test_compose_schema_rejects_a_misspelt_key() -> None:
    """The check is not vacuous: an unknown service key fails."""
    broken = {
        **COMPOSE,
        "services": {
            **SERVICES,
            "redis": {**SERVICES["redis"], "depends_onn": ["kafka"]},
        },
    }
    assert any("depends_onn" in error for error in compose_errors(broken))


def test_kafka_is_a_single_kraft_node_of_apache_kafka() -> None:
    """apache/kafka in KRaft mode: one process that is broker and controller,
    no ZooKeeper, replication factors of 1 for its internal topics."""
    kafka = SERVICES["kafka"]
    env = kafka["environment"]
    assert kafka["image"].startswith("apache/kafka:3.")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert not [name for name in env if "ZOOKEEPER" in name]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "INTERNAL://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_redis_persists_checkpoints_and_never_evicts_them() -> None:
    """Redis runs with the append-only file (fsync every second or always)
    and maxmemory-policy noeviction, its data on a volume."""
    redis = SERVICES["redis"]
    command = redis["command"]
    assert _option(command, "--appendonly") == "yes"
    assert _option(command, "--appendfsync") in ("everysec", "always")
    assert _option(command, "--maxmemory-policy") == "noeviction"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_every_dependency_waits_on_a_condition_the_target_can_meet() -> None:
    """Each depends_on names a condition; service_healthy targets have a
    health check, service_completed_successfully targets never restart."""
    for name, service in SERVICES.items():
        for target, rule in service.get("depends_on", {}).items():
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{name} -> {target}"
            elif condition == "service_completed_successfully":
                assert SERVICES[target].get("restart") == "no", f"{name} -> {target}"
            else:
                pytest.fail(f"{name} -> {target}: condition {condition}")


def test_streamcp_starts_after_kafka_redis_and_the_loaded_sample() -> None:
    """The service waits for a healthy Kafka and Redis and for the loader to
    have finished, so its topic exists and holds the sample."""
    depends = SERVICES["streamcp"]["depends_on"]
    assert depends == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "load-sample": {"condition": "service_completed_successfully"},
    }


def test_loader_fills_the_topic_the_service_consumes_with_three_partitions() -> None:
    """load-sample runs the streamcp image's load-sample command on the
    configured topic, with 3 partitions, against the configured broker."""
    loader = SERVICES["load-sample"]
    config = _config()
    assert loader["image"] == SERVICES["streamcp"]["image"]
    assert loader["command"][0] == "load-sample"
    assert _option(loader["command"], "--topic") in config.kafka.topics
    assert _option(loader["command"], "--partitions") == "3"
    assert (
        loader["environment"]["STREAMCP_KAFKA__BOOTSTRAP_SERVERS"]
        == config.kafka.bootstrap_servers
    )


def test_service_config_is_valid_and_names_the_stacks_hosts() -> None:
    """deploy/compose/streamcp.toml (with the service's environment) loads,
    runs the wikistats handler, and reaches Kafka and Redis by their
    service names; its metrics listen where the health check and Prometheus
    ask."""
    config = _config()
    HandlerRouter.from_config(config)
    assert config.handler is not None
    assert config.handler.name == "wikistats"
    assert config.kafka.bootstrap_servers == "kafka:9092"
    assert config.redis.url.startswith("redis://redis:6379/")
    assert config.kafka.group_instance_id is None
    host, port = split_address(config.metrics.address)
    assert host == "0.0.0.0"
    assert str(port) in SERVICES["streamcp"]["expose"]
    assert f"127.0.0.1:{port}/readyz" in " ".join(
        SERVICES["streamcp"]["healthcheck"]["test"]
    )
    scrape = load_yaml(DEPLOY / "compose" / "prometheus.yml")["scrape_configs"]
    (job,) = scrape
    assert job["dns_sd_configs"] == [
        {"names": ["streamcp"], "type": "A", "port": port, "refresh_interval": "10s"}
    ]


def test_streamcp_mounts_its_config_where_the_image_reads_it() -> None:
    """The config file is mounted read-only at /etc/streamcp/config.toml, the
    path the image's CMD and the service's command give."""
    streamcp = SERVICES["streamcp"]
    assert (
        "./deploy/compose/streamcp.toml",
        "/etc/streamcp/config.toml",
    ) in _bind_mounts(streamcp)
    assert streamcp["command"] == ["run", "--config", "/etc/streamcp/config.toml"]


def test_stop_grace_period_outlasts_the_drain_timeout() -> None:
    """Docker waits longer than three drain timeouts (in-flight events, the
    final commit, the handlers' workers) before SIGKILL."""
    grace = _seconds(SERVICES["streamcp"]["stop_grace_period"])
    assert grace > 3 * _config().consumer.drain_timeout_s


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_bind_mounted_files_exist_in_the_repository(name: str) -> None:
    """Every ./ path a service mounts is in the checkout, so a clean clone
    starts."""
    for source, _ in _bind_mounts(SERVICES[name]):
        assert (ROOT / source).exists(), source


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_published_ports_bind_to_loopback_only(name: str) -> None:
    """Ports published on the host listen on 127.0.0.1 only."""
    for port in SERVICES[name].get("ports", []):
        assert str(port).startswith("127.0.0.1:"), port


def test_grafana_provisions_the_prometheus_datasource_and_dashboard() -> None:
    """Grafana's datasource points at the stack's Prometheus, and the
    dashboard provider reads the directory where deploy/grafana is
    mounted."""
    grafana = SERVICES["grafana"]
    mounts = dict(_bind_mounts(grafana))
    provisioning = Path(mounts["./deploy/compose/grafana/provisioning"])
    assert provisioning == Path("/etc/grafana/provisioning")
    local = DEPLOY / "compose" / "grafana" / "provisioning"
    (source,) = load_yaml(local / "datasources" / "prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert source["type"] == "prometheus"
    (provider,) = load_yaml(local / "dashboards" / "streamcp.yml")["providers"]
    assert provider["options"]["path"] == mounts["./deploy/grafana"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{mounts['./deploy/grafana']}/streamcp.json"


def test_prometheus_loads_the_alert_rules() -> None:
    """The rule file is mounted where prometheus.yml's rule_files look."""
    prometheus = SERVICES["prometheus"]
    mounts = dict(_bind_mounts(prometheus))
    target = mounts["./deploy/prometheus/streamcp-alerts.yml"]
    (pattern,) = load_yaml(DEPLOY / "compose" / "prometheus.yml")["rule_files"]
    assert Path(target).match(pattern)
