"""What a redrive did with each dead-letter record, kept in Redis.

Every record of a redrive run ends one of three ways: **redriven** (the
handler succeeded for its original event), **still failing** (the handler
failed after its attempts), or **not a streamcp dead-letter record** (it
lacks the ``streamcp.original.*`` headers). Keys, with ``P`` the key prefix
and ``N`` the run's namespace ``redrive:<run id>`` (the hash tag keeps them
in the slot of the run's checkpoints)::

    P:v1:{N}:redriven:<partition>   string (bitmap): bit i set when the
                                    record at offset start + i was redriven,
                                    start being the partition's range start
    P:v1:{N}:failing                hash "<partition>:<offset>" -> JSON of a
                                    still-failing record (:class:`StillFailing`)
    P:v1:{N}:refused                hash "<partition>:<offset>" -> JSON of a
                                    record that is not a dead-letter record

Workers note outcomes in memory (:meth:`RedriveLedger.note`); the loop
writes them with :meth:`RedriveLedger.flush` before each commit, in one
transaction, so a checkpoint never passes a record whose outcome is not
stored. Each outcome is keyed by the record's position: a record handled
again after a crash overwrites its earlier outcome rather than adding one,
so no record counts twice. A :class:`RedriveSummary` counts only records
below the run's committed checkpoints. No key has a TTL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.exceptions

from streamcp.errors import StoreUnavailable
from streamcp.redis_client import RedisClient, redis_client
from streamcp.redis_store import LAYOUT_VERSION
from streamcp.runs import RunRecord

_UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    OSError,
)


@dataclass(frozen=True, kw_only=True)
class StillFailing:
    """A dead-letter record whose original event failed again."""

    partition: int
    offset: int
    original_topic: str
    original_partition: int
    original_offset: int
    error_type: str
    error_message: str
    attempts: int
    failed_at: str
    dead_lettered_to: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> StillFailing:
        return cls(**raw)


@dataclass(frozen=True, kw_only=True)
class Refused:
    """A record that is not a streamcp dead-letter record, and why."""

    partition: int
    offset: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Refused:
        return cls(**raw)


# What a worker noted for one record; None means redriven.
Outcome = StillFailing | Refused | None


@dataclass(frozen=True)
class RedriveSummary:
    """The outcome of a redrive, over the records its checkpoints cover."""

    redriven: int
    still_failing: tuple[StillFailing, ...] = ()
    refused: tuple[Refused, ...] = ()
    dead_letter_to: str = ""

    @property
    def total(self) -> int:
        return self.redriven + len(self.still_failing) + len(self.refused)

    def to_json(self) -> dict[str, Any]:
        return {
            "records": self.total,
            "redriven": self.redriven,
            "still_failing": len(self.still_failing),
            "not_dead_letter_records": len(self.refused),
            "dead_letter_to": self.dead_letter_to or None,
            "failing": [entry.to_json() for entry in self.still_failing],
            "refused": [entry.to_json() for entry in self.refused],
        }


class RedriveLedger:
    """Outcomes of one redrive run: noted by workers, stored by the loop.

    :meth:`note` is thread-safe and never blocks on Redis; :meth:`flush`
    and :meth:`summary` raise :class:`StoreUnavailable` when Redis does not
    answer (a failed flush keeps what it could not write, for the next).
    """

    def __init__(
        self, client: RedisClient, run: RunRecord, *, key_prefix: str = "streamcp"
    ) -> None:
        self._client = client
        self._base = f"{key_prefix}:{LAYOUT_VERSION}:{{{run.namespace}}}"
        self._starts = {r.partition: r.start for r in run.ranges}
        self._pending: dict[tuple[int, int], Outcome] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        run: RunRecord,
        *,
        key_prefix: str = "streamcp",
        socket_timeout_s: float = 2.0,
    ) -> RedriveLedger:
        """A ledger on ``url`` (one server, Cluster or Sentinel; see
        :mod:`streamcp.redis_client`); the client never retries a command,
        because the loop retries a failed flush with its commit."""
        client = redis_client(url, socket_timeout_s=socket_timeout_s)
        return cls(client, run, key_prefix=key_prefix)

    @property
    def failing_key(self) -> str:
        return f"{self._base}:failing"

    @property
    def refused_key(self) -> str:
        return f"{self._base}:refused"

    def redriven_key(self, partition: int) -> str:
        return f"{self._base}:redriven:{partition}"

    def note(self, partition: int, offset: int, outcome: Outcome) -> None:
        """Remember the outcome of the record at ``partition``/``offset``."""
        with self._lock:
            self._pending[(partition, offset)] = outcome

    def flush(self) -> None:
        """Store every noted outcome, in one transaction."""
        with self._lock:
            pending = dict(self._pending)
        if not pending:
            return
        pipe = self._client.pipeline(transaction=True)
        not_failing: list[str] = []
        not_refused: list[str] = []
        for partition, offset in sorted(pending):
            outcome = pending[(partition, offset)]
            name = f"{partition}:{offset}"
            bit = offset - self._starts[partition]
            pipe.setbit(self.redriven_key(partition), bit, int(outcome is None))
            if isinstance(outcome, StillFailing):
                pipe.hset(self.failing_key, name, json.dumps(outcome.to_json()))
            else:
                not_failing.append(name)
            if isinstance(outcome, Refused):
                pipe.hset(self.refused_key, name, json.dumps(outcome.to_json()))
            else:
                not_refused.append(name)
        # An outcome replaces the one a crashed process stored earlier.
        if not_failing:
            pipe.hdel(self.failing_key, *not_failing)
        if not_refused:
            pipe.hdel(self.refused_key, *not_refused)
        self._do(pipe.execute)
        with self._lock:
            for position, outcome in pending.items():
                if self._pending.get(position, False) is outcome:
                    del self._pending[position]

    def summary(self, run: RunRecord) -> RedriveSummary:
        """Counts and lists over the records below ``run``'s checkpoints."""
        pipe = self._client.pipeline(transaction=False)
        for part in run.ranges:
            pipe.get(self.redriven_key(part.partition))
        pipe.hgetall(self.failing_key)
        pipe.hgetall(self.refused_key)
        *bitmaps, failing, refused = self._do(pipe.execute)
        covered = {
            r.partition: (r.start, run.progress.get(r.partition, r.start))
            for r in run.ranges
        }
        redriven = sum(
            _bits_below(bitmap, checkpoint - start)
            for bitmap, (start, checkpoint) in zip(
                bitmaps, covered.values(), strict=True
            )
        )
        return RedriveSummary(
            redriven,
            tuple(StillFailing.from_json(raw) for raw in _entries(failing, covered)),
            tuple(Refused.from_json(raw) for raw in _entries(refused, covered)),
            str(run.requested.get("dead_letter_to") or ""),
        )

    def close(self) -> None:
        self._client.close()

    def _do(self, call: Any) -> Any:
        try:
            return call()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis did not answer: {exc}") from exc


@dataclass(order=True)
class _Entry:
    partition: int
    offset: int
    raw: dict[str, Any] = field(compare=False)


def _entries(
    found: Mapping[bytes, bytes], covered: Mapping[int, tuple[int, int]]
) -> list[dict[str, Any]]:
    """The JSON values of hash fields below their partition's checkpoint."""
    entries = []
    for name, value in found.items():
        partition, _, offset = name.decode().partition(":")
        start, checkpoint = covered.get(int(partition), (0, 0))
        if start <= int(offset) < checkpoint:
            entries.append(_Entry(int(partition), int(offset), json.loads(value)))
    return [entry.raw for entry in sorted(entries)]


def _bits_below(bitmap: bytes | None, count: int) -> int:
    """Set bits among the first ``count`` of a Redis bitmap (bit 0 first)."""
    if not bitmap or count <= 0:
        return 0
    whole, rest = divmod(count, 8)
    total = int.from_bytes(bitmap[:whole], "big").bit_count()
    if rest and whole < len(bitmap):
        total += (bitmap[whole] >> (8 - rest)).bit_count()
    return total
