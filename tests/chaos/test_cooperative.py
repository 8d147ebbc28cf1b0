"""Rebalance storms and crashes with the cooperative-sticky assignor.

The local broker does not hand revoked partitions to the joining member
under cooperative-sticky, so this runs only against Apache Kafka.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamcp.services import KafkaService
from tests.chaos.cluster import ClusterSettings
from tests.chaos.run import RunPlan, run_chaos

SEED = int(os.environ.get("STREAMCP_CHAOS_SEED", "7"))
DECK = {"kill": 2, "rebalance": 2, "zombie": 1, "redis_outage": 1}


@pytest.mark.apache_kafka
@pytest.mark.timeout(300)
def test_cooperative_storms_and_crashes_lose_nothing(
    kafka: KafkaService, tmp_path: Path
) -> None:
    """With cooperative-sticky, instances joining and leaving every few
    seconds, crashes, a zombie and a Redis outage lose no event, never move
    a checkpoint back, never accept a stale commit, and duplicate only
    within the bound."""
    settings = ClusterSettings(seed=SEED, assignor="cooperative-sticky")
    plan = RunPlan(
        duration_s=0.0, deck=DECK, minimum=DECK, gap_s=(0.5, 1.5), limit_s=240.0
    )
    report = run_chaos(settings, plan, tmp_path / "chaos", say=False, kafka=kafka)
    print(report.render())
    assert report.passed, report.render()
