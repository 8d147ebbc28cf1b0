"""Dead-letter records made by the real service, and redrives of them."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka

from streamcp.services import KafkaService, RedisService
from tests.replay.helpers import child_env, streamcp, streamcp_argv
from tests.service.harness import (
    REPO,
    ServiceProcess,
    raw_config,
    wait_for,
    write_config,
)

FIXED = "tests.redrive.handlers:Fixed"
RECORDER = "tests.recorder:Recorder"

# (key, value, headers, timestamp ms, partition)
Record = tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]], int, int]


@dataclass(frozen=True)
class DeadLetter:
    """One record of a dead-letter topic, as a test reads it back."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def position(self) -> tuple[int, int]:
        return self.partition, self.offset

    @property
    def original(self) -> tuple[int, int]:
        return (
            int(self.headers["streamcp.original.partition"]),
            int(self.headers["streamcp.original.offset"]),
        )


def produce(bootstrap: str, topic: str, records: Sequence[Record]) -> None:
    """Produce records with headers, one per batch, in order; wait for all."""
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 0,
            "batch.num.messages": 1,
            "acks": "all",
            "max.in.flight.requests.per.connection": 1,
        }
    )
    failures: list[Any] = []
    for key, value, headers, timestamp_ms, partition in records:
        producer.produce(
            topic,
            key=key,
            value=value,
            headers=list(headers),
            timestamp=timestamp_ms,
            partition=partition,
            on_delivery=lambda err, _m: failures.append(err) if err else None,
        )
        producer.flush(30)
    assert not failures, failures


def read_topic(bootstrap: str, topic: str, partitions: int) -> list[DeadLetter]:
    """Every record of ``topic`` up to its current end, by position."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    ends = {}
    for p in range(partitions):
        low, high = consumer.get_watermark_offsets(
            confluent_kafka.TopicPartition(topic, p), timeout=10
        )
        if high > low:
            ends[p] = high
    consumer.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in ends])
    found: dict[tuple[int, int], DeadLetter] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        max((o for q, o in found if q == p), default=-1) < end - 1
        for p, end in ends.items()
    ):
        for message in consumer.consume(50, 0.2):
            if message.error() is not None:
                continue
            headers = {
                name: (value or b"").decode() for name, value in message.headers() or []
            }
            found[(message.partition(), message.offset())] = DeadLetter(
                message.partition(),
                message.offset(),
                message.key(),
                message.value(),
                headers,
            )
    consumer.close()
    return [found[position] for position in sorted(found)]


@dataclass
class RedriveSetup:
    """A 3-partition topic, its 2-partition dead-letter topic, a fresh
    group and key prefix, and files for one test."""

    kafka: KafkaService
    redis: RedisService
    prefix: str
    topic: str
    group: str
    tmp: Path

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap_servers

    @property
    def dlq(self) -> str:
        return f"{self.topic}.dlq"

    @property
    def seen(self) -> Path:
        """Where the fixed handler writes what it saw."""
        return self.tmp / "redriven.jsonl"

    def raw(self, handler: dict[str, Any], **sections: Any) -> dict[str, Any]:
        raw = raw_config(
            self.bootstrap,
            self.redis.url,
            self.prefix,
            self.topic,
            self.group,
            log={"level": "info"},
            handler=handler,
        )
        for name, values in sections.items():
            raw.setdefault(name, {}).update(values)
        return raw

    def write(self, raw: dict[str, Any]) -> Path:
        return write_config(self.tmp / f"c-{uuid.uuid4().hex[:6]}.toml", raw)

    def dead_letter(self, fail_at: Sequence[tuple[int, int]]) -> list[DeadLetter]:
        """Run ``streamcp run`` with a handler failing at ``fail_at`` and the
        dead-letter policy until caught up; returns the dead-letter topic."""
        handler = {
            "name": RECORDER,
            "options": {
                "path": str(self.tmp / "service.txt"),
                "fail_at": [f"{p}:{o}" for p, o in fail_at],
            },
            "on_failure": "dead-letter",
            "retry_attempts": 2,
            "retry_backoff_s": 0.01,
        }
        proc = ServiceProcess(
            self.write(self.raw(handler)),
            self.tmp / "service.log",
            "--stop-when-caught-up",
        )
        try:
            assert proc.wait(90) == 0, (self.tmp / "service.log").read_text()
        finally:
            proc.kill()
        found = read_topic(self.bootstrap, self.dlq, 2)
        assert sorted(d.original for d in found) == sorted(fail_at)
        return found

    def redrive_config(self, **options: Any) -> Path:
        """A configuration whose handler is the fixed one."""
        policy = options.pop("policy", {})
        sections = options.pop("sections", {})
        handler = {
            "name": FIXED,
            "options": {"path": str(self.seen), **options},
            "retry_attempts": 3,
            "retry_backoff_s": 0.01,
            **policy,
        }
        return self.write(self.raw(handler, **sections))

    def redrive(
        self, *args: str, config: Path | None = None, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """``streamcp dlq redrive`` to its end."""
        return streamcp(
            "dlq",
            "redrive",
            "--config",
            str(config or self.redrive_config()),
            "--no-progress",
            *args,
            timeout_s=timeout_s,
        )

    def cli(
        self, *args: str, timeout_s: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return streamcp(
            *args, "--config", str(self.redrive_config()), timeout_s=timeout_s
        )

    def show(self, run_id: str) -> dict[str, Any]:
        result = self.cli("runs", "show", run_id, "--json")
        assert result.returncode == 0, result.stderr
        shown: dict[str, Any] = json.loads(result.stdout)
        return shown


class RedriveProcess:
    """``streamcp dlq redrive`` running as a child process; output to files."""

    def __init__(self, setup: RedriveSetup, config: Path, *args: str) -> None:
        self.stdout_path = setup.tmp / f"redrive-{uuid.uuid4().hex[:6]}.out"
        self._out = self.stdout_path.open("w")
        self._err = self.stdout_path.with_suffix(".err").open("w")
        argv = ["dlq", "redrive", "--config", str(config), "--no-progress", *args]
        self.proc = subprocess.Popen(
            streamcp_argv(*argv),
            stdout=self._out,
            stderr=self._err,
            env=child_env(),
            cwd=REPO,
            start_new_session=True,
        )

    def run_id(self, timeout_s: float = 30.0) -> str:
        """The run id, once the process printed it."""

        def printed() -> str | None:
            found = re.search(r"^run (\S+):", self.stdout_path.read_text(), re.M)
            return found.group(1) if found else None

        found: str = wait_for(printed, timeout_s, "the run id on stdout")
        return found

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._out.close()
        self._err.close()
