"""``streamcp load-sample``: the bundled Wikimedia events into a topic."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition

from streamcp.cli import main
from streamcp.examples.wikistats import DATA_FILE, load_records
from streamcp.sample import partition_ends, sample_records
from streamcp.services import KafkaService


def _consume_all(bootstrap: str, topic: str, ends: dict[int, int]) -> list[object]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    messages = []
    try:
        while len(messages) < sum(ends.values()):
            message = consumer.poll(10)
            assert message is not None, f"only {len(messages)} events came back"
            assert message.error() is None, message.error()
            messages.append(message)
    finally:
        consumer.close()
    return messages


def test_sample_records_are_keyed_by_title_and_stamped_with_the_edit_time() -> None:
    """Each line becomes one record: key = title, value = the line unchanged,
    timestamp = the edit's ``timestamp`` in milliseconds, no fixed partition."""
    records = sample_records()
    changes = load_records()
    lines = [line for line in DATA_FILE.read_bytes().splitlines() if line.strip()]
    assert len(records) == len(changes) == 100
    for (key, value, timestamp_ms, partition), change, line in zip(
        records, changes, lines, strict=True
    ):
        assert key == change["title"].encode()
        assert value == line
        assert timestamp_ms == change["timestamp"] * 1000
        assert partition is None


def test_sample_records_name_the_line_of_a_malformed_event(tmp_path: Path) -> None:
    """A line without a string title is refused with its file and line number."""
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"title": "A", "timestamp": 1}\n\n{"timestamp": 2}\n')
    try:
        sample_records(bad)
    except ValueError as exc:
        assert "bad.ndjson:3" in str(exc)
        assert "'title'" in str(exc)
    else:
        raise AssertionError("a malformed line was accepted")


def test_load_sample_creates_three_partitions_with_every_event_once(
    kafka: KafkaService,
) -> None:
    """Into a new topic, the command creates 3 partitions and loads the 100
    events, each keyed by its title, with the edit's own timestamp, and all
    of one title's edits in one partition; exit status 0."""
    topic = f"wiki-{uuid.uuid4().hex[:10]}"
    result = CliRunner().invoke(
        main,
        [
            "load-sample",
            "--bootstrap-servers",
            kafka.bootstrap_servers,
            "--topic",
            topic,
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        f"loaded 100 events from {DATA_FILE.name} into created topic {topic}"
        in result.output
    )
    ends = partition_ends(kafka.bootstrap_servers, topic, range(3))
    assert sum(ends.values()) == 100
    messages = _consume_all(kafka.bootstrap_servers, topic, ends)
    partition_of_title: dict[bytes, int] = {}
    for message in messages:
        change = json.loads(message.value())
        assert message.key() == change["title"].encode()
        assert message.timestamp()[1] == change["timestamp"] * 1000
        assert (
            partition_of_title.setdefault(message.key(), message.partition())
            == message.partition()
        )
    assert sorted(json.loads(m.value())["id"] for m in messages) == sorted(
        change["id"] for change in load_records()
    )


def test_load_sample_into_a_topic_with_events_loads_nothing_unless_append(
    kafka: KafkaService,
) -> None:
    """A second run leaves a loaded topic alone (exit 0, says so); with
    --append it loads the 100 events again."""
    topic = f"wiki-{uuid.uuid4().hex[:10]}"
    argv = [
        "load-sample",
        "--bootstrap-servers",
        kafka.bootstrap_servers,
        "--topic",
        topic,
    ]
    runner = CliRunner()
    assert runner.invoke(main, argv).exit_code == 0
    again = runner.invoke(main, argv)
    assert again.exit_code == 0, again.output
    assert "already holds 100 events: loaded nothing" in again.output
    assert sum(partition_ends(kafka.bootstrap_servers, topic, range(3)).values()) == 100
    appended = runner.invoke(main, [*argv, "--append"])
    assert appended.exit_code == 0, appended.output
    assert "into existing topic" in appended.output
    assert sum(partition_ends(kafka.bootstrap_servers, topic, range(3)).values()) == 200


def test_load_sample_takes_the_broker_from_the_service_environment_variable(
    kafka: KafkaService,
) -> None:
    """Without --bootstrap-servers the command reads
    STREAMCP_KAFKA__BOOTSTRAP_SERVERS, the variable the service reads."""
    topic = f"wiki-{uuid.uuid4().hex[:10]}"
    result = CliRunner().invoke(
        main,
        ["load-sample", "--topic", topic, "--partitions", "2"],
        env={"STREAMCP_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers},
    )
    assert result.exit_code == 0, result.output
    assert "(2 partitions)" in result.output


def test_load_sample_without_a_broker_exits_1_naming_the_address() -> None:
    """A broker that does not answer makes the command exit 1 with the
    address in the message (port 9 of loopback: nothing listens)."""
    result = CliRunner().invoke(
        main, ["load-sample", "--bootstrap-servers", "127.0.0.1:9", "--timeout", "2"]
    )
    assert result.exit_code == 1, result.output
    assert "127.0.0.1:9" in result.output
