"""The set-up most service tests share: a fresh topic, group and store."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamcp.redis_store import RedisCheckpointStore
from streamcp.services import KafkaService, RedisService
from tests.service.harness import raw_config


@pytest.fixture
def setup(
    kafka: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> dict[str, Any]:
    """A 3-partition topic, a fresh group and key prefix, and a store on them."""
    topic = topic_factory(3)
    group = f"g-{uuid.uuid4().hex[:8]}"
    store = RedisCheckpointStore.from_url(redis_service.url, key_prefix=key_prefix)
    return {
        "kafka": kafka,
        "redis": redis_service,
        "prefix": key_prefix,
        "topic": topic,
        "group": group,
        "store": store,
        "tmp": tmp_path,
        "topic_factory": topic_factory,
    }


def raw_for(s: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A raw configuration for the ``setup`` fixture's topic, group and store."""
    return raw_config(
        s["kafka"].bootstrap_servers,
        s["redis"].url,
        s["prefix"],
        s["topic"],
        s["group"],
        **sections,
    )
