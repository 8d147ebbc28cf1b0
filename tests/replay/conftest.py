"""Fixtures of the replay tests: a fresh topic, group and prefix each."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from streamcp.services import KafkaService, RedisService
from tests.replay.helpers import ReplaySetup


@pytest.fixture
def setup(
    kafka: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> ReplaySetup:
    """A 3-partition topic, a fresh group and key prefix, an output file."""
    return ReplaySetup(
        kafka,
        redis_service,
        key_prefix,
        topic_factory(3),
        f"g-{uuid.uuid4().hex[:8]}",
        tmp_path,
        tmp_path / "seen.txt",
    )
