"""The baseline: a plain confluent-kafka ``consume()`` loop.

Three fixed variants, chosen by ``spec["variant"]``; docs/benchmarks.md
shows this code. Each touches every event's value and stops when it has
counted ``spec["events"]`` events. No Kafka commits.

* ``plain``: nothing else;
* ``json``: ``json.loads`` of every value;
* ``checkpoint``: remembers each partition's next offset and writes them
  all to one Redis hash once a second (one HSET, one round trip).
"""

from __future__ import annotations

import json
import time

from common import Meter, emit, kafka_settings, load_spec
from confluent_kafka import Consumer

BATCH = 500
POLL_TIMEOUT_S = 0.1


def plain(consumer: Consumer, expected: int, meter: Meter) -> int:
    seen = 0
    while seen < expected:
        messages = consumer.consume(BATCH, POLL_TIMEOUT_S)
        if not messages:
            continue
        meter.start()
        for message in messages:
            if message.error() is None:
                message.value()
                seen += 1
    meter.stop()
    return seen


def decoding(consumer: Consumer, expected: int, meter: Meter) -> int:
    seen = 0
    loads = json.loads
    while seen < expected:
        messages = consumer.consume(BATCH, POLL_TIMEOUT_S)
        if not messages:
            continue
        meter.start()
        for message in messages:
            if message.error() is None:
                loads(message.value())
                seen += 1
    meter.stop()
    return seen


def checkpointing(
    consumer: Consumer, expected: int, meter: Meter, redis_url: str, key: str
) -> int:
    import redis  # noqa: PLC0415  # only this variant pays for importing it

    client = redis.Redis.from_url(redis_url)
    positions: dict[int, int] = {}
    seen = 0
    due = time.monotonic() + 1.0
    while seen < expected:
        messages = consumer.consume(BATCH, POLL_TIMEOUT_S)
        if messages:
            meter.start()
            for message in messages:
                if message.error() is None:
                    message.value()
                    positions[message.partition()] = message.offset() + 1
                    seen += 1
        if positions and time.monotonic() >= due:
            client.hset(key, mapping=positions)
            due = time.monotonic() + 1.0
    client.hset(key, mapping=positions)
    meter.stop()
    return seen


def main() -> None:
    spec = load_spec()
    consumer = Consumer(kafka_settings(spec))
    consumer.subscribe([spec["topic"]])
    meter = Meter()
    expected = spec["events"]
    variant = spec.get("variant", "plain")
    if variant == "plain":
        seen = plain(consumer, expected, meter)
    elif variant == "json":
        seen = decoding(consumer, expected, meter)
    else:
        seen = checkpointing(
            consumer,
            expected,
            meter,
            spec["redis_url"],
            f"{spec['key_prefix']}:raw-checkpoints",
        )
    emit(meter.result(seen))
    consumer.close()


if __name__ == "__main__":
    main()
