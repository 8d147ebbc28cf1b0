"""Building events for tests: from dicts, from bytes, from NDJSON files.

Events get offsets the way a topic would give them: each partition counts
from its start offset on, one by one. A key picks the partition as
librdkafka's default partitioner does for keyed records (CRC-32 of the key,
modulo the partition count); records without a key go round-robin.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from streamcp.events import Event

KeySpec = str | Callable[[Mapping[str, Any]], str | bytes | None] | None


class EventFactory:
    """Makes the events of one topic, numbering offsets per partition.

    Successive calls go on where the previous ones stopped, so events built
    in several steps look like one log.
    """

    def __init__(
        self, topic: str = "events", partitions: int = 1, *, start_offset: int = 0
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be 1 or more, got {partitions!r}")
        self.topic = topic
        self.partitions = partitions
        self._next_offsets = [start_offset] * partitions
        self._round_robin = 0

    def event(
        self,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes | None]] = (),
        timestamp_ms: int | None = None,
        run_id: str | None = None,
    ) -> Event:
        """One event at the next offset of its partition.

        The partition is ``partition`` when given, else chosen by ``key``.
        """
        chosen = self._partition_for(key) if partition is None else partition
        if not 0 <= chosen < self.partitions:
            raise ValueError(
                f"partition {chosen!r} is not one of the topic's {self.partitions}"
            )
        offset = self._next_offsets[chosen]
        self._next_offsets[chosen] = offset + 1
        return Event(
            topic=self.topic,
            partition=chosen,
            offset=offset,
            key=key,
            value=value,
            headers=tuple(headers),
            timestamp_ms=timestamp_ms,
            run_id=run_id,
        )

    def from_bytes(
        self,
        values: Iterable[bytes | None],
        *,
        keys: Iterable[bytes | None] | None = None,
        run_id: str | None = None,
    ) -> list[Event]:
        """One event per value, with the matching key from ``keys`` if given."""
        values = list(values)
        key_list = [None] * len(values) if keys is None else list(keys)
        if len(key_list) != len(values):
            raise ValueError(
                f"got {len(key_list)} keys for {len(values)} values; give one each"
            )
        return [
            self.event(value, key=key, run_id=run_id)
            for value, key in zip(values, key_list, strict=True)
        ]

    def from_dicts(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        key: KeySpec = None,
        run_id: str | None = None,
    ) -> list[Event]:
        """One event per record, its value the record as compact JSON.

        ``key`` is the name of the record field that becomes the key, or a
        function of the record returning it, or ``None`` for no key.
        """
        return [
            self.event(_json_bytes(record), key=_key_of(record, key), run_id=run_id)
            for record in records
        ]

    def from_ndjson(
        self, path: str | Path, *, key: KeySpec = None, run_id: str | None = None
    ) -> list[Event]:
        """One event per non-blank line of a JSON-lines file.

        The value is the line's own bytes (without the line end), so the
        handler sees exactly what the file holds; ``key`` is taken from the
        parsed line as in :meth:`from_dicts`. Raises ``ValueError`` naming
        the line when a line is not a JSON object and a key is asked for.
        """
        events = []
        with Path(path).open("rb") as file:
            for number, line in enumerate(file, start=1):
                raw = line.rstrip(b"\r\n")
                if not raw.strip():
                    continue
                record = _parsed(raw, path, number) if key is not None else {}
                events.append(self.event(raw, key=_key_of(record, key), run_id=run_id))
        return events

    def _partition_for(self, key: bytes | None) -> int:
        if key is not None:
            return zlib.crc32(key) % self.partitions
        chosen = self._round_robin % self.partitions
        self._round_robin += 1
        return chosen


def events_from_dicts(
    records: Iterable[Mapping[str, Any]],
    *,
    topic: str = "events",
    partitions: int = 1,
    key: KeySpec = None,
    run_id: str | None = None,
) -> list[Event]:
    """Events of ``records`` as JSON values; see :meth:`EventFactory.from_dicts`."""
    factory = EventFactory(topic, partitions)
    return factory.from_dicts(records, key=key, run_id=run_id)


def events_from_bytes(
    values: Iterable[bytes | None],
    *,
    topic: str = "events",
    partitions: int = 1,
    keys: Iterable[bytes | None] | None = None,
    run_id: str | None = None,
) -> list[Event]:
    """Events with raw values; see :meth:`EventFactory.from_bytes`."""
    factory = EventFactory(topic, partitions)
    return factory.from_bytes(values, keys=keys, run_id=run_id)


def events_from_ndjson(
    path: str | Path,
    *,
    topic: str = "events",
    partitions: int = 1,
    key: KeySpec = None,
    run_id: str | None = None,
) -> list[Event]:
    """Events of a JSON-lines file; see :meth:`EventFactory.from_ndjson`."""
    factory = EventFactory(topic, partitions)
    return factory.from_ndjson(path, key=key, run_id=run_id)


def replayed(events: Iterable[Event], run_id: str = "replay-test") -> list[Event]:
    """Copies of ``events`` as a replay run with ``run_id`` delivers them."""
    return [
        Event(
            topic=e.topic,
            partition=e.partition,
            offset=e.offset,
            key=e.key,
            value=e.value,
            headers=e.headers,
            timestamp_ms=e.timestamp_ms,
            run_id=run_id,
        )
        for e in events
    ]


def _json_bytes(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def _key_of(record: Mapping[str, Any], key: KeySpec) -> bytes | None:
    if key is None:
        return None
    found = record.get(key) if isinstance(key, str) else key(record)
    if found is None:
        return None
    if isinstance(found, bytes):
        return found
    return str(found).encode()


def _parsed(raw: bytes, path: str | Path, number: int) -> Mapping[str, Any]:
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{number}: not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{number}: not a JSON object, cannot take a key")
    return record
