"""Fixtures of the redrive tests: fresh topics, group and prefix each."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from streamcp.services import KafkaService, RedisService
from tests.redrive.helpers import RedriveSetup


@pytest.fixture
def setup(
    kafka: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> RedriveSetup:
    """A 3-partition topic with a 2-partition dead-letter topic beside it."""
    topic = topic_factory(3)
    kafka.create_topic(f"{topic}.dlq", 2, None)
    return RedriveSetup(
        kafka,
        redis_service,
        key_prefix,
        topic,
        f"g-{uuid.uuid4().hex[:8]}",
        tmp_path,
    )
