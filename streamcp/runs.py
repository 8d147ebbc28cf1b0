"""Runs recorded in Redis: what was asked, what it resolved to, how far.

A run is a replay (``streamcp replay``) or a redrive of dead-letter records
(``streamcp dlq redrive``, see :mod:`streamcp.redrive`); both are recorded,
resumed and cancelled the same way.

Keys, with ``P`` the key prefix (``streamcp`` by default)::

    P:v1:runs         sorted set: run ids, scored by start time (epoch ms)
    P:v1:run:<id>     hash: one run (fields below)

Fields of a run hash (all strings, as Redis keeps them; JSON where noted):

    id, topic, handler     the run id, the topic, the handler's name
    kind                   replay or redrive (a run recorded without one
                           is a replay)
    partitions             JSON list of the partitions replayed
    requested              JSON: the range as asked (offsets and/or times)
    offsets                JSON {"<partition>": [start, end]}: what the
                           request resolved to; end is exclusive
    notes                  JSON {"<partition>": text}: what resolution changed
    status                 running, completed, failed or cancelled
    progress:<partition>   the partition's last committed replay checkpoint
    events_handled         events whose checkpoint was committed
    events_failed          events whose handler failed for good
    started_by_host, started_by_pid, started_by_user
    started_at, finished_at, heartbeat_at   ISO 8601 UTC times
    owner                  instance id of the process running it now
    cancel_requested       "1" once ``streamcp runs cancel`` asked
    error                  why it failed, when it did
    rerun_of               the run whose offsets this one reran
    resumes                how often it was resumed

The run's checkpoints themselves live in the checkpoint store under the
namespace ``<kind>:<id>`` (see :mod:`streamcp.redis_store`); the
``progress:<partition>`` fields mirror them for reading. Writes that only
the running process may make (progress, heartbeat, the final status) are
made only while its instance id is the recorded ``owner``, so a process that
lost the run to a resume cannot overwrite it. No key has a TTL.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import redis
import redis.exceptions

from streamcp.errors import StoreUnavailable
from streamcp.ranges import PartitionRange, ranges_from_record
from streamcp.redis_client import RedisClient, redis_client
from streamcp.redis_store import LAYOUT_VERSION
from streamcp.store import Owner, now_utc

RunStatus = Literal["running", "completed", "failed", "cancelled"]
STATUSES: tuple[RunStatus, ...] = ("running", "completed", "failed", "cancelled")
RunKind = Literal["replay", "redrive"]
KINDS: tuple[RunKind, ...] = ("replay", "redrive")

# A running replay writes its heartbeat about every half second; one older
# than this means its process is gone (crashed, killed).
STALE_AFTER_S = 10.0

_UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    OSError,
)

# Set fields of a run hash only while ARGV[1] is its owner.
# KEYS[1] run hash; ARGV: owner, then field, value pairs. Answers 1 or 0.
_SET_IF_OWNER = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# Record a commit: progress fields and the handled count, owner only.
# KEYS[1] run hash; ARGV: owner, events, heartbeat_at, then field, value.
_PROGRESS_IF_OWNER = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[1], 'events_handled', ARGV[2])
redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[3])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


def new_run_id() -> str:
    """A run id: start time (UTC) and four random hex digits, sortable."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.urandom(2).hex()}"


def namespace_of(run_id: str, kind: RunKind = "replay") -> str:
    """The checkpoint store namespace of a run's checkpoints."""
    return f"{kind}:{run_id}"


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One run as recorded; see the module doc for each field."""

    id: str
    topic: str
    handler: str
    ranges: tuple[PartitionRange, ...]
    kind: RunKind = "replay"
    requested: Mapping[str, Any] = field(default_factory=dict)
    status: RunStatus = "running"
    progress: Mapping[int, int] = field(default_factory=dict)
    events_handled: int = 0
    events_failed: int = 0
    started_by_host: str = ""
    started_by_pid: int = 0
    started_by_user: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    owner: str = ""
    cancel_requested: bool = False
    error: str = ""
    rerun_of: str = ""
    resumes: int = 0

    @property
    def partitions(self) -> list[int]:
        return [r.partition for r in self.ranges]

    @property
    def namespace(self) -> str:
        return namespace_of(self.id, self.kind)

    def stale(self, now: datetime | None = None) -> bool:
        """True for a ``running`` run whose process is gone.

        Gone means: on this host and no such process, or no heartbeat for
        :data:`STALE_AFTER_S`.
        """
        if self.status != "running":
            return False
        if _process_gone(self.owner):
            return True
        beat = self.heartbeat_at or self.started_at
        if beat is None:
            return True
        return ((now or now_utc()) - beat).total_seconds() > STALE_AFTER_S

    def to_json(self) -> dict[str, Any]:
        """Plain values for ``--json`` output."""
        return {
            "id": self.id,
            "kind": self.kind,
            "topic": self.topic,
            "handler": self.handler,
            "status": self.status,
            "stale": self.stale(),
            "partitions": [
                {
                    "partition": r.partition,
                    "start": r.start,
                    "end": r.end,
                    "checkpoint": self.progress.get(r.partition),
                    "note": r.note,
                }
                for r in self.ranges
            ],
            "requested": dict(self.requested),
            "events_handled": self.events_handled,
            "events_failed": self.events_failed,
            "started_by": {
                "host": self.started_by_host,
                "pid": self.started_by_pid,
                "user": self.started_by_user,
            },
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "heartbeat_at": _iso(self.heartbeat_at),
            "cancel_requested": self.cancel_requested,
            "error": self.error,
            "rerun_of": self.rerun_of,
            "resumes": self.resumes,
        }


class RunStore:
    """Run records in Redis. Every call raises :class:`StoreUnavailable`
    when Redis does not answer; each write touches one hash (plus the index
    on creation), so a call that raised changed nothing or all of it."""

    def __init__(self, client: RedisClient, *, key_prefix: str = "streamcp") -> None:
        self._client = client
        self.index_key = f"{key_prefix}:{LAYOUT_VERSION}:runs"
        self._run_prefix = f"{key_prefix}:{LAYOUT_VERSION}:run:"
        self._set_if_owner = client.register_script(_SET_IF_OWNER)
        self._progress_if_owner = client.register_script(_PROGRESS_IF_OWNER)

    @classmethod
    def from_url(
        cls, url: str, *, key_prefix: str = "streamcp", socket_timeout_s: float = 2.0
    ) -> RunStore:
        # Cluster and Sentinel URLs too; the client never retries on its own:
        # the replay loop retries on its schedule and keeps polling.
        client = redis_client(url, socket_timeout_s=socket_timeout_s)
        return cls(client, key_prefix=key_prefix)

    def key(self, run_id: str) -> str:
        return f"{self._run_prefix}{run_id}"

    def create(
        self,
        run_id: str,
        *,
        topic: str,
        handler: str,
        ranges: Sequence[PartitionRange],
        requested: Mapping[str, Any],
        owner: Owner,
        rerun_of: str = "",
        kind: RunKind = "replay",
    ) -> RunRecord:
        """Record a new ``running`` run owned by ``owner``."""
        at = now_utc()
        fields: dict[Any, Any] = {
            "id": run_id,
            "kind": kind,
            "topic": topic,
            "handler": handler,
            "partitions": json.dumps([r.partition for r in ranges]),
            "offsets": json.dumps({str(r.partition): [r.start, r.end] for r in ranges}),
            "notes": json.dumps({str(r.partition): r.note for r in ranges if r.note}),
            "requested": json.dumps(dict(requested)),
            "status": "running",
            "events_handled": 0,
            "events_failed": 0,
            "started_by_host": owner.host,
            "started_by_pid": owner.pid,
            "started_by_user": current_user(),
            "started_at": _stamp(at),
            "heartbeat_at": _stamp(at),
            "owner": owner.instance_id,
            "cancel_requested": "0",
            "rerun_of": rerun_of,
            "resumes": 0,
        }
        # The hash first, then the index: the index never names a missing run.
        self._do(lambda: self._client.hset(self.key(run_id), mapping=fields))
        score = int(at.timestamp() * 1000)
        self._do(lambda: self._client.zadd(self.index_key, {run_id: score}))
        record = self.get(run_id)
        if record is None:
            raise StoreUnavailable(f"run {run_id!r} vanished once recorded")
        return record

    def get(self, run_id: str) -> RunRecord | None:
        raw = self._do(lambda: self._client.hgetall(self.key(run_id)))
        return _record(raw) if raw else None

    def list(self, limit: int = 50) -> list[RunRecord]:
        """The newest ``limit`` runs, newest first."""
        ids = self._do(lambda: self._client.zrevrange(self.index_key, 0, limit - 1))
        pipe = self._client.pipeline(transaction=False)
        for run_id in ids:
            pipe.hgetall(self.key(_text(run_id)))
        rows = self._do(pipe.execute)
        return [_record(row) for row in rows if row]

    def resume(self, run_id: str, owner: Owner) -> RunRecord:
        """Make ``owner`` the run's owner and mark it ``running`` again."""
        fields: dict[Any, Any] = {
            "owner": owner.instance_id,
            "status": "running",
            "cancel_requested": "0",
            "finished_at": "",
            "error": "",
            "heartbeat_at": _stamp(now_utc()),
        }
        key = self.key(run_id)
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)
        pipe.hincrby(key, "resumes", 1)
        self._do(pipe.execute)
        record = self.get(run_id)
        if record is None:
            raise StoreUnavailable(f"run {run_id!r} vanished while resuming")
        return record

    def record_commit(
        self, run_id: str, owner: Owner, progress: Mapping[int, int], events: int
    ) -> bool:
        """Mirror accepted checkpoints and count their events; owner only."""
        args: list[Any] = [owner.instance_id, events, _stamp(now_utc())]
        for partition, offset in progress.items():
            args += [f"progress:{partition}", offset]
        return bool(
            self._do(
                lambda: self._progress_if_owner(keys=[self.key(run_id)], args=args)
            )
        )

    def heartbeat(self, run_id: str, owner: Owner) -> tuple[bool, bool]:
        """Beat; returns (still the owner, cancellation asked)."""
        stamp = _stamp(now_utc())
        owned = self._set(run_id, owner, {"heartbeat_at": stamp})
        asked = self._do(
            lambda: self._client.hget(self.key(run_id), "cancel_requested")
        )
        return owned, _text(asked or b"") == "1"

    def finish(
        self,
        run_id: str,
        owner: Owner,
        status: RunStatus,
        *,
        error: str = "",
        failed_events: int = 0,
        notes: Mapping[int, str] | None = None,
    ) -> bool:
        """Record the final status; owner only. True when recorded.

        ``notes`` are added to the partitions' notes (a partition that
        ended early says why).
        """
        fields: dict[str, Any] = {
            "status": status,
            "finished_at": _stamp(now_utc()),
            "error": error,
        }
        current = self._do(
            lambda: self._client.hmget(self.key(run_id), ["events_failed", "notes"])
        )
        if failed_events:
            fields["events_failed"] = int(_text(current[0] or b"0")) + failed_events
        if notes:
            merged = json.loads(_text(current[1] or b"{}"))
            merged.update({str(p): text for p, text in notes.items()})
            fields["notes"] = json.dumps(merged)
        return self._set(run_id, owner, fields)

    def request_cancel(self, run_id: str) -> None:
        fields: dict[Any, Any] = {
            "cancel_requested": "1",
            "cancel_requested_at": _stamp(now_utc()),
        }
        self._do(lambda: self._client.hset(self.key(run_id), mapping=fields))

    def mark_cancelled(self, run_id: str, expected_owner: str) -> bool:
        """Cancel a run whose process is gone; only if still that owner's."""
        fields = {
            "status": "cancelled",
            "finished_at": _stamp(now_utc()),
            "error": "cancelled while its process was not running",
        }
        args: list[Any] = [expected_owner]
        for name, value in fields.items():
            args += [name, value]
        return bool(
            self._do(lambda: self._set_if_owner(keys=[self.key(run_id)], args=args))
        )

    def close(self) -> None:
        self._client.close()

    def _set(self, run_id: str, owner: Owner, fields: Mapping[str, Any]) -> bool:
        args: list[Any] = [owner.instance_id]
        for name, value in fields.items():
            args += [name, value]
        return bool(
            self._do(lambda: self._set_if_owner(keys=[self.key(run_id)], args=args))
        )

    def _do(self, call: Any) -> Any:
        try:
            return call()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis did not answer: {exc}") from exc


def _process_gone(instance_id: str) -> bool:
    """True when ``instance_id`` (``host:pid:nonce``) names a process of
    this host that no longer exists."""
    parts = instance_id.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    host, pid = parts[0], int(parts[1])
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _time(fields: Mapping[str, str], name: str) -> datetime | None:
    value = fields.get(name)
    return datetime.fromisoformat(value) if value else None


def _status(text: str) -> RunStatus:
    for status in STATUSES:
        if status == text:
            return status
    return "failed"


def _kind(text: str) -> RunKind:
    for kind in KINDS:
        if kind == text:
            return kind
    return "replay"


def _record(raw: Mapping[Any, Any]) -> RunRecord:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    ranges = ranges_from_record(json.loads(fields.get("offsets") or "{}"))
    notes = json.loads(fields.get("notes") or "{}")
    ranges = [
        PartitionRange(r.partition, r.start, r.end, notes.get(str(r.partition), ""))
        for r in ranges
    ]
    return RunRecord(
        id=fields["id"],
        topic=fields.get("topic", ""),
        handler=fields.get("handler", ""),
        ranges=tuple(ranges),
        kind=_kind(fields.get("kind", "")),
        requested=json.loads(fields.get("requested") or "{}"),
        status=_status(fields.get("status", "")),
        progress={
            int(name.split(":", 1)[1]): int(value)
            for name, value in fields.items()
            if name.startswith("progress:")
        },
        events_handled=int(fields.get("events_handled") or 0),
        events_failed=int(fields.get("events_failed") or 0),
        started_by_host=fields.get("started_by_host", ""),
        started_by_pid=int(fields.get("started_by_pid") or 0),
        started_by_user=fields.get("started_by_user", ""),
        started_at=_time(fields, "started_at"),
        finished_at=_time(fields, "finished_at"),
        heartbeat_at=_time(fields, "heartbeat_at"),
        owner=fields.get("owner", ""),
        cancel_requested=fields.get("cancel_requested") == "1",
        error=fields.get("error", ""),
        rerun_of=fields.get("rerun_of", ""),
        resumes=int(fields.get("resumes") or 0),
    )
