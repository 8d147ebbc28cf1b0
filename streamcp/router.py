"""Which handler gets a topic's events."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from streamcp.config import Config
from streamcp.errors import ConfigError, ServiceError
from streamcp.handlers import Handler, load


class HandlerRouter:
    """The default handler plus handlers per topic; built before connecting."""

    def __init__(
        self, default: Handler | None, per_topic: Mapping[str, Handler] | None = None
    ) -> None:
        self._default = default
        self._per_topic = dict(per_topic or {})

    @classmethod
    def from_config(cls, config: Config) -> HandlerRouter:
        """Load every configured handler; raises ConfigError naming the field."""
        default = None
        if config.handler is not None:
            default = load(
                config.handler.name,
                config.handler.options,
                policy=config.handler.policy,
            )
        per_topic = {
            topic: load(
                h.name, h.options, field_name=f"handlers.{topic}", policy=h.policy
            )
            for topic, h in config.handlers.items()
        }
        if default is None:
            if config.kafka.topic_pattern is not None:
                raise ConfigError(
                    "handler.name",
                    "a topic pattern needs a default [handler] for the topics it finds",
                )
            missing = [t for t in config.kafka.topics if t not in per_topic]
            if missing:
                raise ConfigError(
                    "handler.name", f"no handler for topic(s) {', '.join(missing)!r}"
                )
        return cls(default, per_topic)

    def for_topic(self, topic: str) -> Handler:
        handler = self._per_topic.get(topic, self._default)
        if handler is None:
            raise ServiceError(f"no handler configured for topic {topic!r}")
        return handler

    def __iter__(self) -> Iterator[Handler]:
        seen: list[Handler] = []
        for handler in [self._default, *self._per_topic.values()]:
            if handler is not None and not any(handler is s for s in seen):
                seen.append(handler)
        return iter(seen)
