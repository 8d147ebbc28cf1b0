"""The data set: JSON values of a fixed size, spread evenly over partitions.

Produced once per run with a batching producer (many records per batch).
The local broker's ListOffsets "latest" answer is wrong for multi-record
batches, so nothing here or in a contender asks for end offsets: every
partition gets a known number of events, at offsets 0 to n - 1, and the
contenders stop by counting.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, Producer

PRODUCER_SETTINGS = {
    "linger.ms": 20,
    "batch.num.messages": 10_000,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 262_144,
    "acks": "1",
    "compression.type": "none",
    "enable.idempotence": False,
}


def value_of(index: int, size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes, unique to ``index``."""
    head = (
        f'{{"id":{index},"user":"user-{index % 10_007:05d}","kind":"click",'
        f'"amount":{index % 1000 / 10},"pad":"'
    )
    pad = size - len(head) - 2
    if pad < 0:
        raise ValueError(f"event size {size} is below the minimum {len(head) + 2}")
    return (head + "x" * pad + '"}').encode()


def per_partition(events: int, partitions: int) -> list[int]:
    """How many of ``events`` each partition gets (the first ones one more)."""
    base, extra = divmod(events, partitions)
    return [base + (1 if p < extra else 0) for p in range(partitions)]


def produce(
    bootstrap: str,
    topic: str,
    events: int,
    partitions: int,
    size: int,
    *,
    timeout_s: float = 600.0,
) -> float:
    """Produce the data set; returns the seconds it took.

    Records go round the partitions in turn, keyed ``k<index>``. Raises
    RuntimeError when any record was not delivered.
    """
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_SETTINGS})
    failures: list[KafkaError] = []

    def delivered(err: KafkaError | None, _message: object) -> None:
        if err is not None:
            failures.append(err)

    started = time.perf_counter()
    for index in range(events):
        value = value_of(index, size)
        while True:
            try:
                producer.produce(
                    topic,
                    value,
                    f"k{index}".encode(),
                    partition=index % partitions,
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.05)
        if index % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(timeout_s)
    if failures or remaining:
        raise RuntimeError(
            f"{len(failures)} records failed and {remaining} were not "
            f"delivered to {topic!r}: {failures[:1]}"
        )
    return time.perf_counter() - started
