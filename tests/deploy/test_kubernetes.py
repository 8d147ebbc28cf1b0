"""The Kubernetes manifests: rendered by kustomize, valid against the vendored
schemas, and consistent with streamcp's configuration."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from streamcp.config import Config, load_config, split_address
from streamcp.router import HandlerRouter
from streamcp.sample import DEFAULT_PARTITIONS
from tests.deploy.manifests import (
    KUBERNETES,
    OVERLAYS,
    find,
    manifest_errors,
    render,
)

PARTITIONS = DEFAULT_PARTITIONS  # the sample topic's, as load-sample makes it


def _overlay(name: str) -> list[dict[str, Any]]:
    return render(KUBERNETES / "overlays" / name)


def _all_rendered() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{overlay}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for overlay in ("../base", *OVERLAYS)
        for doc in _overlay(overlay)
    ]


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = find(docs, "Deployment", "streamcp")["spec"]["template"]["spec"][
        "containers"
    ]
    return container


def _config(docs: list[dict[str, Any]], tmp_path: Path) -> Config:
    """The ConfigMap's TOML with the Deployment's environment applied, as the
    pod would load it (placeholders for the Secrets and the pod name)."""
    config_map = find(docs, "ConfigMap")
    path = tmp_path / "config.toml"
    path.write_text(config_map["data"]["config.toml"], "utf-8")
    environ = {}
    for variable in _container(docs)["env"]:
        source = variable.get("valueFrom", {})
        if "fieldRef" in source:
            environ[variable["name"]] = "streamcp-5d8f7c9b4-x2x7q"
        elif source.get("secretKeyRef", {}).get("key") == "url":
            environ[variable["name"]] = "redis://:placeholder@redis.example:6379/0"
    return load_config(path, environ=environ)


@pytest.mark.parametrize(
    ("where", "doc"), _all_rendered(), ids=[where for where, _ in _all_rendered()]
)
def test_rendered_manifest_is_valid_against_its_schema(
    where: str, doc: dict[str, Any]
) -> None:
    """Every manifest of the base and of every overlay validates against the
    vendored strict schema of its kind (Kubernetes 1.30, KEDA, Prometheus
    Operator): no unknown field, no wrong type."""
    assert manifest_errors(doc) == [], where


@pytest.mark.parametrize(
    ("kind", "path", "field"),
    [
        pytest.param(
            "Deployment",
            ("spec", "template", "spec"),
            "terminationGracePeriodSecond",
            id="deployment",
        ),
        pytest.param("ScaledObject", ("spec",), "maxReplicas", id="scaledobject"),
        pytest.param("ServiceMonitor", ("spec",), "endpoint", id="servicemonitor"),
        pytest.param("PrometheusRule", ("spec",), "group", id="prometheusrule"),
    ],
)
def test_schema_rejects_a_misspelt_field(
    kind: str, path: tuple[str, ...], field: str
) -> None:
    """The schemas are strict: a misspelt field fails validation, for the
    built-in kinds and the custom resources alike."""
    doc = find(_overlay("keda"), kind)
    node = doc
    for key in path:
        node = node[key]
    node[field] = 1
    errors = manifest_errors(doc)
    assert any(field in error for error in errors), errors


@pytest.mark.parametrize("overlay", ["../base", *OVERLAYS])
def test_configmap_and_environment_make_a_valid_configuration(
    overlay: str, tmp_path: Path
) -> None:
    """The ConfigMap's TOML, with the variables the Deployment sets from
    Secrets and the downward API, loads and its handler options validate."""
    config = _config(_overlay(overlay), tmp_path)
    HandlerRouter.from_config(config)
    assert config.redis.url.startswith("redis://")
    assert config.kafka.group_instance_id == "streamcp-5d8f7c9b4-x2x7q"


def test_group_instance_id_is_the_pod_name() -> None:
    """Static membership: STREAMCP_KAFKA__GROUP_INSTANCE_ID comes from the
    pod's metadata.name through the downward API."""
    env = {v["name"]: v for v in _container(_overlay("replicas"))["env"]}
    assert env["STREAMCP_KAFKA__GROUP_INSTANCE_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }


def test_secrets_are_referenced_never_written() -> None:
    """The Redis URL and the SASL password come from secretKeyRef; no
    manifest is a Secret and no variable carries a literal value."""
    for overlay in ("../base", *OVERLAYS):
        docs = _overlay(overlay)
        assert not [d for d in docs if d["kind"] == "Secret"]
        env = {v["name"]: v for v in _container(docs)["env"]}
        assert all("value" not in v for v in env.values())
        for name in (
            "STREAMCP_REDIS__URL",
            "STREAMCP_HANDLER__OPTIONS__REDIS_URL",
            "STREAMCP_KAFKA__PROPERTIES__SASL.PASSWORD",
        ):
            assert "secretKeyRef" in env[name]["valueFrom"], name
        config_text = find(docs, "ConfigMap")["data"]["config.toml"]
        assert "url" not in tomllib.loads(config_text)["redis"]


def test_termination_grace_period_outlasts_the_drain_timeout(tmp_path: Path) -> None:
    """A graceful stop may wait consumer.drain_timeout_s three times (in-flight
    events, the final commit, the handlers' workers): the pod gets longer
    than that before SIGKILL."""
    docs = _overlay("replicas")
    config = _config(docs, tmp_path)
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 3 * config.consumer.drain_timeout_s


def test_probes_ask_healthz_and_readyz_on_the_metrics_port(tmp_path: Path) -> None:
    """Liveness asks /healthz and readiness /readyz, on the container port
    named metrics, which is where metrics.address listens on every
    interface."""
    docs = _overlay("replicas")
    container = _container(docs)
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "metrics",
    }
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "metrics",
    }
    (port,) = [p for p in container["ports"] if p["name"] == "metrics"]
    host, number = split_address(_config(docs, tmp_path).metrics.address)
    assert (host, number) == ("0.0.0.0", port["containerPort"])


def test_container_runs_unprivileged_on_a_read_only_root() -> None:
    """Non-root user, no privilege escalation, every capability dropped,
    read-only root filesystem."""
    docs = _overlay("replicas")
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    context = _container(docs)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert context == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_config_map_is_mounted_where_the_image_reads_it() -> None:
    """The generated ConfigMap (name with its content hash) is the volume
    mounted at /etc/streamcp, and the container runs with that file."""
    docs = _overlay("replicas")
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == find(docs, "ConfigMap")["metadata"]["name"]
    (mount,) = _container(docs)["volumeMounts"]
    assert (mount["name"], mount["mountPath"]) == (volume["name"], "/etc/streamcp")
    assert _container(docs)["args"] == ["run", "--config", "/etc/streamcp/config.toml"]


def test_selectors_of_service_monitor_pdb_and_service_match_the_pods() -> None:
    """The Service selects the Deployment's pods, the ServiceMonitor selects
    the Service and scrapes its metrics port, the PodDisruptionBudget lets
    one pod go at a time."""
    docs = _overlay("keda")
    pod_labels = find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = find(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = find(docs, "ServiceMonitor")["spec"]
    assert (
        monitor["selector"]["matchLabels"].items()
        <= service["metadata"]["labels"].items()
    )
    assert [e["port"] for e in monitor["endpoints"]] == [
        p["name"] for p in service["spec"]["ports"]
    ]
    pdb = find(docs, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["maxUnavailable"] == 1


def test_replicas_overlay_runs_no_more_instances_than_partitions() -> None:
    """The fixed-size overlay runs several instances, at most one per
    partition of the topic."""
    replicas = find(_overlay("replicas"), "Deployment")["spec"]["replicas"]
    assert 1 < replicas <= PARTITIONS


def test_scaled_object_scales_the_deployment_on_the_groups_lag(tmp_path: Path) -> None:
    """KEDA's kafka trigger reads the consumer group of the configuration on
    its topic (the mirrored checkpoints), never beyond the partition count;
    the Deployment leaves the replica count to KEDA's HPA."""
    docs = _overlay("keda")
    config = _config(docs, tmp_path)
    scaled = find(docs, "ScaledObject")["spec"]
    assert (
        scaled["scaleTargetRef"]["name"] == find(docs, "Deployment")["metadata"]["name"]
    )
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"] <= PARTITIONS
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == config.kafka.group_id
    assert meta["topic"] in config.kafka.topics
    assert meta["bootstrapServers"] == config.kafka.bootstrap_servers
    assert meta["allowIdleConsumers"] == "false"
    assert config.commit.mirror_to_kafka is True
    assert "replicas" not in find(docs, "Deployment")["spec"]
