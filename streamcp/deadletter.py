"""The dead-letter producer: failed events go to a topic of their own.

A dead-letter record keeps the event's key, value and headers, and adds
headers that say where it came from and why it failed (all UTF-8 text):

====================================  ===========================================
header                                value
====================================  ===========================================
``streamcp.original.topic``           topic of the failed event
``streamcp.original.partition``       its partition
``streamcp.original.offset``          its offset
``streamcp.original.timestamp``       its record timestamp (ms), or empty
``streamcp.error.type``               the exception's class name
``streamcp.error.message``            the exception's message (at most 1000 chars)
``streamcp.attempts``                 how many calls were made
``streamcp.handler``                  the handler's name
``streamcp.failed_at``                ISO 8601 UTC time of the last failure
====================================  ===========================================

:meth:`DeadLetters.send` blocks until the broker acknowledged the record
(or refused it, or ``delivery_timeout_s`` passed): the checkpoint may move
past the event only when it returns True.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import confluent_kafka
import structlog

from streamcp.config import Config
from streamcp.events import Event
from streamcp.handlers import Handler
from streamcp.source import librdkafka_logger

HEADER_PREFIX = "streamcp."
MAX_MESSAGE_CHARS = 1000
# Consumer settings among the pass-through properties; the producer of
# dead-letter records takes the others (SASL, SSL).
_CONSUMER_ONLY = ("fetch.", "isolation.", "auto.", "group.")

log = structlog.get_logger("streamcp.deadletter")


def dead_letter_headers(
    event: Event, error: BaseException, attempts: int, handler: str
) -> list[tuple[str, str | bytes | None]]:
    """The event's own headers followed by streamcp's."""
    failed_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    ours = {
        "original.topic": event.topic,
        "original.partition": str(event.partition),
        "original.offset": str(event.offset),
        "original.timestamp": ""
        if event.timestamp_ms is None
        else str(event.timestamp_ms),
        "error.type": type(error).__name__,
        "error.message": str(error)[:MAX_MESSAGE_CHARS],
        "attempts": str(attempts),
        "handler": handler,
        "failed_at": failed_at,
    }
    # The event's own headers as they were (a null value stays null), less
    # any streamcp.* headers of an earlier dead-lettering, which these replace.
    headers: list[tuple[str, str | bytes | None]] = [
        (name, value)
        for name, value in event.headers
        if not name.startswith(HEADER_PREFIX)
    ]
    headers += [(HEADER_PREFIX + name, value.encode()) for name, value in ours.items()]
    return headers


def dead_letters_for(config: Config, handlers: Iterable[Handler]) -> DeadLetters | None:
    """A producer of dead-letter records when one of ``handlers`` needs it.

    None when no handler's policy is ``dead-letter``; nothing connects
    until the first record is sent.
    """
    wanted = (getattr(h, "policy", None) for h in handlers)
    if not any(p is not None and p.on_failure == "dead-letter" for p in wanted):
        return None
    return dead_letter_producer(config)


def dead_letter_producer(config: Config) -> DeadLetters:
    """A producer of dead-letter records with the configured Kafka access."""
    kafka = config.kafka
    properties = {
        k: v for k, v in kafka.properties.items() if not k.startswith(_CONSUMER_ONLY)
    }
    return DeadLetters(
        kafka.bootstrap_servers,
        properties,
        delivery_timeout_s=config.consumer.dead_letter_timeout_s,
    )


class DeadLetters:
    """A thread-safe producer of dead-letter records."""

    def __init__(
        self,
        bootstrap_servers: str,
        properties: Mapping[str, Any] | None = None,
        *,
        delivery_timeout_s: float = 30.0,
    ) -> None:
        settings: dict[str, Any] = dict(properties or {})
        settings.update(
            {
                "bootstrap.servers": bootstrap_servers,
                "acks": "all",
                "enable.idempotence": False,
                "message.timeout.ms": int(delivery_timeout_s * 1000),
                "allow.auto.create.topics": False,
                "linger.ms": 0,
                "logger": librdkafka_logger(),
            }
        )
        self._producer = confluent_kafka.Producer(settings)
        self._timeout_s = delivery_timeout_s
        self._lock = threading.Lock()

    def send(
        self,
        topic: str,
        event: Event,
        error: BaseException,
        attempts: int,
        handler: str,
    ) -> bool:
        """Produce the dead-letter record and wait for the broker's answer."""
        done = threading.Event()
        outcome: list[Any] = []

        def on_delivery(err: Any, _message: Any) -> None:
            outcome.append(err)
            done.set()

        headers = dead_letter_headers(event, error, attempts, handler)
        try:
            with self._lock:
                self._producer.produce(
                    topic,
                    key=event.key,
                    value=event.value,
                    headers=headers,
                    on_delivery=on_delivery,
                )
        except (BufferError, confluent_kafka.KafkaException) as exc:
            log.warning(
                "dead_letter.failed",
                topic=event.topic,
                partition=event.partition,
                offset=event.offset,
                dead_letter_topic=topic,
                error=str(exc),
            )
            return False
        deadline = self._timeout_s + 5.0
        waited = 0.0
        while not done.is_set() and waited < deadline:
            self._producer.poll(0.05)
            waited += 0.05
        err = outcome[0] if outcome else "no answer from the broker"
        if err is not None:
            log.warning(
                "dead_letter.failed",
                topic=event.topic,
                partition=event.partition,
                offset=event.offset,
                dead_letter_topic=topic,
                error=str(err),
            )
            return False
        log.info(
            "dead_letter.produced",
            topic=event.topic,
            partition=event.partition,
            offset=event.offset,
            dead_letter_topic=topic,
            attempts=attempts,
        )
        return True

    def close(self) -> None:
        self._producer.flush(5.0)
