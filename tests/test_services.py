"""The local services the tests, the demo and the handler test kit run on."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamcp.services import (
    KafkaService,
    RedisService,
    ServiceNotControllableError,
    ServiceUnavailableError,
    free_port,
    produce_records,
    provide_kafka,
    provide_redis,
    running_pids,
)

CONFTEST = Path(__file__).with_name("conftest.py")


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def read_all(
    bootstrap: str, topic: str, count: int, timeout_s: float = 30.0
) -> list[Message]:
    """Read ``count`` records of ``topic`` through a new consumer group."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    try:
        consumer.subscribe([topic])
        got: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append(msg)
        return got
    finally:
        consumer.close()


# --------------------------------------------------------------------------
# Kafka


def test_broker_round_trip_keeps_keys_values_and_timestamps(
    kafka: KafkaService, topic_factory: Callable[..., str]
) -> None:
    """A new topic takes records (with tombstones and missing keys) and a
    consumer group reads every one back with its partition and timestamp."""
    topic = topic_factory(3)
    base = 1_700_000_000_000
    records = [
        (b"k0", b"v0", base, 0),
        (b"k1", b"v1", base + 1, 1),
        (None, b"v2", base + 2, 2),
        (b"k3", None, base + 3, 0),
        (b"k4", b"v4", base + 4, 1),
    ]
    produce_records(kafka.bootstrap_servers, topic, records)

    got = read_all(kafka.bootstrap_servers, topic, len(records))

    assert sorted(
        (m.partition(), m.key(), m.value(), m.timestamp()) for m in got
    ) == sorted(
        (partition, key, value, (TIMESTAMP_CREATE_TIME, ts))
        for key, value, ts, partition in records
    )


def test_produce_records_leaves_right_high_watermarks(
    kafka: KafkaService, topic_factory: Callable[..., str]
) -> None:
    """Records go one per batch, so each partition's high watermark is its
    record count (tansu counts a multi-record batch as one) and offsets keep
    the input order."""
    topic = topic_factory(2)
    produce_records(
        kafka.bootstrap_servers,
        topic,
        [(None, f"{i}".encode(), None, i % 2) for i in range(40)],
    )
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "w"})
    try:
        for partition in (0, 1):
            watermarks = consumer.get_watermark_offsets(
                KafkaTopicPartition(topic, partition), timeout=10
            )
            assert watermarks == (0, 20)
        consumer.assign([KafkaTopicPartition(topic, 0, 0)])
        values: list[int] = []
        while len(values) < 20:
            msg = consumer.poll(5)
            assert msg is not None and msg.error() is None
            values.append(int(msg.value() or b"-1"))
        assert values == list(range(0, 40, 2))
    finally:
        consumer.close()


def test_create_topic_refuses_an_existing_name(
    kafka: KafkaService, topic_factory: Callable[..., str]
) -> None:
    """Creating a topic whose name exists raises instead of reusing it."""
    topic = topic_factory(1)
    with pytest.raises(KafkaException):
        kafka.create_topic(topic, 1)


def test_local_broker_freezes_thaws_and_stops(
    kafka_factory: Callable[[], KafkaService],
) -> None:
    """A frozen local broker answers nothing, a thawed one answers again, and
    stop() ends its process (idempotently)."""
    broker = kafka_factory()
    assert broker.kind == "local" and not broker.is_apache_kafka
    assert broker.pid in running_pids()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    assert admin.list_topics(timeout=5).brokers

    broker.freeze()
    try:
        with pytest.raises(KafkaException):
            admin.list_topics(timeout=1)
    finally:
        broker.thaw()
    assert admin.list_topics(timeout=5).brokers

    port = int(broker.bootstrap_servers.rpartition(":")[2])
    broker.stop()
    broker.stop()
    assert broker.pid not in running_pids()
    assert not port_answers(port)


# --------------------------------------------------------------------------
# Redis


def test_redis_stop_closes_port_and_start_brings_data_back(
    redis_factory: Callable[..., RedisService],
) -> None:
    """With appendonly on, stop() really ends the server (the port closes) and
    start() serves the data written before on the same port."""
    service = redis_factory(appendonly=True)
    client = service.client()
    client.set(b"k", b"v")
    pid = service.pid

    service.stop()
    assert not port_answers(service.port)
    assert pid not in running_pids()
    service.stop()  # idempotent

    service.start()
    assert service.pid != pid
    assert service.url.endswith(f":{service.port}/0")
    assert service.client().get(b"k") == b"v"


def test_redis_without_appendonly_forgets_data_on_restart(
    redis_factory: Callable[..., RedisService],
) -> None:
    """With appendonly off (and no RDB snapshots) stop/start empties Redis."""
    service = redis_factory(appendonly=False)
    service.client().set(b"k", b"v")
    service.stop()
    assert not port_answers(service.port)
    service.start()
    assert service.client().get(b"k") is None


def test_redis_kill_keeps_acknowledged_writes_with_appendonly(
    redis_factory: Callable[..., RedisService],
) -> None:
    """appendfsync always: every acknowledged write survives a SIGKILL."""
    service = redis_factory()
    client = service.client()
    for i in range(50):
        client.set(f"k{i}".encode(), b"v")
    service.kill()
    assert not port_answers(service.port)
    service.start()
    assert service.client().dbsize() == 50


def test_redis_with_password_rejects_unauthenticated_clients(
    redis_factory: Callable[..., RedisService],
) -> None:
    """A password-protected Redis refuses clients without it and serves the
    URL (which carries the password, URL-quoted)."""
    password = 'p@ss:/w "ord"'
    service = redis_factory(password=password)
    no_retry = Retry(NoBackoff(), 0)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=service.port, retry=no_retry).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=service.port, password="wrong", retry=no_retry).ping()
    assert redis.Redis.from_url(service.url).ping()
    assert password not in service.url
    assert service.log_path is not None
    assert password not in service.log_path.read_text()


def test_redis_freeze_and_thaw(redis_factory: Callable[..., RedisService]) -> None:
    """A frozen Redis accepts no answer in time; thawed, it answers again."""
    service = redis_factory()
    client = redis.Redis.from_url(service.url, socket_timeout=0.5)
    assert client.ping()
    service.freeze()
    try:
        with pytest.raises(redis.TimeoutError):
            redis.Redis.from_url(
                service.url, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
            ).ping()
    finally:
        service.thaw()
    assert redis.Redis.from_url(service.url, socket_timeout=2).ping()


def test_redis_flushall_empties_the_server(
    redis_factory: Callable[..., RedisService],
) -> None:
    """flushall() deletes every key."""
    service = redis_factory()
    service.client().set(b"k", b"v")
    service.flushall()
    assert service.client().dbsize() == 0


# --------------------------------------------------------------------------
# where services come from


def test_env_var_kafka_address_is_honoured(
    kafka: KafkaService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An address in the named variable is used as is: kind external, no new
    process, Apache-ness from <var>_IS_APACHE, and stop() leaves it running."""
    before = running_pids()
    monkeypatch.setenv("STREAMCP_SVC_TEST_KAFKA", kafka.bootstrap_servers)
    monkeypatch.setenv("STREAMCP_SVC_TEST_KAFKA_IS_APACHE", "1")

    found = provide_kafka("STREAMCP_SVC_TEST_KAFKA", tmp_path)

    assert found.kind == "external"
    assert found.bootstrap_servers == kafka.bootstrap_servers
    assert found.is_apache_kafka
    assert found.pid is None
    assert running_pids() == before
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ServiceNotControllableError):
        found.freeze()
    found.stop()
    assert found.admin().list_topics(timeout=5).brokers

    monkeypatch.delenv("STREAMCP_SVC_TEST_KAFKA_IS_APACHE")
    assert not provide_kafka("STREAMCP_SVC_TEST_KAFKA", tmp_path).is_apache_kafka


def test_env_var_redis_url_is_honoured(
    redis_service: RedisService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A URL in the named variable is used as is: kind external, no new
    process, and it cannot be restarted or frozen from here."""
    before = running_pids()
    monkeypatch.setenv("STREAMCP_SVC_TEST_REDIS", redis_service.url)

    found = provide_redis("STREAMCP_SVC_TEST_REDIS", tmp_path)

    assert found.kind == "external"
    assert found.url == redis_service.url
    assert found.port == redis_service.port
    assert running_pids() == before
    assert list(tmp_path.iterdir()) == []
    for action in (found.start, found.kill, found.freeze, found.thaw):
        with pytest.raises(ServiceNotControllableError):
            action()
    found.stop()
    assert found.client().ping()


def test_unreachable_env_var_address_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An address nothing listens on raises ServiceUnavailableError naming
    the variable, rather than silently starting something else."""
    port = free_port()
    monkeypatch.setenv("STREAMCP_SVC_TEST_KAFKA", f"127.0.0.1:{port}")
    monkeypatch.setenv("STREAMCP_SVC_TEST_REDIS", f"redis://127.0.0.1:{port}/0")
    with pytest.raises(ServiceUnavailableError, match="STREAMCP_SVC_TEST_KAFKA"):
        provide_kafka("STREAMCP_SVC_TEST_KAFKA", tmp_path)
    with pytest.raises(ServiceUnavailableError, match="STREAMCP_SVC_TEST_REDIS"):
        provide_redis("STREAMCP_SVC_TEST_REDIS", tmp_path)


def test_generic_env_vars_are_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """KAFKA_BOOTSTRAP_SERVERS and REDIS_URL are not streamcp's: with only
    those set, the services are provided as if they were absent."""
    port = free_port()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.delenv("STREAMCP_SVC_TEST_UNSET", raising=False)

    broker = provide_kafka("STREAMCP_SVC_TEST_UNSET", tmp_path / "k")
    server = provide_redis("STREAMCP_SVC_TEST_UNSET", tmp_path / "r")
    try:
        assert broker.kind != "external"
        assert server.kind != "external"
        assert str(port) not in broker.bootstrap_servers
        assert server.port != port
        assert server.client().ping()
    finally:
        broker.stop()
        server.stop()


# --------------------------------------------------------------------------
# the conftest's own rules


def test_uncaught_thread_exception_fails_the_test(pytester: pytest.Pytester) -> None:
    """A test during which a thread dies of an uncaught exception fails."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        test_inner="""
        import threading

        def test_thread_dies():
            def boom():
                raise RuntimeError("swallowed in a worker")
            t = threading.Thread(target=boom, name="worker-1")
            t.start()
            t.join()

        def test_quiet():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*uncaught exception(s) in threads*", "*in thread worker-1*"]
    )
    result.stdout.fnmatch_lines(["*RuntimeError: swallowed in a worker*"])


def test_apache_kafka_tests_are_deselected_and_listed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Apache Kafka, apache_kafka tests are deselected (not skipped)
    and named under their own heading; with it, they are selected."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    apache_kafka: needs Apache Kafka\n")
    pytester.makepyfile(
        test_inner="""
        import pytest

        @pytest.mark.apache_kafka
        def test_needs_apache():
            pass

        def test_plain():
            pass
        """
    )
    # An external broker that is not Apache Kafka (never contacted here).
    monkeypatch.setenv("STREAMCP_TEST_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    monkeypatch.delenv("STREAMCP_TEST_KAFKA_BOOTSTRAP_IS_APACHE", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, deselected=1)
    assert "skipped" not in result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*not run: need Apache Kafka (the local broker gets this wrong)*",
            "*test_inner.py::test_needs_apache",
        ]
    )

    monkeypatch.setenv("STREAMCP_TEST_KAFKA_BOOTSTRAP_IS_APACHE", "1")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--collect-only", "-q"
    )
    result.stdout.fnmatch_lines(["*test_inner.py::test_needs_apache"])
    assert "deselected" not in result.stdout.str()


def test_unprovidable_service_fails_instead_of_skipping(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In CI a test whose Kafka or Redis cannot be provided errors out, with
    a message naming the variable; it is never skipped."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        test_inner="""
        def test_needs_kafka(kafka):
            pass

        def test_needs_redis(redis_service):
            pass
        """
    )
    port = free_port()
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("STREAMCP_TEST_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    monkeypatch.setenv("STREAMCP_TEST_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*cannot provide a Kafka broker in CI*STREAMCP_TEST_KAFKA_BOOTSTRAP*",
            "*cannot provide a Redis in CI*STREAMCP_TEST_REDIS_URL*",
        ]
    )
