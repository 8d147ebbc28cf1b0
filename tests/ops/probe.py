"""Reading a service's HTTP endpoint from tests: probes and metric samples."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def get(address: tuple[str, int], path: str) -> tuple[int, bytes]:
    """(status, body) of GET ``path``; a 503 is an answer, not an error."""
    url = f"http://{address[0]}:{address[1]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def probe(address: tuple[str, int], path: str) -> tuple[int, dict[str, Any]]:
    status, body = get(address, path)
    return status, json.loads(body)


def samples(
    address: tuple[str, int],
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    status, body = get(address, "/metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(address: tuple[str, int], name: str, **labels: Any) -> float | None:
    """One sample's value, ``None`` when it is not exposed."""
    key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
    return samples(address).get(key)
