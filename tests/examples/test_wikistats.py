"""The wikistats example handler: its statistics, its idempotency, its options."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from streamcp.config import build_config
from streamcp.errors import ConfigError
from streamcp.events import Event, TopicPartition
from streamcp.examples.wikistats import (
    DATA_FILE,
    Keys,
    WikiStats,
    compute_stats,
    load_records,
    parse_change,
    read_applied,
    read_stats,
)
from streamcp.handlers import BatchFailed, Handler, discover, load
from streamcp.redis_store import RedisCheckpointStore
from streamcp.router import HandlerRouter
from streamcp.service import Service
from streamcp.services import KafkaService, RedisService, produce_records

RECORDS = load_records()
PARTITIONS = 3


def partition_of(record: dict[str, Any]) -> int:
    return zlib.crc32(record["title"].encode()) % PARTITIONS


def events_by_partition(
    records: list[dict[str, Any]], topic: str = "wiki"
) -> dict[int, list[Event]]:
    """The records as Kafka would hold them: keyed by title, offsets per partition."""
    out: dict[int, list[Event]] = {p: [] for p in range(PARTITIONS)}
    for record in records:
        partition = partition_of(record)
        out[partition].append(
            Event(
                topic=topic,
                partition=partition,
                offset=len(out[partition]),
                key=record["title"].encode(),
                value=json.dumps(record).encode(),
                timestamp_ms=record["timestamp"] * 1000,
            )
        )
    return out


@pytest.fixture
def handler(redis_service: RedisService, key_prefix: str) -> Iterator[Handler]:
    """A set-up wikistats handler on the shared Redis, under a fresh prefix."""
    options = {"redis_url": redis_service.url, "key_prefix": key_prefix}
    loaded = load("wikistats", options)
    loaded.setup()
    yield loaded
    loaded.close()


# --------------------------------------------------------------------------
# the independent computation


def test_compute_stats_on_the_sample_gives_its_known_facts() -> None:
    """The 100 sample events: 2 bot edits and 98 by people, 86 in articles,
    87 distinct pages; checked against the raw file read line by line."""
    lines = DATA_FILE.read_text("utf-8").splitlines()
    raw = [json.loads(line) for line in lines if line]
    stats = compute_stats(raw)

    assert stats["events"] == len(raw) == 100
    assert stats["bot_edits"] == sum(1 for r in raw if r["bot"]) == 2
    assert stats["human_edits"] == 98
    assert stats["edits_by_namespace"] == {0: 86, 2: 8, 118: 4, 4: 2}
    assert len(stats["bytes_added_by_page"]) == len({r["title"] for r in raw}) == 87
    assert sum(stats["bytes_added_by_page"].values()) == sum(
        r["length"]["new"] - r["length"]["old"] for r in raw
    )
    top = max(stats["bytes_added_by_page"].items(), key=lambda kv: kv[1])
    assert top == ("User:editor-060/sandbox", 4890)


def test_a_missing_length_counts_as_zero() -> None:
    """A new page (no length.old), a missing length.new and no length at all
    count the missing sizes as 0, in compute_stats and in the handler's parse."""
    records = [
        {"title": "New", "namespace": 0, "bot": False, "length": {"new": 120}},
        {"title": "Gone", "namespace": 0, "bot": True, "length": {"old": 50}},
        {"title": "Bare", "namespace": 2, "bot": False},
    ]
    stats = compute_stats(records)
    assert stats["bytes_added_by_page"] == {"New": 120, "Gone": -50, "Bare": 0}
    assert stats["bot_edits"] == 1
    assert [parse_change(json.dumps(r).encode()).bytes_added for r in records] == [
        120,
        -50,
        0,
    ]


# --------------------------------------------------------------------------
# the handler through the real Redis


def test_handler_gives_the_same_statistics_as_compute_stats(
    handler: Handler, redis_client: redis.Redis, key_prefix: str
) -> None:
    """Every sample event handled once, in batches of 7 per partition, gives
    exactly compute_stats of the file, and each partition's applied offset is
    its end."""
    by_partition = events_by_partition(RECORDS)
    for events in by_partition.values():
        for start in range(0, len(events), 7):
            handler.handle_batch(events[start : start + 7])

    assert read_stats(redis_client, key_prefix) == compute_stats(RECORDS)
    assert read_applied(redis_client, key_prefix) == {
        TopicPartition("wiki", p): len(events) for p, events in by_partition.items()
    }


def test_redelivered_and_overlapping_batches_change_nothing(
    handler: Handler, redis_client: redis.Redis, key_prefix: str
) -> None:
    """At-least-once redelivery: a batch handled again, a batch overlapping one
    already counted, and a whole partition replayed from offset 0 leave the
    statistics exactly those of the events counted once."""
    by_partition = events_by_partition(RECORDS)
    events = by_partition[0]
    assert len(events) >= 20
    handler.handle_batch(events[:10])
    handler.handle_batch(events[:10])  # the same batch again
    handler.handle_batch(events[5:20])  # overlaps 5..9
    assert read_stats(redis_client, key_prefix) == compute_stats(
        json.loads(e.value or b"") for e in events[:20]
    )
    for events in by_partition.values():  # everything again, then the rest
        handler.handle_batch(events)
        handler.handle_batch(events)

    assert read_stats(redis_client, key_prefix) == compute_stats(RECORDS)


def test_a_malformed_event_stops_the_batch_after_counting_those_before(
    handler: Handler, redis_client: redis.Redis, key_prefix: str
) -> None:
    """A value that is not a recent-change object raises BatchFailed at its
    offset; the events before it are counted, it and those after are not."""
    good = events_by_partition(RECORDS)[1][:5]
    bad = Event(topic="wiki", partition=1, offset=3, value=b"not json")
    batch = [
        *good[:3],
        bad,
        *[
            Event(topic="wiki", partition=1, offset=e.offset + 1, value=e.value)
            for e in good[3:]
        ],
    ]

    with pytest.raises(BatchFailed) as failed:
        handler.handle_batch(batch)

    assert failed.value.offset == 3
    assert isinstance(failed.value.__cause__, ValueError)
    assert read_stats(redis_client, key_prefix) == compute_stats(
        json.loads(e.value or b"") for e in good[:3]
    )
    assert read_applied(redis_client, key_prefix) == {TopicPartition("wiki", 1): 3}


def test_read_stats_of_an_unused_prefix_is_all_zero(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """Nothing counted yet reads as compute_stats of no events."""
    assert read_stats(redis_client, key_prefix) == compute_stats([])


def test_handler_writes_only_the_documented_keys(
    handler: Handler, redis_client: redis.Redis, key_prefix: str
) -> None:
    """The keys under the prefix are the four the module docstring lists."""
    handler.handle_batch(events_by_partition(RECORDS)[2])
    found = {k.decode() for k in redis_client.scan_iter(match=f"{{{key_prefix}}}:*")}
    assert found == set(Keys(key_prefix).all())


def test_service_consuming_the_sample_topic_gives_compute_stats(
    kafka: KafkaService,
    redis_service: RedisService,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    key_prefix: str,
) -> None:
    """End to end through the real broker: the sample loaded into a 3-partition
    topic and consumed by the service until caught up gives compute_stats."""
    topic = topic_factory(PARTITIONS)
    produce_records(
        kafka.bootstrap_servers,
        topic,
        [
            (r["title"].encode(), json.dumps(r).encode(), r["timestamp"] * 1000, None)
            for r in RECORDS
        ],
    )
    config = build_config(
        {
            "kafka": {
                "bootstrap_servers": kafka.bootstrap_servers,
                "topics": [topic],
                "group_id": f"g-{key_prefix}",
                "session_timeout_ms": 6000,
            },
            "redis": {"url": redis_service.url, "key_prefix": key_prefix},
            "commit": {"every_events": 10, "every_seconds": 1},
            "handler": {
                "name": "wikistats",
                "options": {"redis_url": redis_service.url, "key_prefix": key_prefix},
            },
        }
    )
    store = RedisCheckpointStore.from_url(redis_service.url, key_prefix=key_prefix)
    service = Service(
        config,
        store=store,
        router=HandlerRouter.from_config(config),
        stop_when_caught_up=True,
    )
    try:
        assert service.run() == 0, service.failure
        checkpoints = store.read(config.kafka.group_id)
    finally:
        store.close()

    assert read_stats(redis_client, key_prefix) == compute_stats(RECORDS)
    applied = read_applied(redis_client, key_prefix)
    assert sum(applied.values()) == len(RECORDS)
    assert {tp: cp.offset for tp, cp in checkpoints.items()} == applied


# --------------------------------------------------------------------------
# options


def test_missing_redis_url_is_refused_naming_the_field() -> None:
    """redis_url is required; loading without it names handler.options.redis_url."""
    with pytest.raises(ConfigError) as refused:
        load("wikistats", {"key_prefix": "x"})
    assert refused.value.field == "handler.options.redis_url"
    assert "missing" in refused.value.message


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("redis_url", 6379),
        ("delay_ms", "fast"),
        ("delay_ms", True),
        ("key_prefix", ["a"]),
    ],
)
def test_an_option_of_the_wrong_type_is_refused_naming_the_field(
    option: str, value: object
) -> None:
    """A mistyped option is refused with handler.options.<option> as the field."""
    options: dict[str, object] = {"redis_url": "redis://127.0.0.1:1/0", option: value}
    with pytest.raises(ConfigError) as refused:
        load("wikistats", options)
    assert refused.value.field == f"handler.options.{option}"


def test_unknown_and_invalid_options_are_refused() -> None:
    """An unknown option is named; a non-redis URL, a key prefix with braces and
    a negative delay are refused with the option named in the message."""
    with pytest.raises(ConfigError) as unknown:
        load("wikistats", {"redis_url": "redis://127.0.0.1:1/0", "prefix": "x"})
    assert unknown.value.field == "handler.options.prefix"
    for bad, word in (
        ({"redis_url": "http://127.0.0.1/"}, "redis_url"),
        ({"redis_url": "redis://127.0.0.1:1/0", "key_prefix": "a{b}"}, "key_prefix"),
        ({"redis_url": "redis://127.0.0.1:1/0", "delay_ms": -1}, "delay_ms"),
    ):
        with pytest.raises(ConfigError) as invalid:
            load("wikistats", bad)
        assert invalid.value.field.startswith("handler.options")
        assert word in str(invalid.value)


def test_wikistats_is_registered_as_an_entry_point() -> None:
    """`wikistats` is discovered under streamcp.handlers and loads WikiStats,
    with its defaults applied and nothing connected yet."""
    assert "wikistats" in {info.name for info in discover()}
    loaded: Any = load("wikistats", {"redis_url": "redis://127.0.0.1:1/0"})
    assert isinstance(loaded.instance, WikiStats)
    assert loaded.instance.options == WikiStats.Options(
        redis_url="redis://127.0.0.1:1/0", key_prefix="wikistats", delay_ms=0
    )


def test_stats_stay_exact_when_the_service_is_killed_and_events_come_again(
    kafka: KafkaService,
    redis_service: RedisService,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    key_prefix: str,
    tmp_path: Path,
) -> None:
    """At-least-once for real: `streamcp run` is SIGKILLed after counting
    more events than its checkpoints cover, so the next run gets those events
    again from the stored checkpoints; the statistics still come out exactly
    compute_stats of the file."""
    topic = topic_factory(PARTITIONS)
    produce_records(
        kafka.bootstrap_servers,
        topic,
        [
            (r["title"].encode(), json.dumps(r).encode(), r["timestamp"] * 1000, None)
            for r in RECORDS
        ],
    )
    group = f"g-{key_prefix}"
    config = tmp_path / "wikistats.toml"
    config.write_text(f"""
[kafka]
bootstrap_servers = "{kafka.bootstrap_servers}"
group_id = "{group}"
topics = ["{topic}"]
session_timeout_ms = 6000
[commit]
every_events = 25
every_seconds = 0
[consumer]
batch_size = 5
[redis]
url = "{redis_service.url}"
key_prefix = "{key_prefix}"
[log]
format = "json"
[handler]
name = "wikistats"
[handler.options]
redis_url = "{redis_service.url}"
key_prefix = "{key_prefix}"
delay_ms = 20
""")
    command = [sys.executable, "-m", "streamcp.cli", "run", "--config", str(config)]
    store = RedisCheckpointStore.from_url(redis_service.url, key_prefix=key_prefix)
    try:
        with (tmp_path / "run-1.log").open("wb") as log:
            first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and first.poll() is None:
                    committed = sum(cp.offset or 0 for cp in store.read(group).values())
                    counted = read_stats(redis_client, key_prefix)["events"]
                    if committed and counted >= 40 and counted > committed:
                        break
                    time.sleep(0.02)
                first.kill()
            finally:
                first.kill()
                first.wait()
        checkpoints = {tp: cp.offset or 0 for tp, cp in store.read(group).items()}
        applied = read_applied(redis_client, key_prefix)
        assert sum(applied.values()) > sum(checkpoints.values()) > 0, (
            applied,
            checkpoints,
        )

        second = subprocess.run(
            [*command, "--set", "handler.options.delay_ms=0", "--stop-when-caught-up"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert second.returncode == 0, second.stderr[-3000:]
        final = {tp: cp.offset for tp, cp in store.read(group).items()}
    finally:
        store.close()

    assert read_stats(redis_client, key_prefix) == compute_stats(RECORDS)
    assert final == read_applied(redis_client, key_prefix)
    assert sum(offset or 0 for offset in final.values()) == len(RECORDS)
