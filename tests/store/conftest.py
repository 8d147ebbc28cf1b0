"""Redis topologies for the store tests: a local Redis Cluster and a primary
with a replica behind Sentinel, each started once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streamcp.services import ServiceUnavailableError
from tests.store.topologies import (
    LocalCluster,
    LocalSentinel,
    start_cluster,
    start_sentinel,
)


@pytest.fixture(scope="session")
def redis_cluster(services_workdir: Path) -> Iterator[LocalCluster]:
    """A Redis Cluster of three primaries on loopback (shared: never stop it)."""
    try:
        cluster = start_cluster(services_workdir / "redis-cluster")
    except ServiceUnavailableError as exc:
        pytest.fail(f"cannot start a local Redis Cluster: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(services_workdir: Path) -> Iterator[LocalSentinel]:
    """A primary, its replica and a Sentinel watching them (shared: never
    fail it over; start_sentinel for a private one)."""
    try:
        group = start_sentinel(services_workdir / "redis-sentinel")
    except ServiceUnavailableError as exc:
        pytest.fail(f"cannot start a local Sentinel setup: {exc}", pytrace=False)
    yield group
    group.stop()
