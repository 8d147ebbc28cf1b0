"""The checkpoint store contract and its in-memory implementation.

A checkpoint store keeps, per namespace (a consumer group, or a replay run)
and topic-partition: the checkpoint (the offset of the next event to
process), the ownership epoch, the owner, and who committed it when. Every
implementation gives the same guarantees, pinned by one contract test suite:

* :meth:`CheckpointStore.claim` bumps each partition's epoch and records
  the caller as owner; a claim always wins.
* :meth:`CheckpointStore.commit` writes several partitions at once and, for
  each one, accepts the new offset only when the caller's epoch and owner are
  the stored ones and the offset is not lower than the stored one. It reports
  what it refused and why, and appends each accepted change to the
  namespace's history.
* :meth:`CheckpointStore.release` clears ownership, only if still owner.
* :meth:`CheckpointStore.pause` records that a partition stopped at a failed
  event (only from its current owner); it stays paused through claims by
  other consumers until :meth:`CheckpointStore.unpause`.
* Only :meth:`CheckpointStore.set_offset` (an operator change) moves a
  checkpoint backwards; it bumps the epoch so that the current owner's next
  commit is refused and the owner re-reads the checkpoint.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol, runtime_checkable

from streamcp.events import TopicPartition

RefusalReason = Literal["stale_epoch", "not_owner", "backwards"]
HistoryKind = Literal["commit", "claim", "release", "operator", "pause", "unpause"]


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds partitions: one service or replay process.

    ``instance_id`` is unique per process start; ``member_id`` is Kafka's
    group member id, known after the first join (empty before, and for
    replays, which use no group).
    """

    instance_id: str
    host: str
    pid: int
    member_id: str = ""

    @classmethod
    def for_this_process(cls, member_id: str = "") -> Owner:
        host = socket.gethostname()
        pid = os.getpid()
        return cls(f"{host}:{pid}:{os.urandom(3).hex()}", host, pid, member_id)

    def with_member(self, member_id: str) -> Owner:
        return Owner(self.instance_id, self.host, self.pid, member_id)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What the store holds for one topic-partition.

    ``offset`` is ``None`` when the partition was claimed but never committed.
    """

    topic_partition: TopicPartition
    offset: int | None
    epoch: int
    owner: str
    committed_at: datetime | None = None
    committed_by_host: str = ""
    committed_by_pid: int = 0
    committed_by_member: str = ""
    events: int = 0
    operator_change: bool = False
    paused: bool = False
    paused_offset: int | None = None
    paused_reason: str = ""
    paused_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CommitRequest:
    """One partition's new checkpoint, and the events handled since the last."""

    topic_partition: TopicPartition
    offset: int
    epoch: int
    events: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    topic_partition: TopicPartition
    reason: RefusalReason
    stored_epoch: int
    stored_owner: str
    stored_offset: int | None


@dataclass(frozen=True, slots=True)
class CommitResult:
    accepted: tuple[TopicPartition, ...] = ()
    refused: tuple[Refusal, ...] = ()


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of the audit trail."""

    id: str
    kind: HistoryKind
    topic_partition: TopicPartition
    offset: int | None
    previous_offset: int | None
    epoch: int
    owner: str
    at: datetime


@runtime_checkable
class CheckpointStore(Protocol):
    """Where checkpoints live; see the module docstring for the contract.

    Every method may raise :class:`~streamcp.errors.StoreUnavailable` when
    the store does not answer; nothing is changed by a call that raised,
    or the call was applied whole (it is one atomic step).
    """

    def claim(
        self, namespace: str, partitions: Sequence[TopicPartition], owner: Owner
    ) -> dict[TopicPartition, Checkpoint]: ...

    def commit(
        self, namespace: str, owner: Owner, requests: Sequence[CommitRequest]
    ) -> CommitResult: ...

    def release(
        self, namespace: str, owner: Owner, epochs: Mapping[TopicPartition, int]
    ) -> None: ...

    def read(
        self, namespace: str, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, Checkpoint]: ...

    def set_offset(
        self, namespace: str, topic_partition: TopicPartition, offset: int, by: str
    ) -> Checkpoint: ...

    def pause(
        self,
        namespace: str,
        owner: Owner,
        topic_partition: TopicPartition,
        epoch: int,
        offset: int,
        reason: str,
    ) -> bool: ...

    def unpause(
        self, namespace: str, topic_partition: TopicPartition, by: str
    ) -> bool: ...

    def history(self, namespace: str, count: int = 100) -> list[HistoryEntry]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Slot:
    offset: int | None = None
    epoch: int = 0
    owner: str = ""
    committed_at: datetime | None = None
    host: str = ""
    pid: int = 0
    member: str = ""
    events: int = 0
    operator_change: bool = False
    paused: bool = False
    paused_offset: int | None = None
    paused_reason: str = ""
    paused_at: datetime | None = None


@dataclass
class _Namespace:
    slots: dict[TopicPartition, _Slot] = field(default_factory=dict)
    history: deque[HistoryEntry] = field(default_factory=deque)
    sequence: int = 0


class InMemoryCheckpointStore:
    """A :class:`CheckpointStore` in this process's memory.

    For unit tests and the handler test kit; thread-safe; forgets everything
    when the process ends.
    """

    def __init__(self, *, history_max_entries: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._namespaces: dict[str, _Namespace] = {}
        self._history_max = history_max_entries
        self.commit_calls = 0

    def claim(
        self, namespace: str, partitions: Sequence[TopicPartition], owner: Owner
    ) -> dict[TopicPartition, Checkpoint]:
        with self._lock:
            space = self._space(namespace)
            claimed = {}
            for tp in partitions:
                slot = space.slots.setdefault(tp, _Slot())
                slot.epoch += 1
                slot.owner = owner.instance_id
                slot.operator_change = False
                self._append(space, "claim", tp, slot.offset, slot.offset, slot)
                claimed[tp] = _checkpoint(tp, slot)
            return claimed

    def commit(
        self, namespace: str, owner: Owner, requests: Sequence[CommitRequest]
    ) -> CommitResult:
        with self._lock:
            self.commit_calls += 1
            space = self._space(namespace)
            accepted: list[TopicPartition] = []
            refused: list[Refusal] = []
            at = now_utc()
            for request in requests:
                slot = space.slots.get(request.topic_partition, _Slot())
                reason = _refusal_reason(slot, owner, request)
                if reason is not None:
                    refused.append(
                        Refusal(
                            request.topic_partition,
                            reason,
                            slot.epoch,
                            slot.owner,
                            slot.offset,
                        )
                    )
                    continue
                accepted.append(request.topic_partition)
                if slot.offset == request.offset:
                    continue
                previous = slot.offset
                slot.offset = request.offset
                slot.committed_at = at
                slot.host, slot.pid, slot.member = (
                    owner.host,
                    owner.pid,
                    owner.member_id,
                )
                slot.events = request.events
                slot.operator_change = False
                self._append(
                    space,
                    "commit",
                    request.topic_partition,
                    slot.offset,
                    previous,
                    slot,
                )
            return CommitResult(tuple(accepted), tuple(refused))

    def release(
        self, namespace: str, owner: Owner, epochs: Mapping[TopicPartition, int]
    ) -> None:
        with self._lock:
            space = self._space(namespace)
            for tp, epoch in epochs.items():
                slot = space.slots.get(tp)
                if slot is None or slot.epoch != epoch:
                    continue
                if slot.owner != owner.instance_id:
                    continue
                slot.owner = ""
                self._append(space, "release", tp, slot.offset, slot.offset, slot)

    def read(
        self, namespace: str, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, Checkpoint]:
        with self._lock:
            space = self._space(namespace)
            wanted = space.slots.keys() if partitions is None else partitions
            return {
                tp: _checkpoint(tp, space.slots[tp])
                for tp in sorted(wanted)
                if tp in space.slots
            }

    def set_offset(
        self, namespace: str, topic_partition: TopicPartition, offset: int, by: str
    ) -> Checkpoint:
        with self._lock:
            space = self._space(namespace)
            slot = space.slots.setdefault(topic_partition, _Slot())
            previous = slot.offset
            slot.offset = offset
            slot.epoch += 1
            slot.committed_at = now_utc()
            slot.host, slot.pid, slot.member = by, 0, ""
            slot.events = 0
            slot.operator_change = True
            self._append(
                space, "operator", topic_partition, offset, previous, slot, who=by
            )
            return _checkpoint(topic_partition, slot)

    def pause(
        self,
        namespace: str,
        owner: Owner,
        topic_partition: TopicPartition,
        epoch: int,
        offset: int,
        reason: str,
    ) -> bool:
        with self._lock:
            space = self._space(namespace)
            slot = space.slots.get(topic_partition)
            if slot is None or slot.epoch != epoch or slot.owner != owner.instance_id:
                return False
            slot.paused = True
            slot.paused_offset = offset
            slot.paused_reason = reason
            slot.paused_at = now_utc()
            self._append(space, "pause", topic_partition, offset, slot.offset, slot)
            return True

    def unpause(self, namespace: str, topic_partition: TopicPartition, by: str) -> bool:
        with self._lock:
            space = self._space(namespace)
            slot = space.slots.get(topic_partition)
            if slot is None or not slot.paused:
                return False
            slot.paused = False
            slot.paused_offset = None
            slot.paused_reason = ""
            slot.paused_at = None
            self._append(
                space, "unpause", topic_partition, slot.offset, slot.offset, slot
            )
            return True

    def history(self, namespace: str, count: int = 100) -> list[HistoryEntry]:
        with self._lock:
            entries = list(self._space(namespace).history)
            return entries[-count:] if count else entries

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    def _space(self, namespace: str) -> _Namespace:
        return self._namespaces.setdefault(namespace, _Namespace())

    def _append(
        self,
        space: _Namespace,
        kind: HistoryKind,
        tp: TopicPartition,
        offset: int | None,
        previous: int | None,
        slot: _Slot,
        who: str | None = None,
    ) -> None:
        space.sequence += 1
        entry_id = f"{int(time.time() * 1000)}-{space.sequence}"
        space.history.append(
            HistoryEntry(
                entry_id,
                kind,
                tp,
                offset,
                previous,
                slot.epoch,
                slot.owner if who is None else who,
                now_utc(),
            )
        )
        while len(space.history) > self._history_max:
            space.history.popleft()


def _refusal_reason(
    slot: _Slot, owner: Owner, request: CommitRequest
) -> RefusalReason | None:
    if slot.epoch != request.epoch:
        return "stale_epoch"
    if slot.owner != owner.instance_id:
        return "not_owner"
    if slot.offset is not None and request.offset < slot.offset:
        return "backwards"
    return None


def _checkpoint(tp: TopicPartition, slot: _Slot) -> Checkpoint:
    return Checkpoint(
        topic_partition=tp,
        offset=slot.offset,
        epoch=slot.epoch,
        owner=slot.owner,
        committed_at=slot.committed_at,
        committed_by_host=slot.host,
        committed_by_pid=slot.pid,
        committed_by_member=slot.member,
        events=slot.events,
        operator_change=slot.operator_change,
        paused=slot.paused,
        paused_offset=slot.paused_offset,
        paused_reason=slot.paused_reason,
        paused_at=slot.paused_at,
    )
