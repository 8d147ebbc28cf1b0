"""Building events for tests: offsets per partition, keys, NDJSON, replays."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from streamcp.testing import (
    EventFactory,
    events_from_bytes,
    events_from_dicts,
    events_from_ndjson,
    replayed,
)


def test_a_key_picks_the_partition_by_crc32_and_offsets_count_per_partition() -> None:
    """Keyed records go to crc32(key) % partitions; each partition's
    offsets start at 0 and rise by one."""
    records = [{"id": str(n)} for n in range(12)]
    events = events_from_dicts(records, partitions=3, key="id")

    for event, record in zip(events, records, strict=True):
        assert event.partition == zlib.crc32(record["id"].encode()) % 3
        assert event.key == record["id"].encode()
        assert json.loads(event.value or b"") == record
    for partition in range(3):
        offsets = [e.offset for e in events if e.partition == partition]
        assert offsets == list(range(len(offsets)))


def test_records_without_a_key_go_round_robin() -> None:
    """Without a key, partitions take turns."""
    events = events_from_bytes([b"a", b"b", b"c", b"d"], partitions=2)

    assert [(e.partition, e.offset, e.key) for e in events] == [
        (0, 0, None),
        (1, 0, None),
        (0, 1, None),
        (1, 1, None),
    ]


def test_one_factory_goes_on_numbering_where_it_stopped() -> None:
    """Successive calls on one EventFactory continue the same log."""
    factory = EventFactory("orders", 1)
    first = factory.from_bytes([b"a", b"b"])
    second = factory.from_dicts([{"n": 1}], key=lambda r: str(r["n"]))

    assert [e.offset for e in [*first, *second]] == [0, 1, 2]
    assert {e.topic for e in [*first, *second]} == {"orders"}
    assert second[0].key == b"1"


def test_ndjson_lines_become_events_with_the_lines_own_bytes(tmp_path: Path) -> None:
    """Each non-blank line is one event whose value is exactly that line."""
    path = tmp_path / "sample.ndjson"
    path.write_bytes(b'{"title": "A",  "n": 1}\n\n{"title": "B", "n": 2}\r\n')

    events = events_from_ndjson(path, key="title")

    assert [e.value for e in events] == [
        b'{"title": "A",  "n": 1}',
        b'{"title": "B", "n": 2}',
    ]
    assert [e.key for e in events] == [b"A", b"B"]


def test_a_line_that_is_not_json_is_named_when_a_key_is_asked_for(
    tmp_path: Path,
) -> None:
    """A malformed line raises ValueError naming the file and line number."""
    path = tmp_path / "broken.ndjson"
    path.write_text('{"title": "A"}\nnot json\n')

    with pytest.raises(ValueError, match=r"broken\.ndjson:2"):
        events_from_ndjson(path, key="title")


def test_replayed_copies_carry_the_run_id_and_nothing_else_changes() -> None:
    """replayed() sets run_id (so is_replay is true) on equal copies."""
    live = events_from_bytes([b"a"], keys=[b"k"])
    (copy,) = replayed(live, "run-7")

    assert copy.run_id == "run-7"
    assert copy.is_replay
    assert not live[0].is_replay
    assert (copy.topic, copy.partition, copy.offset, copy.key, copy.value) == (
        "events",
        0,
        0,
        b"k",
        b"a",
    )


def test_mismatched_keys_are_refused() -> None:
    """One key per value, or none at all."""
    with pytest.raises(ValueError, match="1 keys for 2 values"):
        events_from_bytes([b"a", b"b"], keys=[b"a"])


def test_a_partition_outside_the_topic_is_refused() -> None:
    """An explicit partition must be one of the topic's."""
    with pytest.raises(ValueError, match="partition 2"):
        EventFactory("t", 2).event(b"x", partition=2)
