"""Example handler: statistics of Wikimedia recent changes, kept in Redis.

Each event's value is one Wikimedia ``recentchange`` JSON object (the
sample is ``streamcp/examples/data/wikimedia-recentchange.ndjson``). Every
event counts as one edit, and the handler keeps:

* edits per namespace (``namespace``, an integer: 0 articles, 2 user pages...);
* bytes added per page (``title``): ``length.new - length.old``, a missing or
  null length counting as 0 (a new page has no ``length.old``);
* edits by bots and edits by people (``bot``).

Redis keys, with ``P`` the ``key_prefix`` option (``wikistats`` by default).
The ``{P}`` hash tag keeps them in one Redis Cluster slot, so one script can
update them all::

    {P}:totals              hash: events, bot_edits, human_edits
    {P}:edits_by_namespace  hash: namespace number -> edits
    {P}:bytes_by_page       sorted set: page title, score = bytes added
    {P}:applied             hash: "<topic>:<partition>" -> offset of the next
                            event not yet counted

No key has a TTL. Use a different ``key_prefix`` for each topic whose offsets
start again from 0 (a re-created topic) and for each independent count.

Idempotent under redelivery: streamcp delivers at least once (after a crash,
events from the stored checkpoint on come again), so one batch is applied by
one Lua script that skips every event whose offset is below the partition's
``applied`` offset, counts the others and moves ``applied`` past them, all
atomically. Counting a batch twice, or batches that overlap, therefore
changes nothing; the statistics are exact. Events delivered again by an
operator moving a checkpoint back, or by a replay run, are skipped too.

An event whose value is not a recent-change object (not JSON, no string
``title``, no integer ``namespace``...) stops the batch: the events before it
are counted and :class:`~streamcp.handlers.BatchFailed` names its offset, so
the service stops with the checkpoint just before it.

:func:`compute_stats` computes the same statistics from parsed JSON objects
in plain Python, and :func:`read_stats` reads them back from Redis in the
same shape::

    {"events": 100, "bot_edits": 2, "human_edits": 98,
     "edits_by_namespace": {0: 86, 2: 8, ...},
     "bytes_added_by_page": {"EFL Championship": 58, ...}}
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import redis

from streamcp.events import Event, TopicPartition
from streamcp.handlers import BatchFailed

Stats = dict[str, Any]

#: The bundled sample: 100 real recent-change events, one JSON object a line.
DATA_FILE = Path(__file__).with_name("data") / "wikimedia-recentchange.ndjson"

# KEYS: totals, edits_by_namespace, bytes_by_page, applied.
# ARGV: "<topic>:<partition>", then per event in offset order: offset, the
# next offset as a decimal string (Lua's tostring loses digits past 1e14),
# namespace, title, bytes added, "1" for a bot or "0".
# Returns {events counted, events skipped}.
_APPLY_LUA = """
local member = ARGV[1]
local stored = redis.call('HGET', KEYS[4], member)
local next_offset = -1
if stored then next_offset = tonumber(stored) end
local next_text = nil
local counted, skipped = 0, 0
for i = 2, #ARGV, 6 do
    local offset = tonumber(ARGV[i])
    if offset < next_offset then
        skipped = skipped + 1
    else
        redis.call('HINCRBY', KEYS[1], 'events', 1)
        if ARGV[i + 5] == '1' then
            redis.call('HINCRBY', KEYS[1], 'bot_edits', 1)
        else
            redis.call('HINCRBY', KEYS[1], 'human_edits', 1)
        end
        redis.call('HINCRBY', KEYS[2], ARGV[i + 2], 1)
        redis.call('ZINCRBY', KEYS[3], ARGV[i + 4], ARGV[i + 3])
        next_offset = offset + 1
        next_text = ARGV[i + 1]
        counted = counted + 1
    end
end
if next_text then redis.call('HSET', KEYS[4], member, next_text) end
return {counted, skipped}
"""


@dataclass(frozen=True)
class Change:
    """What the statistics need of one recent-change event."""

    namespace: int
    title: str
    bytes_added: int
    bot: bool


class Keys:
    """The Redis key names under one key prefix (see the module docstring)."""

    def __init__(self, key_prefix: str) -> None:
        base = "{" + key_prefix + "}"
        self.totals = f"{base}:totals"
        self.edits_by_namespace = f"{base}:edits_by_namespace"
        self.bytes_by_page = f"{base}:bytes_by_page"
        self.applied = f"{base}:applied"

    def all(self) -> list[str]:
        return [self.totals, self.edits_by_namespace, self.bytes_by_page, self.applied]


def parse_change(value: bytes | None) -> Change:
    """The fields of one event's value; raises ``ValueError`` when malformed."""
    if value is None:
        raise ValueError("no value (a tombstone)")
    try:
        record = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"value is not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise ValueError(f"value is not a JSON object but {type(record).__name__}")
    title = record.get("title")
    namespace = record.get("namespace")
    bot = record.get("bot", False)
    if not isinstance(title, str):
        raise ValueError(f"'title' is not a string: {title!r}")
    if not _is_int(namespace):
        raise ValueError(f"'namespace' is not an integer: {namespace!r}")
    if not isinstance(bot, bool):
        raise ValueError(f"'bot' is not true or false: {bot!r}")
    length = record.get("length") or {}
    if not isinstance(length, dict):
        raise ValueError(f"'length' is not an object: {length!r}")
    old, new = length.get("old") or 0, length.get("new") or 0
    if not (_is_int(old) and _is_int(new)):
        raise ValueError(f"'length' old/new are not integers: {length!r}")
    return Change(namespace=namespace, title=title, bytes_added=new - old, bot=bot)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


class WikiStats:
    """Handler plugin ``wikistats``: see the module docstring."""

    # A malformed event stays malformed: apply the failure policy at once
    # instead of calling again.
    non_retryable = (ValueError,)

    @dataclass(frozen=True)
    class Options:
        """``redis_url``: where the statistics go; ``key_prefix``: their keys'
        prefix; ``delay_ms``: a sleep per event, to watch it work (the demo)."""

        redis_url: str
        key_prefix: str = "wikistats"
        delay_ms: int = 0

        def __post_init__(self) -> None:
            if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(
                    "redis_url: must start with redis://, rediss:// or unix://"
                )
            if not self.key_prefix or set("{}") & set(self.key_prefix):
                raise ValueError(
                    f"key_prefix: must be non-empty without '{{' or '}}', "
                    f"got {self.key_prefix!r}"
                )
            if self.delay_ms < 0:
                raise ValueError(f"delay_ms: must be 0 or more, got {self.delay_ms}")

    def __init__(self, options: Options) -> None:
        self.options = options
        self.keys = Keys(options.key_prefix)
        self._client: redis.Redis | None = None
        self._apply: Any = None

    def setup(self) -> None:
        """Connect to Redis (and check that it answers)."""
        client = redis.Redis.from_url(
            self.options.redis_url, socket_timeout=5.0, socket_connect_timeout=5.0
        )
        client.ping()
        self._client = client
        self._apply = client.register_script(_APPLY_LUA)

    def handle_batch(self, events: Sequence[Event]) -> None:
        """Count the events of one partition (in offset order) not counted yet."""
        if self._apply is None:
            raise RuntimeError("WikiStats.setup() was not called")
        if self.options.delay_ms:
            time.sleep(self.options.delay_ms * len(events) / 1000)
        by_partition: dict[TopicPartition, list[tuple[Event, Change]]] = {}
        failed: tuple[int, ValueError] | None = None
        for event in events:
            try:
                change = parse_change(event.value)
            except ValueError as exc:
                failed = (event.offset, exc)
                break
            by_partition.setdefault(event.topic_partition, []).append((event, change))
        for tp, changes in by_partition.items():
            self._apply_changes(tp, changes)
        if failed is not None:
            offset, error = failed
            raise BatchFailed(
                offset, f"not a recent-change event at offset {offset}: {error}"
            ) from error

    def _apply_changes(
        self, tp: TopicPartition, changes: Sequence[tuple[Event, Change]]
    ) -> None:
        args: list[str | int] = [f"{tp.topic}:{tp.partition}"]
        for event, change in changes:
            args += [
                event.offset,
                str(event.offset + 1),
                change.namespace,
                change.title,
                change.bytes_added,
                "1" if change.bot else "0",
            ]
        self._apply(keys=self.keys.all(), args=args)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._apply = None


def compute_stats(records: Iterable[dict[str, Any]]) -> Stats:
    """The statistics of parsed recent-change objects, in plain Python.

    Independent of the handler's path through Redis, so the two can check
    each other.
    """
    events = bots = 0
    by_namespace: dict[int, int] = {}
    by_page: dict[str, int] = {}
    for record in records:
        events += 1
        if record.get("bot") is True:
            bots += 1
        namespace = record["namespace"]
        by_namespace[namespace] = by_namespace.get(namespace, 0) + 1
        length = record.get("length") or {}
        added = (length.get("new") or 0) - (length.get("old") or 0)
        by_page[record["title"]] = by_page.get(record["title"], 0) + added
    return {
        "events": events,
        "bot_edits": bots,
        "human_edits": events - bots,
        "edits_by_namespace": by_namespace,
        "bytes_added_by_page": by_page,
    }


def read_stats(redis_client: redis.Redis, key_prefix: str = "wikistats") -> Stats:
    """The statistics the handler keeps under ``key_prefix``, in the shape of
    :func:`compute_stats` (zeros when nothing was counted yet)."""
    keys = Keys(key_prefix)
    pipe = redis_client.pipeline(transaction=True)
    pipe.hgetall(keys.totals)
    pipe.hgetall(keys.edits_by_namespace)
    pipe.zrange(keys.bytes_by_page, 0, -1, withscores=True)
    totals, namespaces, pages = pipe.execute()
    counts = {_text(k): int(v) for k, v in totals.items()}
    return {
        "events": counts.get("events", 0),
        "bot_edits": counts.get("bot_edits", 0),
        "human_edits": counts.get("human_edits", 0),
        "edits_by_namespace": {int(k): int(v) for k, v in namespaces.items()},
        "bytes_added_by_page": {_text(title): int(score) for title, score in pages},
    }


def read_applied(
    redis_client: redis.Redis, key_prefix: str = "wikistats"
) -> dict[TopicPartition, int]:
    """Per topic-partition, the offset of the next event the handler would count."""
    raw = redis_client.hgetall(Keys(key_prefix).applied)
    applied = {}
    for member, offset in raw.items():
        topic, _, partition = _text(member).rpartition(":")
        applied[TopicPartition(topic, int(partition))] = int(offset)
    return applied


def load_records(path: Path = DATA_FILE) -> list[dict[str, Any]]:
    """The parsed objects of an NDJSON file (default: the bundled sample)."""
    with path.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
