"""Bad configuration: refused with the field named, exit status 2, no connection."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamcp.cli import main


class Listener:
    """A loopback TCP port that counts the connections it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listeners() -> Iterator[tuple[Listener, Listener]]:
    kafka, redis = Listener(), Listener()
    yield kafka, redis
    kafka.close()
    redis.close()


class DeclaresLongTimeout:
    """A handler whose class declares a timeout past max.poll.interval.ms."""

    timeout_s = 400.0

    def handle(self, event: object) -> None:
        pass


BAD_CONFIGS = [
    pytest.param(
        ["--set", "consumer.execution=inline", "--set", "handler.timeout_s=5"],
        "consumer.execution",
        id="inline-with-a-handler-timeout",
    ),
    pytest.param(
        ["--handler", "tests.test_cli_config:DeclaresLongTimeout"],
        "handler.timeout_s",
        id="class-declared-timeout-past-max-poll-interval",
    ),
    pytest.param(
        ["--set", "commit.every_events=0", "--set", "commit.every_seconds=0"],
        "commit.every_events",
        id="n-and-t-disabled",
    ),
    pytest.param(
        ["--set", "commit.every_events=-5"], "commit.every_events", id="negative-events"
    ),
    pytest.param(
        ["--set", "commit.every_seconds=-1"],
        "commit.every_seconds",
        id="negative-seconds",
    ),
    pytest.param(
        ["--set", "commit.every_events=lots"],
        "commit.every_events",
        id="non-numeric-events",
    ),
    pytest.param(
        ["--set", "consumer.batch_size=0"], "consumer.batch_size", id="zero-batch"
    ),
    pytest.param(
        ["--set", "consumer.max_in_flight_events=ten"],
        "consumer.max_in_flight_events",
        id="non-numeric-bound",
    ),
    pytest.param(
        ["--handler", "no_such_module:handle"],
        "handler.name",
        id="unknown-module-handler",
    ),
    pytest.param(
        ["--handler", "no-such-entry-point"], "handler.name", id="unknown-entry-point"
    ),
    pytest.param(
        ["--handler", "wikistats"], "handler.options.redis_url", id="missing-option"
    ),
    pytest.param(
        ["--set", "kafka.properties.'enable.auto.commit'=true"],
        "kafka.properties.'enable.auto.commit'",
        id="auto-commit-on",
    ),
    pytest.param(
        ["--set", "kafka.properties.'enable.auto.offset.store'=true"],
        "kafka.properties.'enable.auto.offset.store'",
        id="offset-store-on",
    ),
    pytest.param(
        ["--set", "consumer.start_policy=middle"],
        "consumer.start_policy",
        id="unknown-start-policy",
    ),
    pytest.param(
        ["--set", "kafka.assignor=sticky-ish"], "kafka.assignor", id="unknown-assignor"
    ),
    pytest.param(
        ["--set", "commit.every_evnts=5"], "commit.every_evnts", id="misspelt-field"
    ),
    pytest.param(
        ["--set", "kafka.topic_pattern=^wiki"], "kafka.topics", id="topics-and-pattern"
    ),
    pytest.param(["--group", "a{b}"], "kafka.group_id", id="group-with-hash-tag"),
    pytest.param(
        ["--set", "commit.every_seconds=inf"],
        "commit.every_seconds",
        id="infinite-seconds",
    ),
    pytest.param(
        ["--set", "consumer.batch_size=99999999999999999999"],
        "consumer.batch_size",
        id="huge-batch",
    ),
    pytest.param(["--topic", "bad topic!"], "kafka.topics", id="bad-topic-name"),
    pytest.param(
        ["--redis-url", "redis://:pw@127.0.0.1:notaport/0"],
        "redis.url",
        id="bad-redis-port",
    ),
    pytest.param(
        ["--set", "kafka.properties.'security.protocol'=BOGUS"],
        "kafka.properties",
        id="librdkafka-refuses-a-property",
    ),
]


@pytest.mark.parametrize(("args", "field"), BAD_CONFIGS)
def test_bad_configuration_exits_2_naming_the_field_before_connecting(
    args: list[str], field: str, listeners: tuple[Listener, Listener]
) -> None:
    """Each bad configuration is refused with its field named and exit status 2,
    and nothing connects to the broker or Redis."""
    kafka, redis = listeners
    base = [
        "run",
        "--bootstrap-servers",
        f"127.0.0.1:{kafka.port}",
        "--redis-url",
        f"redis://127.0.0.1:{redis.port}/0",
        "--topic",
        "events",
        "--handler",
        "tests.unit.test_tracker:events",
    ]
    result = CliRunner().invoke(main, base + args)
    assert result.exit_code == 2, result.output
    assert field in result.output
    assert (kafka.connections, redis.connections) == (0, 0)


def test_bad_toml_file_is_refused_with_exit_2(tmp_path: Path) -> None:
    """A configuration file that is not TOML names the file and exits 2."""
    path = tmp_path / "bad.toml"
    path.write_text("[kafka\nbootstrap_servers = 1")
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert result.exit_code == 2
    assert "bad.toml" in result.output


def test_wrong_type_in_file_names_the_field(tmp_path: Path) -> None:
    """A string where a number belongs, in the file, names section and field."""
    path = tmp_path / "c.toml"
    path.write_text(
        '[kafka]\ntopics = ["a"]\n[commit]\nevery_seconds = "soon"\n'
        '[handler]\nname = "tests.unit.test_tracker:events"\n'
    )
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert result.exit_code == 2
    assert "commit.every_seconds" in result.output


def test_environment_overrides_file_and_flag_overrides_environment(
    tmp_path: Path,
) -> None:
    """File < STREAMCP_SECTION__FIELD < CLI flag, for the same field."""
    from streamcp.config import load_config

    path = tmp_path / "c.toml"
    path.write_text(
        '[kafka]\ntopics = ["a"]\ngroup_id = "from-file"\n[handler]\nname = "x:y"\n'
    )
    env = {"STREAMCP_KAFKA__GROUP_ID": "from-env", "STREAMCP_COMMIT__EVERY_EVENTS": "7"}
    config = load_config(path, environ=env)
    assert (config.kafka.group_id, config.commit.every_events) == ("from-env", 7)
    config = load_config(path, environ=env, overrides={"kafka.group_id": "from-flag"})
    assert config.kafka.group_id == "from-flag"


def test_real_process_exits_2_on_bad_configuration() -> None:
    """The installed console entry point, not only the click runner, exits 2."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamcp.cli",
            "run",
            "--topic",
            "a",
            "--handler",
            "x:y",
            "--set",
            "commit.every_events=0",
            "--set",
            "commit.every_seconds=0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "commit.every_events" in proc.stderr
