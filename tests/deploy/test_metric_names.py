"""The dashboard and the alert rules ask only for what the service exports."""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy.manifests import (
    DEPLOY,
    KUBERNETES,
    exported_metrics,
    grafana_expressions,
    load_yaml,
    promql_problems,
)

DASHBOARD = json.loads((DEPLOY / "grafana" / "streamcp.json").read_text("utf-8"))
ALERTS = load_yaml(DEPLOY / "prometheus" / "streamcp-alerts.yml")
PROMETHEUS_RULE = load_yaml(KUBERNETES / "monitoring" / "prometheusrule.yaml")


def _alert_rules() -> list[dict[str, str]]:
    return [rule for group in ALERTS["groups"] for rule in group["rules"]]


def test_exported_metrics_come_from_the_service_registry() -> None:
    """The names the checks compare against are the registry's, suffixes
    included: a counter's ``_total``, a histogram's ``_bucket``."""
    names = exported_metrics()
    assert "streamcp_events_total" in names
    assert "streamcp_lag_events" in names
    assert "streamcp_commit_duration_seconds_bucket" in names
    assert "le" in names["streamcp_commit_duration_seconds_bucket"]
    assert "streamcp_events" not in names


@pytest.mark.parametrize(("where", "expr"), list(grafana_expressions(DASHBOARD)))
def test_dashboard_query_uses_only_exported_metrics_and_labels(
    where: str, expr: str
) -> None:
    """Every panel's PromQL parses and names only metrics, labels and label
    values the service exports."""
    assert promql_problems(expr) == [], where


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_rule_uses_only_exported_metrics_and_labels(rule: dict[str, str]) -> None:
    """Every alert's PromQL parses and names only metrics, labels and label
    values the service exports."""
    assert promql_problems(rule["expr"]) == []


def test_promql_check_rejects_a_metric_the_service_does_not_export() -> None:
    """The check is not vacuous: a misspelt name, a label the metric lacks and
    an outcome that never occurs are each reported."""
    problems = promql_problems(
        "sum by (topik) (rate(streamcp_event_total[5m])) + "
        'rate(streamcp_events_total{outcome="deadlettered"}[5m]) + '
        'streamcp_lag_events{partitions="1"}'
    )
    assert any("'streamcp_event_total' is not exported" in p for p in problems)
    assert any("'deadlettered'" in p for p in problems)
    assert any("no label 'partitions'" in p for p in problems)
    assert any("'topik'" in p for p in problems)


def test_dashboard_topic_variable_reads_an_exported_label() -> None:
    """The topic variable's ``label_values(metric, label)`` names an exported
    metric that has that label."""
    (variable,) = [v for v in DASHBOARD["templating"]["list"] if v["name"] == "topic"]
    match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
    assert match is not None
    metric, label = match.groups()
    assert label in exported_metrics()[metric]


@pytest.mark.parametrize(
    "needed",
    [
        pytest.param("streamcp_lag_events", id="lag"),
        pytest.param('outcome="handled"', id="throughput"),
        pytest.param("streamcp_checkpoint_age_seconds", id="checkpoint-age"),
        pytest.param("dead_lettered", id="failures"),
        pytest.param("streamcp_rebalances_total", id="rebalances"),
    ],
)
def test_dashboard_has_a_panel_for(needed: str) -> None:
    """The dashboard shows lag, throughput, checkpoint age, failures and
    rebalances."""
    assert any(needed in expr for _, expr in grafana_expressions(DASHBOARD))


def test_dashboard_panels_use_the_datasource_variable() -> None:
    """Every panel and target queries the ``datasource`` variable, so the
    dashboard works with whatever Prometheus it is imported into."""
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    "alert",
    [
        "StreamcpLagGrowing",
        "StreamcpCheckpointStalled",
        "StreamcpDeadLetters",
        "StreamcpPartitionsPaused",
    ],
)
def test_alert_rules_include(alert: str) -> None:
    """Lag growing, checkpoint not moving while lag is above zero, dead
    letters and paused partitions each have an alert with a severity."""
    (rule,) = [rule for rule in _alert_rules() if rule["alert"] == alert]
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert rule["annotations"]["summary"]


def test_checkpoint_stalled_alert_needs_lag_above_zero() -> None:
    """An idle partition's checkpoint ages too: the alert fires only while
    events wait behind it."""
    (rule,) = [r for r in _alert_rules() if r["alert"] == "StreamcpCheckpointStalled"]
    assert "streamcp_checkpoint_age_seconds" in rule["expr"]
    assert re.search(
        r"and\s+max by \(topic, partition\) \(streamcp_lag_events\) > 0", rule["expr"]
    )


def test_prometheus_rule_carries_the_same_groups_as_the_rule_file() -> None:
    """The Kubernetes PrometheusRule and the Compose stack's rule file hold
    the same alerts."""
    assert PROMETHEUS_RULE["spec"]["groups"] == ALERTS["groups"]
