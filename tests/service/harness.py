"""Running the service for tests: in a thread, or as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from streamcp.config import Config, build_config
from streamcp.events import TopicPartition
from streamcp.handlers import build, failure_policy
from streamcp.redis_store import RedisCheckpointStore
from streamcp.router import HandlerRouter
from streamcp.service import Service
from streamcp.services import produce_records

REPO = Path(__file__).resolve().parents[2]


def wait_for(
    predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def raw_config(
    bootstrap: str,
    redis_url: str,
    key_prefix: str,
    topic: str,
    group: str,
    **sections: Mapping[str, Any],
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "topics": [topic],
            "session_timeout_ms": 6000,
        },
        "redis": {"url": redis_url, "key_prefix": key_prefix},
        "commit": {"every_events": 1000, "every_seconds": 1.0},
        "consumer": {"poll_timeout_s": 0.05, "drain_timeout_s": 5.0},
        "handler": {"name": "tests.recorder:Recorder"},
        "log": {"level": "debug"},
        # A free port each: tests run several services at once.
        "metrics": {"address": "127.0.0.1:0"},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def produce(
    bootstrap: str, topic: str, partitions: int, per_partition: int, start: int = 0
) -> None:
    records = [
        (f"k{i}".encode(), f"v-{p}-{i}".encode(), None, p)
        for i in range(start, start + per_partition)
        for p in range(partitions)
    ]
    produce_records(bootstrap, topic, records)


class ServiceThread:
    """A :class:`Service` running in a thread of the test process."""

    def __init__(
        self,
        config: Config,
        handler: Any,
        *,
        stop_when_caught_up: bool = False,
        policy: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = RedisCheckpointStore.from_url(
            config.redis.url, key_prefix=config.redis.key_prefix
        )
        built = build(handler, {}, name="test-handler")
        built.policy = failure_policy(handler, policy or {})
        router = HandlerRouter(built)
        self.service = Service(
            config,
            store=self.store,
            router=router,
            stop_when_caught_up=stop_when_caught_up,
        )
        self.status: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.status = self.service.run()

    def __enter__(self) -> ServiceThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        self.service.request_stop()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "service thread did not stop"
        self.store.close()
        return self.status

    def join(self, timeout_s: float = 60.0) -> int | None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "service thread did not end"
        return self.status


def write_config(path: Path, raw: Mapping[str, Any]) -> Path:
    path.write_text(_toml(raw))
    return path


def _toml(raw: Mapping[str, Any], prefix: str = "") -> str:
    scalars = []
    tables = []
    for key, value in raw.items():
        if isinstance(value, Mapping):
            name = f"{prefix}.{key}" if prefix else key
            tables.append(f"[{name}]\n" + _toml(value, name))
        else:
            scalars.append(
                f"{json.dumps(key) if '.' in key else key} = {json.dumps(value)}"
            )
    body = "\n".join(scalars) + ("\n" if scalars else "")
    return body + "\n".join(tables)


class ServiceProcess:
    """``streamcp run`` as a real child process, logs captured to a file."""

    def __init__(self, config_path: Path, log_path: Path, *extra: str) -> None:
        self.log_path = log_path
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamcp.cli",
                "run",
                "--config",
                str(config_path),
                *extra,
            ],
            stdout=self._log,
            stderr=self._log,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout_s: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return events

    def saw(self, event_name: str) -> list[dict[str, Any]]:
        return [e for e in self.log_events() if e.get("event") == event_name]


def checkpoints(store: RedisCheckpointStore, group: str) -> dict[int, int | None]:
    return {tp.partition: cp.offset for tp, cp in store.read(group).items()}


def tp(topic: str, partition: int) -> TopicPartition:
    return TopicPartition(topic, partition)


def config_from(raw: Mapping[str, Any]) -> Config:
    return build_config(raw)
