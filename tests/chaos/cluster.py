"""A private broker, a private Redis and several ``streamcp run`` processes
in one consumer group, with the controls the fault injector needs.

Everything listens on 127.0.0.1 and is started here: the broker is a local
tansu (it can be frozen), Redis a local ``redis-server`` with an
append-only file fsynced on every write (it can be stopped, killed and
restarted with its data, or restarted without it). Instances are real
processes, so ``kill -9`` and ``SIGSTOP`` mean what they mean in
production.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka

from streamcp.events import TopicPartition
from streamcp.redis_store import RedisCheckpointStore
from streamcp.services import (
    KafkaService,
    RedisService,
    produce_records,
    provide_local_kafka,
    provide_local_redis,
)
from streamcp.store import Checkpoint, HistoryEntry
from tests.service.harness import ServiceProcess, write_config

HANDLER = "tests.chaos.handler:ChaosHandler"
# Who the harness says it is when it restores checkpoints after a store loss.
RESTORER = "chaos:restore"
# Room for every history entry of a long run: the checker reads them all.
HISTORY_MAX_ENTRIES = 10_000_000


@dataclass(frozen=True, kw_only=True)
class ClusterSettings:
    """The shape of one run's cluster; the defaults are the short mode's."""

    partitions: int = 6
    instances: int = 3
    max_instances: int = 5
    session_timeout_ms: int = 6000
    max_poll_interval_ms: int = 15000
    batch_size: int = 50
    max_in_flight_events: int = 200
    commit_every_events: int = 50
    commit_every_seconds: float = 0.5
    drain_timeout_s: float = 5.0
    retry_attempts: int = 3
    retry_backoff_s: float = 0.05
    fail_every: int = 97
    slow_every: int = 151
    slow_ms: int = 250
    produce_every_s: float = 0.25
    seed: int = 0
    assignor: str = "range"

    @property
    def duplicates_bound(self) -> int:
        """Most events one instance can have handled and not committed.

        Finished events count as in flight until Redis accepted their
        checkpoint, and a poll takes no more than the in-flight bound has
        room for (at least one event), so at any moment an instance holds
        at most ``max_in_flight_events`` delivered-but-uncommitted events,
        plus one batch of slack for the poll that returned while the bound
        was being reached. That is what one disruption of one instance
        (kill, freeze, lost partitions, store loss) can deliver again.
        """
        return self.max_in_flight_events + self.batch_size


@dataclass
class Instance:
    """One ``streamcp run`` process and how it ended."""

    name: str
    process: ServiceProcess
    started_at: float
    ended_at: float | None = None
    ending: str = ""  # killed, left, store_lost, stopped, unexpected
    exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.ended_at is None and self.process.proc.poll() is None

    def log_text(self) -> str:
        return self.process.log_path.read_text(errors="replace")


class Producer:
    """Produces events with ids, one record per batch, round-robin over
    the partitions, in a thread, until stopped (or ``limit_s`` passed)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partitions: int,
        every_s: float,
        limit_s: float,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._partitions = partitions
        self._every_s = every_s
        self._limit_s = limit_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="chaos-producer", daemon=True
        )
        self.acked: list[str] = []
        self.unsure: list[str] = []
        self.errors: list[str] = []
        self._sequence = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        deadline = time.monotonic() + self._limit_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            ids = [f"e{self._sequence + i}" for i in range(self._partitions)]
            self._sequence += self._partitions
            records = [(i.encode(), i.encode(), None, p) for p, i in enumerate(ids)]
            try:
                produce_records(self._bootstrap, self._topic, records, timeout_s=90)
            except confluent_kafka.KafkaException as exc:
                # Some may be in the log anyway: the checker reads the topic.
                self.unsure += ids
                self.errors.append(str(exc))
            else:
                self.acked += ids
            self._stop.wait(self._every_s)


class Cluster:
    """The services and instances of one run; see the module docstring."""

    def __init__(
        self,
        settings: ClusterSettings,
        workdir: Path,
        kafka: KafkaService | None = None,
    ) -> None:
        """``kafka``: a broker to use instead of a private local one (it is
        not stopped at the end, and cannot be frozen)."""
        self.settings = settings
        self._given_kafka = kafka
        self.workdir = workdir
        self.rng = random.Random(settings.seed)
        self.group = f"chaos-{uuid.uuid4().hex[:8]}"
        self.topic = f"chaos-{uuid.uuid4().hex[:8]}"
        self.key_prefix = f"c-{uuid.uuid4().hex[:8]}"
        self.record_path = workdir / "handled.txt"
        self.instances: list[Instance] = []
        self.archived_history: list[list[HistoryEntry]] = []
        self.kafka: KafkaService | None = kafka
        self.redis: RedisService | None = None
        self.store: RedisCheckpointStore | None = None
        self.producer: Producer | None = None
        self._config_path = workdir / "streamcp.toml"

    # -- services -------------------------------------------------------------

    def start(self, produce_limit_s: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.kafka is None:
            self.kafka = provide_local_kafka(self.workdir / "kafka")
        self.redis = provide_local_redis(self.workdir / "redis", appendonly=True)
        self.kafka.create_topic(self.topic, self.settings.partitions)
        self.store = RedisCheckpointStore.from_url(
            self.redis.url, key_prefix=self.key_prefix
        )
        write_config(self._config_path, self.raw_config())
        self.producer = Producer(
            self.kafka.bootstrap_servers,
            self.topic,
            self.settings.partitions,
            self.settings.produce_every_s,
            produce_limit_s,
        )
        self.producer.start()
        for _ in range(self.settings.instances):
            self.add_instance()

    def raw_config(self) -> dict[str, Any]:
        s = self.settings
        assert self.kafka is not None and self.redis is not None
        return {
            "kafka": {
                "bootstrap_servers": self.kafka.bootstrap_servers,
                "group_id": self.group,
                "topics": [self.topic],
                "assignor": s.assignor,
                "session_timeout_ms": s.session_timeout_ms,
                "max_poll_interval_ms": s.max_poll_interval_ms,
            },
            "redis": {
                "url": self.redis.url,
                "key_prefix": self.key_prefix,
                "history_max_entries": HISTORY_MAX_ENTRIES,
            },
            "commit": {
                "every_events": s.commit_every_events,
                "every_seconds": s.commit_every_seconds,
            },
            "consumer": {
                "poll_timeout_s": 0.05,
                "batch_size": s.batch_size,
                "max_in_flight_events": s.max_in_flight_events,
                "drain_timeout_s": s.drain_timeout_s,
                "on_store_loss": "fail",
            },
            "handler": {
                "name": HANDLER,
                "retry_attempts": s.retry_attempts,
                "retry_backoff_s": s.retry_backoff_s,
                "options": {
                    "path": str(self.record_path),
                    "seed": s.seed,
                    "fail_every": s.fail_every,
                    "slow_every": s.slow_every,
                    "slow_ms": s.slow_ms,
                },
            },
            "log": {"level": "info", "format": "json"},
            "metrics": {"enabled": False},
        }

    def close(self) -> None:
        """Stop everything this run started; safe to call more than once."""
        if self.producer is not None:
            self.producer.stop()
        for instance in self.instances:
            if instance.ended_at is None:
                with contextlib.suppress(OSError):
                    instance.process.signal(signal.SIGCONT)
                instance.process.kill()
                self.mark_ended(instance, "stopped")
        if self.store is not None:
            self.store.close()
        kafka = None if self._given_kafka is not None else self.kafka
        for service in (kafka, self.redis):
            if service is not None:
                with contextlib.suppress(Exception):
                    service.stop()

    # -- instances ------------------------------------------------------------

    def add_instance(self) -> Instance:
        name = f"i{len(self.instances)}"
        process = ServiceProcess(self._config_path, self.workdir / f"{name}.log")
        instance = Instance(name, process, time.time())
        self.instances.append(instance)
        return instance

    def alive(self) -> list[Instance]:
        return [i for i in self.instances if i.alive]

    def kill(self, instance: Instance) -> None:
        instance.process.signal(signal.SIGKILL)
        instance.exit_code = instance.process.wait(10)
        self.mark_ended(instance, "killed")

    def leave(self, instance: Instance, timeout_s: float = 30.0) -> None:
        """SIGTERM: a graceful stop, which must exit 0."""
        instance.process.signal(signal.SIGTERM)
        try:
            instance.exit_code = instance.process.wait(timeout_s)
        except Exception:  # it hangs: that is reported
            instance.process.kill()
            instance.exit_code = None
        self.mark_ended(instance, "left")

    def stop_all(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every live instance at once and wait for each."""
        alive = self.alive()
        for instance in alive:
            instance.process.signal(signal.SIGTERM)
        for instance in alive:
            try:
                instance.exit_code = instance.process.wait(timeout_s)
            except Exception:  # it hangs: that is reported
                instance.process.kill()
                instance.exit_code = None
            self.mark_ended(instance, "stopped")

    def reap(self) -> list[Instance]:
        """Instances that exited without being told to; they are recorded."""
        gone = []
        for instance in self.instances:
            if instance.ended_at is None and instance.process.proc.poll() is not None:
                instance.exit_code = instance.process.wait(1)
                self.mark_ended(instance, "unexpected")
                gone.append(instance)
        return gone

    def ensure(self, count: int) -> None:
        while len(self.alive()) < count:
            self.add_instance()

    def mark_ended(self, instance: Instance, ending: str) -> None:
        instance.ended_at = time.time()
        instance.ending = ending

    # -- Redis ----------------------------------------------------------------

    def checkpoints(self) -> dict[TopicPartition, Checkpoint] | None:
        """The group's checkpoints, ``None`` while Redis does not answer."""
        assert self.store is not None
        try:
            return self.store.read(self.group)
        except Exception:  # down or restarting
            return None

    def lose_redis_data(self) -> None:
        """Stop Redis, keep its files aside, start it again empty.

        The kept files are read at once (on a private server) for their
        history, so the checker sees every entry ever written.
        """
        redis = self.redis
        assert redis is not None and redis.data_dir is not None
        redis.stop()
        archive = self.workdir / f"lost-{len(self.archived_history)}"
        shutil.copytree(redis.data_dir, archive)
        for child in redis.data_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        redis.start()
        self.archived_history.append(self._read_archive(archive))

    def restore_lost_checkpoints(self) -> int:
        """As an operator would: write the kept checkpoints back.

        Returns how many partitions were restored; each gets an
        ``operator`` history entry.
        """
        archive = self.workdir / f"lost-{len(self.archived_history) - 1}"
        rows = self._with_archive(archive, lambda store: store.dump(self.group))
        assert self.store is not None
        self.store.restore(self.group, rows, by=RESTORER)
        return len(rows)

    def move_to_new_group(self) -> None:
        """As an operator would when the broker no longer serves the group:
        stop every instance gracefully, copy the checkpoints to a new group
        (``operator`` entries by :data:`RESTORER`) and start the instances
        in it. The old group's history is kept for the checker."""
        assert self.store is not None
        self.stop_all()
        rows = self.store.dump(self.group)
        self.archived_history.append(self.history())
        self.group = f"chaos-{uuid.uuid4().hex[:8]}"
        write_config(self._config_path, self.raw_config())
        self.store.restore(self.group, rows, by=RESTORER)
        self.ensure(self.settings.instances)

    def history(self) -> list[HistoryEntry]:
        assert self.store is not None
        return self.store.history(self.group, 0)

    def _read_archive(self, archive: Path) -> list[HistoryEntry]:
        return self._with_archive(archive, lambda store: store.history(self.group, 0))

    def _with_archive(self, archive: Path, read: Any) -> Any:
        server = provide_local_redis(self.workdir / "archive", appendonly=True)
        try:
            server.stop()
            assert server.data_dir is not None
            shutil.rmtree(server.data_dir)
            shutil.copytree(archive, server.data_dir)
            server.start()
            store = RedisCheckpointStore.from_url(
                server.url, key_prefix=self.key_prefix
            )
            try:
                return read(store)
            finally:
                store.close()
        finally:
            server.stop()

    # -- the topic ------------------------------------------------------------

    def end_offsets(self) -> dict[int, int] | None:
        """Each partition's end (high watermark), ``None`` if not known."""
        assert self.kafka is not None
        consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.kafka.bootstrap_servers,
                "group.id": f"chaos-ends-{uuid.uuid4().hex[:6]}",
            }
        )
        try:
            ends = {}
            for p in range(self.settings.partitions):
                kafka_tp = confluent_kafka.TopicPartition(self.topic, p)
                _, high = consumer.get_watermark_offsets(kafka_tp, timeout=10)
                ends[p] = int(high)
            return ends
        except confluent_kafka.KafkaException:
            return None
        finally:
            consumer.close()

    def read_topic(
        self, timeout_s: float = 60.0
    ) -> tuple[dict[tuple[int, int], str], dict[int, int]]:
        """Every record of the topic by (partition, offset), and the ends."""
        assert self.kafka is not None
        consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.kafka.bootstrap_servers,
                "group.id": f"chaos-reader-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
            }
        )
        try:
            ends = {}
            for p in range(self.settings.partitions):
                kafka_tp = confluent_kafka.TopicPartition(self.topic, p)
                _, high = consumer.get_watermark_offsets(kafka_tp, timeout=10)
                ends[p] = int(high)
            consumer.assign(
                [
                    confluent_kafka.TopicPartition(
                        self.topic, p, confluent_kafka.OFFSET_BEGINNING
                    )
                    for p in range(self.settings.partitions)
                ]
            )
            records: dict[tuple[int, int], str] = {}
            deadline = time.monotonic() + timeout_s
            wanted = sum(ends.values())
            while len(records) < wanted and time.monotonic() < deadline:
                for message in consumer.consume(500, 0.5):
                    if message.error() is None:
                        key = (message.partition(), message.offset())
                        records[key] = (message.value() or b"").decode()
            return records, ends
        finally:
            consumer.close()
