"""sentry-arroyo as a contender: a no-op RunTask, commits once per second.

Runs in the arroyo venv; its KafkaConsumer wraps confluent-kafka and takes
the librdkafka settings as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
from arroyo.commit import ONCE_PER_SECOND
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import (
    CommitOffsets,
    ProcessingStrategy,
    ProcessingStrategyFactory,
    RunTask,
)
from arroyo.types import Commit, Message, Partition, Topic
from common import Meter, emit, kafka_settings, load_spec


def main() -> None:
    spec = load_spec()
    meter = Meter()
    expected = spec["events"]
    seen = 0
    processor: StreamProcessor[KafkaPayload] | None = None

    def step(message: Message[KafkaPayload]) -> None:
        nonlocal seen
        if not seen:
            meter.start()
        message.payload.value  # noqa: B018  # touch it, as the raw loop does
        seen += 1
        if seen == expected:
            meter.stop()
            assert processor is not None
            processor.signal_shutdown()

    class Factory(ProcessingStrategyFactory[KafkaPayload]):
        def create_with_partitions(
            self, commit: Commit, partitions: Mapping[Partition, int]
        ) -> ProcessingStrategy[KafkaPayload]:
            return RunTask(step, CommitOffsets(commit))

    settings: dict[str, Any] = kafka_settings(spec)
    # arroyo stores offsets itself and insists on these two.
    settings["enable.auto.offset.store"] = False
    settings["enable.auto.commit"] = False
    consumer = KafkaConsumer(settings)
    processor = StreamProcessor(
        consumer, Topic(spec["topic"]), Factory(), ONCE_PER_SECOND
    )
    processor.run()
    emit(meter.result(seen))


if __name__ == "__main__":
    main()
