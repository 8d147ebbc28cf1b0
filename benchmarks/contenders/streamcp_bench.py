"""streamcp as a contender: the live service or a replay, in this process.

``spec["mode"]``:

* ``event``: a per-event no-op ``handle(event)``;
* ``batch``: a no-op ``handle_batch(events)``;
* ``json``: ``handle(event)`` doing ``json.loads(event.value)``;
* ``replay``: the per-event no-op handler, driven by a replay run over
  ``spec["ranges"]`` instead of the live service.

The checkpoint store is wrapped to time each commit call and to count store
calls. With ``spec["count_round_trips"]`` it also reads Redis's own ``INFO
commandstats`` before and after each commit call: the number of ``EVALSHA``
calls one commit costs, whatever the number of partitions.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import redis
from common import Meter, emit, load_spec

from streamcp.cli import freeze_startup_objects
from streamcp.config import Config, build_config
from streamcp.events import Batch, Event
from streamcp.handlers import build
from streamcp.logs import configure_logging
from streamcp.ranges import PartitionRange
from streamcp.redis_store import RedisCheckpointStore
from streamcp.replay import Replay
from streamcp.router import HandlerRouter
from streamcp.runs import RunStore
from streamcp.service import Service
from streamcp.store import Owner

PROBE_FIRST = 10
PROBE_EVERY = 20
SCRIPTS = ("commit.lua", "claim.lua", "release.lua", "set_offset.lua", "pause.lua")


class Counting:
    """Counts events; stops the clock and the consumer at the last one."""

    def __init__(self, expected: int, meter: Meter) -> None:
        self.expected = expected
        self.meter = meter
        self.seen = 0
        # What was counted when the clock stopped (a batch may pass the
        # expected count; the service goes on handling until it stops).
        self.counted = 0
        self.on_done: Callable[[], None] = lambda: None

    def _first(self) -> None:
        self.meter.start()

    def _last(self) -> None:
        self.meter.stop()
        self.counted = self.seen
        self.on_done()


class PerEvent(Counting):
    def handle(self, event: Event) -> None:
        seen = self.seen
        if not seen:
            self._first()
        event.value  # noqa: B018  # touch it, as the raw loop does
        self.seen = seen = seen + 1
        if seen == self.expected:
            self._last()


class Decoding(Counting):
    def handle(self, event: Event) -> None:
        seen = self.seen
        if not seen:
            self._first()
        json.loads(event.value)  # type: ignore[arg-type]
        self.seen = seen = seen + 1
        if seen == self.expected:
            self._last()


class Batched(Counting):
    def handle_batch(self, events: Batch) -> None:
        seen = self.seen
        if not seen:
            self._first()
        # Touch every value, as the raw loop does, through the batch's column.
        self.seen = seen = seen + len(events.values())
        if seen >= self.expected > seen - len(events):
            self._last()


class TimedStore:
    """The Redis store, with each commit call timed and every call counted."""

    def __init__(
        self, inner: RedisCheckpointStore, probe: redis.Redis | None = None
    ) -> None:
        self._inner = inner
        self._probe = probe
        self.evalsha = 0
        self.probed = 0
        self.commit_s: list[float] = []
        self.commit_partitions: list[int] = []
        self.calls: dict[str, int] = {}

    def commit(self, namespace: str, owner: Owner, requests: Sequence[Any]) -> Any:
        self._count("commit")
        # Probing costs two INFO round trips: only the first commits and then
        # every PROBE_EVERY-th are probed, so that the probe does not slow
        # the run it measures.
        calls = self.calls["commit"]
        probe = (
            self._probe if calls <= PROBE_FIRST or calls % PROBE_EVERY == 0 else None
        )
        before = evalsha_calls(probe) if probe is not None else 0
        started = time.perf_counter()
        try:
            return self._inner.commit(namespace, owner, requests)
        finally:
            self.commit_s.append(time.perf_counter() - started)
            self.commit_partitions.append(len(requests))
            if probe is not None:
                # The probe's own INFO call is not an EVALSHA.
                self.evalsha += evalsha_calls(probe) - before
                self.probed += 1

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if callable(attribute):

            def counted(*args: Any, **kwargs: Any) -> Any:
                self._count(name)
                return attribute(*args, **kwargs)

            return counted
        return attribute


def evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def preload_scripts(client: redis.Redis) -> None:
    """Load the store's scripts first, so no EVALSHA of the run misses."""
    for name in SCRIPTS:
        client.script_load(resources.files("streamcp").joinpath(name).read_text())


def config_for(spec: dict[str, Any]) -> Config:
    properties = dict(spec["librdkafka"])
    session_ms = int(properties.pop("session.timeout.ms", 10_000))
    consumer = {"drain_timeout_s": 10.0, **spec.get("consumer", {})}
    return build_config(
        {
            "kafka": {
                "bootstrap_servers": spec["bootstrap"],
                "group_id": spec["group"],
                "topics": [spec["topic"]],
                "session_timeout_ms": session_ms,
                "properties": properties,
            },
            "redis": {"url": spec["redis_url"], "key_prefix": spec["key_prefix"]},
            "commit": {
                "every_events": spec.get("commit_every_events", 0),
                "every_seconds": spec.get("commit_every_seconds", 1.0),
            },
            "consumer": consumer,
            "handler": {"name": "benchmark"},
            "log": {"level": "warning"},
            "metrics": {"address": "127.0.0.1:0"},
        }
    )


def make_handler(mode: str, expected: int, meter: Meter) -> Counting:
    if mode == "batch":
        return Batched(expected, meter)
    if mode == "json":
        return Decoding(expected, meter)
    return PerEvent(expected, meter)


def run_live(config: Config, store: TimedStore, counting: Counting) -> int:
    handler = build(counting, {}, name="benchmark")
    service = Service(config, store=store, router=HandlerRouter(handler))  # type: ignore[arg-type]
    counting.on_done = service.request_stop
    return service.run()


def run_replay(
    config: Config, store: TimedStore, counting: Counting, spec: dict[str, Any]
) -> int:
    runs = RunStore.from_url(config.redis.url, key_prefix=config.redis.key_prefix)
    owner = Owner.for_this_process()
    ranges = [PartitionRange(p, start, end) for p, start, end in spec["ranges"]]
    record = runs.create(
        f"bench-{uuid.uuid4().hex[:8]}",
        topic=spec["topic"],
        handler="benchmark",
        ranges=ranges,
        requested={},
        owner=owner,
    )
    handler = build(counting, {}, name="benchmark")
    job = Replay(
        record,
        config,
        store=store,
        runs=runs,
        handler=handler,  # type: ignore[arg-type]
        owner=owner,
    )
    outcome = job.run()
    runs.close()
    return 0 if outcome.status == "completed" else 1


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    spec = load_spec()
    configure_logging("warning", "json")
    logging.getLogger("streamcp.librdkafka").setLevel(logging.WARNING)
    config = config_for(spec)
    meter = Meter()
    counting = make_handler(spec["mode"], spec["events"], meter)
    client = redis.Redis.from_url(spec["redis_url"])
    preload_scripts(client)
    # Counting round trips costs two INFO calls per probed commit (see
    # TimedStore.commit).
    probe = client if spec.get("count_round_trips") else None
    store = TimedStore(
        RedisCheckpointStore.from_url(
            config.redis.url, key_prefix=config.redis.key_prefix
        ),
        probe,
    )
    if not spec.get("no_freeze"):
        freeze_startup_objects()  # as `streamcp run` and `streamcp replay` do
    if spec["mode"] == "replay":
        status = run_replay(config, store, counting, spec)
    else:
        status = run_live(config, store, counting)
    commits = len(store.commit_s)
    emit(
        meter.result(
            counting.counted,
            exit_status=status,
            commits=commits,
            evalsha_per_commit=store.evalsha / store.probed if store.probed else None,
            commits_probed=store.probed,
            partitions_per_commit_max=max(store.commit_partitions, default=0),
            commit_p50_ms=_ms(percentile(store.commit_s, 0.50)),
            commit_p99_ms=_ms(percentile(store.commit_s, 0.99)),
            store_calls=store.calls,
        )
    )
    store.close()
    client.close()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


if __name__ == "__main__":
    main()
