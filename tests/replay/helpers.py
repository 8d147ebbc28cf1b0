"""Running ``streamcp replay`` and ``streamcp runs`` as real processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from streamcp.services import KafkaService, RedisService, produce_records
from tests.service.harness import REPO, raw_config, wait_for, write_config

RECORDER = "tests.replay.recorder:ReplayRecorder"


def streamcp_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamcp.cli", *args]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def streamcp(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run the CLI to its end; returns exit status and output."""
    return subprocess.run(
        streamcp_argv(*args),
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO,
        timeout=timeout_s,
        check=False,
    )


def run_id_of(stdout: str) -> str:
    found = re.search(r"^run (\S+):", stdout, re.MULTILINE)
    assert found is not None, f"no run id in output:\n{stdout}"
    return found.group(1)


@dataclass
class ReplaySetup:
    """A fresh topic, group, key prefix and config file for one test."""

    kafka: KafkaService
    redis: RedisService
    prefix: str
    topic: str
    group: str
    tmp: Path
    out: Path

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap_servers

    def raw(self, **sections: Any) -> dict[str, Any]:
        options = {"path": str(self.out)}
        options.update(sections.pop("handler_options", {}))
        raw = raw_config(
            self.bootstrap,
            self.redis.url,
            self.prefix,
            self.topic,
            self.group,
            log={"level": "info"},
            handler={"name": RECORDER, "options": options},
        )
        for name, values in sections.items():
            raw.setdefault(name, {}).update(values)
        return raw

    def config(self, **sections: Any) -> Path:
        return write_config(
            self.tmp / f"c-{uuid.uuid4().hex[:6]}.toml", self.raw(**sections)
        )

    def replay(
        self, *args: str, config: Path | None = None, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        path = config or self.config()
        return streamcp(
            "replay",
            "--config",
            str(path),
            "--topic",
            self.topic,
            *args,
            timeout_s=timeout_s,
        )

    def cli(
        self, *args: str, config: Path | None = None, timeout_s: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        path = config or self.config()
        return streamcp(*args, "--config", str(path), timeout_s=timeout_s)

    def show(self, run_id: str) -> dict[str, Any]:
        result = self.cli("runs", "show", run_id, "--json")
        assert result.returncode == 0, result.stderr
        shown: dict[str, Any] = json.loads(result.stdout)
        return shown


def produce_per_partition(
    bootstrap: str,
    topic: str,
    partitions: int,
    count: int,
    start: int = 0,
    timestamps: Sequence[int] | None = None,
) -> None:
    """``count`` events on each partition, one per batch, in partition order."""
    records = [
        (
            f"k{i}".encode(),
            f"v-{p}-{i}".encode(),
            None if timestamps is None else timestamps[i - start],
            p,
        )
        for p in range(partitions)
        for i in range(start, start + count)
    ]
    produce_records(bootstrap, topic, records)


def produce_transaction(bootstrap: str, topic: str, partition: int, count: int) -> None:
    """``count`` events in one committed transaction: the commit marker
    takes the offset after them."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 0,
            "batch.num.messages": 1,
            "transactional.id": f"tx-{uuid.uuid4().hex[:8]}",
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(count):
        producer.produce(
            topic, key=b"tx", value=f"tx-{i}".encode(), partition=partition
        )
    producer.commit_transaction(30)


class ReplayProcess:
    """``streamcp replay`` running as a child process; output to files."""

    def __init__(
        self, setup: ReplaySetup, *args: str, config: Path | None = None
    ) -> None:
        path = config or setup.config()
        self.stdout_path = setup.tmp / f"replay-{uuid.uuid4().hex[:6]}.out"
        self.stderr_path = self.stdout_path.with_suffix(".err")
        self._out = self.stdout_path.open("w")
        self._err = self.stderr_path.open("w")
        argv = ["replay", "--config", str(path), *args]
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
            text = self.stdout_path.read_text()
            found = re.search(r"^run (\S+):", text, re.MULTILINE)
            return found.group(1) if found else None

        found: str = wait_for(printed, timeout_s, "the run id on stdout")
        return found

    def wait(self, timeout_s: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._out.close()
            self._err.close()

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()


def decode(shown: dict[str, Any]) -> dict[int, tuple[int, int, int | None]]:
    """partition -> (start, end, checkpoint) of a ``runs show --json``."""
    return {
        p["partition"]: (p["start"], p["end"], p["checkpoint"])
        for p in shown["partitions"]
    }


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
