"""Topics by name or pattern, with a handler per topic when configured."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

from streamcp.config import build_config
from streamcp.redis_store import RedisCheckpointStore
from streamcp.router import HandlerRouter
from streamcp.service import Service
from streamcp.services import KafkaService, RedisService, produce_records
from tests.service import routing_handlers
from tests.service.harness import wait_for


def test_pattern_subscription_routes_each_topic_to_its_handler(
    kafka: KafkaService,
    redis_service: RedisService,
    key_prefix: str,
    topic_factory: Callable[..., str],
) -> None:
    """A topic pattern picks up every matching topic; a [handlers."<topic>"]
    table sends that topic to its own handler, the rest to [handler]."""
    base = f"route-{uuid.uuid4().hex[:6]}"
    plain, special = f"{base}.plain", f"{base}.special"
    for name in (plain, special):
        kafka.create_topic(name, 1)
        produce_records(
            kafka.bootstrap_servers,
            name,
            [(None, b"x", None, 0), (None, b"y", None, 0)],
        )
    routing_handlers.SEEN["default"].clear()
    routing_handlers.SEEN["special"].clear()
    config = build_config(
        {
            "kafka": {
                "bootstrap_servers": kafka.bootstrap_servers,
                "group_id": f"g-{uuid.uuid4().hex[:8]}",
                "topic_pattern": f"^{base}\\..*",
                "session_timeout_ms": 6000,
            },
            "redis": {"url": redis_service.url, "key_prefix": key_prefix},
            "consumer": {"poll_timeout_s": 0.05},
            "handler": {"name": "tests.service.routing_handlers:default"},
            "handlers": {special: {"name": "tests.service.routing_handlers:special"}},
        }
    )
    store = RedisCheckpointStore.from_url(redis_service.url, key_prefix=key_prefix)
    service = Service(config, store=store, router=HandlerRouter.from_config(config))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: (
                len(routing_handlers.SEEN["default"]) == 2
                and len(routing_handlers.SEEN["special"]) == 2
            ),
            timeout_s=40,
            what="both topics handled",
        )
    finally:
        service.request_stop()
        thread.join(30)
    assert routing_handlers.SEEN["default"] == [(plain, 0), (plain, 1)]
    assert routing_handlers.SEEN["special"] == [(special, 0), (special, 1)]
