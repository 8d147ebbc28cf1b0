"""The Redis checkpoint store (layout ``v1``).

Keys, with ``P`` the key prefix (``streamcp`` by default) and ``N`` the
namespace (the consumer group, or ``replay:<run id>``). The ``{N}`` hash tag
keeps one namespace in one Redis Cluster slot, so one script can touch all
of its keys::

    P:v1:{N}:cp:<topic>:<partition>   hash: one partition's checkpoint
    P:v1:{N}:partitions               set: "<topic>:<partition>" of every hash
    P:v1:{N}:history                  stream: accepted changes, capped

Fields of a checkpoint hash (all strings, as Redis keeps them):

    offset               next offset to process; absent: never committed
    epoch                ownership generation, bumped by every claim and
                         operator change
    owner                instance id of the owner ("" once released)
    claimed_at           ISO 8601 UTC time of the current owner's claim
    committed_at         ISO 8601 UTC time of the last change of offset
    committed_by_host    host, pid and Kafka member id of the process
    committed_by_pid     that made that change
    committed_by_member
    events               events handled between the previous commit and this
    operator_change      "1" when an operator set the offset, until claimed
    paused               "1" while the partition is paused at a failed event
    paused_offset        the offset of that event
    paused_reason        why (the error), and paused_at when (ISO 8601 UTC)

No key has a TTL. One :meth:`RedisCheckpointStore.commit` is one ``EVALSHA``
whatever the number of partitions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

import redis
import redis.exceptions

from streamcp.errors import CheckpointStoreError, StoreUnavailable
from streamcp.events import TopicPartition
from streamcp.redis_client import RedisClient, redis_client
from streamcp.store import (
    Checkpoint,
    CommitRequest,
    CommitResult,
    HistoryEntry,
    HistoryKind,
    Owner,
    Refusal,
    RefusalReason,
    now_utc,
)

LAYOUT_VERSION = "v1"

_UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.ReadOnlyError,
    OSError,
)


def _script(name: str) -> str:
    return resources.files("streamcp").joinpath(name).read_text("utf-8")


class RedisKeys:
    """Key names of one namespace."""

    def __init__(self, prefix: str, namespace: str) -> None:
        self.base = f"{prefix}:{LAYOUT_VERSION}:{{{namespace}}}"
        self.partitions = f"{self.base}:partitions"
        self.history = f"{self.base}:history"

    def checkpoint(self, tp: TopicPartition) -> str:
        return f"{self.base}:cp:{tp.topic}:{tp.partition}"


class RedisCheckpointStore:
    """A :class:`~streamcp.store.CheckpointStore` in Redis.

    Safe to share between threads (redis-py's connection pool). Every call
    raises :class:`StoreUnavailable` when Redis does not answer within
    ``socket_timeout_s``; scripts are atomic, so a call that raised either
    happened whole or not at all (a commit retried after a timeout that did
    apply is accepted again without a second history entry).

    ``client`` may be a ``redis.Redis`` (one server, or the primary found
    through Sentinel) or a ``redis.cluster.RedisCluster``: every call
    touches the keys of one namespace, which share one Cluster slot.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        key_prefix: str = "streamcp",
        history_max_entries: int = 100_000,
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._history_max = history_max_entries
        self._commit = client.register_script(_script("commit.lua"))
        self._claim = client.register_script(_script("claim.lua"))
        self._release = client.register_script(_script("release.lua"))
        self._set = client.register_script(_script("set_offset.lua"))
        self._pause = client.register_script(_script("pause.lua"))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "streamcp",
        socket_timeout_s: float = 2.0,
        history_max_entries: int = 100_000,
    ) -> RedisCheckpointStore:
        """A store on ``url``: ``redis://`` (or ``rediss://``, ``unix://``),
        ``redis+cluster://`` or ``redis+sentinel://`` (see
        :mod:`streamcp.redis_client`)."""
        # The service retries with its own backoff while it keeps polling;
        # the client's retries would only block the loop.
        client = redis_client(url, socket_timeout_s=socket_timeout_s)
        return cls(
            client, key_prefix=key_prefix, history_max_entries=history_max_entries
        )

    def keys(self, namespace: str) -> RedisKeys:
        return RedisKeys(self._prefix, namespace)

    def claim(
        self, namespace: str, partitions: Sequence[TopicPartition], owner: Owner
    ) -> dict[TopicPartition, Checkpoint]:
        if not partitions:
            return {}
        keys = self.keys(namespace)
        ordered = sorted(partitions)
        key_list = [keys.history, keys.partitions]
        key_list += [keys.checkpoint(tp) for tp in ordered]
        args: list[Any] = [
            owner.instance_id,
            self._history_max,
            now_utc().isoformat(timespec="milliseconds"),
        ]
        args += [_member(tp) for tp in ordered]
        rows = self._call(self._claim, key_list, args)
        return {
            tp: _parse_checkpoint(tp, row)
            for tp, row in zip(ordered, rows, strict=True)
        }

    def commit(
        self, namespace: str, owner: Owner, requests: Sequence[CommitRequest]
    ) -> CommitResult:
        if not requests:
            return CommitResult()
        keys = self.keys(namespace)
        key_list = [keys.history]
        key_list += [keys.checkpoint(r.topic_partition) for r in requests]
        args: list[Any] = [
            owner.instance_id,
            now_utc().isoformat(timespec="milliseconds"),
            owner.host,
            owner.pid,
            owner.member_id,
            self._history_max,
        ]
        for request in requests:
            args += [
                _member(request.topic_partition),
                request.offset,
                request.epoch,
                request.events,
            ]
        rows = self._call(self._commit, key_list, args)
        return _parse_commit_result(requests, rows)

    def release(
        self, namespace: str, owner: Owner, epochs: Mapping[TopicPartition, int]
    ) -> None:
        if not epochs:
            return
        keys = self.keys(namespace)
        ordered = sorted(epochs)
        key_list = [keys.history] + [keys.checkpoint(tp) for tp in ordered]
        args: list[Any] = [
            owner.instance_id,
            self._history_max,
            now_utc().isoformat(timespec="milliseconds"),
        ]
        for tp in ordered:
            args += [_member(tp), epochs[tp]]
        self._call(self._release, key_list, args)

    def read(
        self, namespace: str, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, Checkpoint]:
        keys = self.keys(namespace)
        try:
            wanted = (
                sorted(_parse_member(m) for m in self._client.smembers(keys.partitions))
                if partitions is None
                else sorted(partitions)
            )
            pipe = self._client.pipeline(transaction=False)
            for tp in wanted:
                pipe.hgetall(keys.checkpoint(tp))
            rows = pipe.execute()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis did not answer: {exc}") from exc
        return {
            tp: _checkpoint_from_hash(tp, row)
            for tp, row in zip(wanted, rows, strict=True)
            if row
        }

    def set_offset(
        self, namespace: str, topic_partition: TopicPartition, offset: int, by: str
    ) -> Checkpoint:
        keys = self.keys(namespace)
        key_list = [keys.history, keys.partitions, keys.checkpoint(topic_partition)]
        args = [
            _member(topic_partition),
            offset,
            by,
            now_utc().isoformat(timespec="milliseconds"),
            self._history_max,
        ]
        row = self._call(self._set, key_list, args)
        return _parse_checkpoint(topic_partition, row)

    def pause(
        self,
        namespace: str,
        owner: Owner,
        topic_partition: TopicPartition,
        epoch: int,
        offset: int,
        reason: str,
    ) -> bool:
        keys = self.keys(namespace)
        key_list = [keys.history, keys.checkpoint(topic_partition)]
        args = [
            "pause",
            _member(topic_partition),
            owner.instance_id,
            epoch,
            offset,
            reason[:500],
            now_utc().isoformat(timespec="milliseconds"),
            self._history_max,
        ]
        return bool(self._call(self._pause, key_list, args))

    def unpause(self, namespace: str, topic_partition: TopicPartition, by: str) -> bool:
        keys = self.keys(namespace)
        key_list = [keys.history, keys.checkpoint(topic_partition)]
        args = [
            "unpause",
            _member(topic_partition),
            by,
            0,
            0,
            "",
            now_utc().isoformat(timespec="milliseconds"),
            self._history_max,
        ]
        return bool(self._call(self._pause, key_list, args))

    def history(self, namespace: str, count: int = 100) -> list[HistoryEntry]:
        keys = self.keys(namespace)
        try:
            raw: list[Any]
            if count:
                raw = list(
                    reversed(self._client.xrevrange(keys.history, count=count) or [])
                )
            else:
                raw = list(self._client.xrange(keys.history) or [])
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis did not answer: {exc}") from exc
        return [_history_entry(entry_id, fields) for entry_id, fields in raw]

    def namespaces(self) -> list[str]:
        """Every namespace with checkpoints under this key prefix."""
        pattern = f"{self._prefix}:{LAYOUT_VERSION}:{{*}}:partitions"
        try:
            found = self._client.scan_iter(match=pattern, count=1000)
            names = {_text(key).split("{", 1)[1].rsplit("}", 1)[0] for key in found}
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis did not answer: {exc}") from exc
        return sorted(names)

    def dump(self, namespace: str) -> dict[TopicPartition, dict[str, str]]:
        """Every checkpoint hash of ``namespace``, field by field (for export)."""
        keys = self.keys(namespace)
        try:
            wanted = sorted(
                _parse_member(m) for m in self._client.smembers(keys.partitions)
            )
            pipe = self._client.pipeline(transaction=False)
            for tp in wanted:
                pipe.hgetall(keys.checkpoint(tp))
            rows = pipe.execute()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis did not answer: {exc}") from exc
        return {
            tp: {_text(k): _text(v) for k, v in row.items()}
            for tp, row in zip(wanted, rows, strict=True)
            if row
        }

    def restore(
        self, namespace: str, rows: Mapping[TopicPartition, Mapping[str, str]], by: str
    ) -> None:
        """Write checkpoint hashes as :meth:`dump` gave them (for import).

        Each hash is replaced whole, with its owner cleared (whoever owned it
        elsewhere owns nothing here); every partition gets an ``operator``
        entry in the history. One ``MULTI`` transaction: all or nothing.
        """
        keys = self.keys(namespace)
        at = now_utc().isoformat(timespec="milliseconds")
        existing = self.read(namespace, list(rows))
        pipe = self._client.pipeline(transaction=True)
        for tp, fields in sorted(rows.items()):
            values: dict[Any, Any] = {**fields, "owner": ""}
            key = keys.checkpoint(tp)
            pipe.delete(key)
            pipe.hset(key, mapping=values)
            pipe.sadd(keys.partitions, _member(tp))
            previous = existing[tp].offset if tp in existing else None
            pipe.xadd(
                keys.history,
                {
                    "kind": "operator",
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "offset": values.get("offset", ""),
                    "previous": "" if previous is None else previous,
                    "epoch": values.get("epoch", "0"),
                    "owner": by,
                    "at": at,
                },
                maxlen=self._history_max,
                approximate=True,
            )
        try:
            pipe.execute()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis did not answer: {exc}") from exc

    def delete(self, namespace: str) -> int:
        """Delete every key of ``namespace``; returns how many were deleted."""
        keys = self.keys(namespace)
        try:
            members = self._client.smembers(keys.partitions)
            names = [keys.checkpoint(_parse_member(m)) for m in members]
            return int(self._client.delete(*names, keys.partitions, keys.history))
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis did not answer: {exc}") from exc

    def ping(self) -> None:
        try:
            self._client.ping()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis did not answer: {exc}") from exc

    def close(self) -> None:
        self._client.close()

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis did not answer: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            raise CheckpointStoreError(
                f"redis refused a checkpoint script: {exc}"
            ) from exc


def _member(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


def _parse_member(raw: bytes | str) -> TopicPartition:
    topic, _, partition = _text(raw).rpartition(":")
    return TopicPartition(topic, int(partition))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _parse_checkpoint(tp: TopicPartition, row: list[Any]) -> Checkpoint:
    # Scripts answer a flat field/value list, like HGETALL.
    fields = {_text(row[i]): row[i + 1] for i in range(0, len(row), 2)}
    return _checkpoint_from_hash(tp, fields)


def _checkpoint_from_hash(tp: TopicPartition, row: Mapping[Any, Any]) -> Checkpoint:
    fields = {_text(k): _text(v) for k, v in row.items()}
    committed_at = fields.get("committed_at")
    return Checkpoint(
        topic_partition=tp,
        offset=int(fields["offset"]) if "offset" in fields else None,
        epoch=int(fields.get("epoch", "0")),
        owner=fields.get("owner", ""),
        committed_at=datetime.fromisoformat(committed_at) if committed_at else None,
        committed_by_host=fields.get("committed_by_host", ""),
        committed_by_pid=int(fields.get("committed_by_pid") or 0),
        committed_by_member=fields.get("committed_by_member", ""),
        events=int(fields.get("events", "0")),
        operator_change=fields.get("operator_change") == "1",
        paused=fields.get("paused") == "1",
        paused_offset=int(fields["paused_offset"])
        if fields.get("paused_offset")
        else None,
        paused_reason=fields.get("paused_reason", ""),
        paused_at=datetime.fromisoformat(fields["paused_at"])
        if fields.get("paused_at")
        else None,
    )


def _parse_commit_result(
    requests: Sequence[CommitRequest], rows: list[Any]
) -> CommitResult:
    accepted = []
    refused = []
    for request, row in zip(requests, rows, strict=True):
        status = _text(row[0])
        if status == "ok":
            accepted.append(request.topic_partition)
            continue
        reason: RefusalReason = status  # type: ignore[assignment]  # script's words
        stored_offset = _text(row[3]) if row[3] else ""
        refused.append(
            Refusal(
                request.topic_partition,
                reason,
                int(row[1] or 0),
                _text(row[2] or b""),
                int(stored_offset) if stored_offset else None,
            )
        )
    return CommitResult(tuple(accepted), tuple(refused))


def _history_entry(entry_id: bytes | str, raw: Mapping[Any, Any]) -> HistoryEntry:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    kind: HistoryKind = fields["kind"]  # type: ignore[assignment]  # script's words
    return HistoryEntry(
        id=_text(entry_id),
        kind=kind,
        topic_partition=TopicPartition(fields["topic"], int(fields["partition"])),
        offset=int(fields["offset"]) if fields.get("offset") else None,
        previous_offset=int(fields["previous"]) if fields.get("previous") else None,
        epoch=int(fields["epoch"]),
        owner=fields.get("owner", ""),
        at=datetime.fromisoformat(fields["at"]),
    )
