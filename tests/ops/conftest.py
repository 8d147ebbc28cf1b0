"""Fixtures of the operations tests: a topic, a group, a store, a config."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streamcp.config import Config
from streamcp.redis_store import RedisCheckpointStore
from streamcp.services import KafkaService, RedisService
from tests.service.harness import config_from, raw_config


@dataclass
class Setup:
    """One test's topic, group and key prefix on the session's services."""

    kafka: KafkaService
    redis_url: str
    prefix: str
    topic: str
    group: str
    store: RedisCheckpointStore
    tmp: Path

    def raw(self, **sections: Any) -> dict[str, Any]:
        return raw_config(
            self.kafka.bootstrap_servers,
            self.redis_url,
            self.prefix,
            self.topic,
            self.group,
            **sections,
        )

    def config(self, **sections: Any) -> Config:
        return config_from(self.raw(**sections))

    def cli_args(self) -> list[str]:
        return [
            "--bootstrap-servers",
            self.kafka.bootstrap_servers,
            "--group",
            self.group,
            "--redis-url",
            self.redis_url,
            "--key-prefix",
            self.prefix,
        ]


@pytest.fixture
def setup_factory(
    kafka: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> Iterator[Callable[..., Setup]]:
    """``make(partitions=3, redis_url=None)``: a fresh topic and group."""
    stores: list[RedisCheckpointStore] = []

    def make(partitions: int = 3, redis_url: str | None = None) -> Setup:
        url = redis_url or redis_service.url
        store = RedisCheckpointStore.from_url(url, key_prefix=key_prefix)
        stores.append(store)
        return Setup(
            kafka,
            url,
            key_prefix,
            topic_factory(partitions),
            f"g-{uuid.uuid4().hex[:8]}",
            store,
            tmp_path,
        )

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def setup(setup_factory: Callable[..., Setup]) -> Setup:
    """A 3-partition topic and a fresh group on the session's Redis."""
    return setup_factory()
