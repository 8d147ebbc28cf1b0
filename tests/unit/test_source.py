"""Turning a consumed batch into events, one run per topic-partition."""

from __future__ import annotations

from typing import Any

import pytest

from streamcp.events import Batch, Event, TopicPartition
from streamcp.source import group_by_partition


class FakeMessage:
    """Duck-typed stand-in for confluent_kafka.Message."""

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None = b"v",
        key: bytes | None = b"k",
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: tuple[int, int] = (1, 1_700_000_000_000),
    ) -> None:
        self._fields = (topic, partition, offset, value, key, headers, timestamp)

    def topic(self) -> str:
        return self._fields[0]

    def partition(self) -> int:
        return self._fields[1]

    def offset(self) -> int:
        return self._fields[2]

    def value(self) -> bytes | None:
        return self._fields[3]

    def key(self) -> bytes | None:
        return self._fields[4]

    def headers(self) -> Any:
        return self._fields[5]

    def timestamp(self) -> tuple[int, int]:
        return self._fields[6]


def test_every_slot_of_an_event_is_set_as_the_constructor_sets_it() -> None:
    """Events made on the fast path equal the keyword constructor's, field
    by field, decoded key and value included."""
    message = FakeMessage("t", 3, 41, value=b"hello", key=None, headers=[("h", b"1")])
    [(_, [event], _)] = group_by_partition([message], run_id="run-1")
    expected = Event(
        topic="t",
        partition=3,
        offset=41,
        key=None,
        value=b"hello",
        headers=[("h", b"1")],
        timestamp_ms=1_700_000_000_000,
        run_id="run-1",
    )
    for slot in Event.__slots__:
        assert getattr(event, slot) == getattr(expected, slot), slot


def test_no_timestamp_and_no_headers_become_none_and_empty() -> None:
    """A record without timestamp has ``timestamp_ms`` None; no headers, ()."""
    message = FakeMessage("t", 0, 0, timestamp=(0, -1), headers=None)
    [(_, [event], _)] = group_by_partition([message])
    assert event.timestamp_ms is None
    assert event.headers == ()
    assert event.run_id is None


@pytest.mark.parametrize(
    ("layout", "runs"),
    [
        pytest.param([("a", 0)] * 3, [("a", 0, 3)], id="one-partition"),
        pytest.param(
            [("a", 0), ("a", 1), ("a", 1)],
            [("a", 0, 1), ("a", 1, 2)],
            id="two-partitions",
        ),
        pytest.param(
            [("a", 0), ("a", 1), ("a", 0)],
            [("a", 0, 1), ("a", 1, 1), ("a", 0, 1)],
            id="partition-returns",
        ),
        pytest.param(
            [("a", 0), ("b", 0)],
            [("a", 0, 1), ("b", 0, 1)],
            id="same-partition-other-topic",
        ),
    ],
)
def test_consecutive_messages_of_one_partition_form_one_run(
    layout: list[tuple[str, int]], runs: list[tuple[str, int, int]]
) -> None:
    """Each run keeps its messages in order and counts their value bytes."""
    messages = [
        FakeMessage(t, p, i, value=b"x" * (i + 1)) for i, (t, p) in enumerate(layout)
    ]
    found = list(group_by_partition(messages))
    assert [(tp.topic, tp.partition, len(ev)) for tp, ev, _ in found] == runs
    assert all(isinstance(tp, TopicPartition) for tp, _, _ in found)
    flat = [e.offset for _, events, _ in found for e in events]
    assert flat == list(range(len(layout)))
    for _, events, nbytes in found:
        assert nbytes == sum(len(e.value or b"") for e in events)


def test_tombstones_count_no_bytes_and_an_empty_batch_yields_nothing() -> None:
    """A value of None adds no bytes; no messages, no runs."""
    [(_, _, nbytes)] = group_by_partition(
        [FakeMessage("t", 0, 0, value=None), FakeMessage("t", 0, 1, value=b"ab")]
    )
    assert nbytes == 2
    assert list(group_by_partition([])) == []


def _real(offset: int, value: bytes | None = b"v", key: bytes | None = b"k") -> Any:
    """confluent-kafka's own message type, as the consumer returns it."""
    import confluent_kafka

    return confluent_kafka.Message(
        topic="t",
        partition=2,
        offset=offset,
        key=key,
        value=value,
        headers=[("h", b"1")] if offset % 2 else None,
        timestamp=(1, 1_700_000_000_000 + offset),
    )


def test_a_run_of_real_messages_reads_like_the_constructors_events() -> None:
    """On confluent-kafka's messages (the fast path), each event, the
    columns, slices and a selection by position agree with events built by
    the keyword constructor."""
    messages = [_real(10), _real(11, key=None), _real(12, value=None)]
    [(tp, batch, nbytes)] = group_by_partition(messages, run_id="r")
    assert (tp, len(batch), nbytes) == (TopicPartition("t", 2), 3, 2)
    expected = [
        Event(
            topic="t",
            partition=2,
            offset=m.offset(),
            key=m.key(),
            value=m.value(),
            headers=m.headers() or (),
            timestamp_ms=m.timestamp()[1],
            run_id="r",
        )
        for m in messages
    ]
    assert list(batch) == expected
    assert [batch[i] for i in range(3)] == expected
    assert batch[-1] == expected[-1]
    for event, want in zip(batch, expected, strict=True):
        assert (event.decoded_key, event.decoded_value) == (want.key, want.value)
        assert event.header("h") == want.header("h")
    assert batch.values() == [b"v", b"v", None]
    assert batch.keys() == [b"k", None, b"k"]
    assert batch.offsets() == [10, 11, 12]
    assert isinstance(batch[1:], Batch)
    assert batch[1:].offsets() == [11, 12]
    assert batch.take([0, 2]).offsets() == [10, 12]
    assert batch == expected


def test_decoded_fields_are_the_raw_bytes_until_set() -> None:
    """A consumed event's decoded key and value start as the raw bytes and
    keep what the codec set; the raw fields do not change."""
    [(_, batch, _)] = group_by_partition([_real(0, value=b'{"a": 1}')])
    event = batch[0]
    assert event.decoded_value == b'{"a": 1}'
    event.decoded_value = {"a": 1}
    event.decoded_key = "k"
    assert (event.decoded_value, event.decoded_key) == ({"a": 1}, "k")
    assert (event.value, event.key) == (b'{"a": 1}', b"k")


def test_a_plain_batch_offers_the_same_columns() -> None:
    """Batch over ready-made events (the test kit's) has the same API."""
    events = [
        Event(topic="t", partition=0, offset=o, key=None, value=b"x") for o in (3, 5)
    ]
    batch = Batch(events)
    assert (batch.values(), batch.keys(), batch.offsets()) == (
        [b"x", b"x"],
        [None, None],
        [3, 5],
    )
    assert batch[1:] == events[1:]
    assert batch.take([1]).offsets() == [5]
    assert list(batch) == events
    assert Batch() == []


def test_a_consumed_event_pickles_and_copies_as_a_plain_event() -> None:
    """The message behind a consumed event cannot be pickled: pickling and
    copying give a plain Event with the same fields, decoded ones included."""
    import copy
    import pickle

    [(_, batch, _)] = group_by_partition([_real(7)], run_id="r")
    event = batch[0]
    event.decoded_value = {"n": 1}
    for clone in (pickle.loads(pickle.dumps(event)), copy.copy(event)):
        assert type(clone) is Event
        assert clone == event
        assert (clone.decoded_key, clone.decoded_value) == (b"k", {"n": 1})
