"""The checkpoint store on a Redis Cluster and behind Sentinel: URLs, slots,
failover."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from streamcp.cli import main
from streamcp.errors import StoreUnavailable
from streamcp.events import TopicPartition
from streamcp.redis_client import parse_redis_url
from streamcp.redis_store import RedisCheckpointStore
from streamcp.store import CommitRequest, Owner
from tests.store.topologies import (
    MASTER_NAME,
    LocalCluster,
    LocalSentinel,
    start_sentinel,
    wait_until_failover_possible,
)

A = TopicPartition("orders", 0)
B = TopicPartition("payments", 7)
ME = Owner(instance_id="x", host="host-x", pid=100, member_id="m-x")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("redis://h:6379/0", {"topology": "server"}, id="server"),
        pytest.param(
            "redis+cluster://a,b:7001",
            {"topology": "cluster", "addresses": (("a", 6379), ("b", 7001))},
            id="cluster",
        ),
        pytest.param(
            "rediss+cluster://:pw@a:7000",
            {"topology": "cluster", "tls": True, "auth": {"password": "pw"}},
            id="cluster-tls-password",
        ),
        pytest.param(
            "redis+sentinel://s1,s2:5000/main",
            {
                "topology": "sentinel",
                "primary_name": "main",
                "db": 0,
                "addresses": (("s1", 26379), ("s2", 5000)),
            },
            id="sentinel",
        ),
        pytest.param(
            "redis+sentinel://u:p%40w@[::1]:5/main/3?sentinel_password=s",
            {
                "auth": {"username": "u", "password": "p@w"},
                "db": 3,
                "addresses": (("::1", 5),),
                "sentinel_password": "s",
            },
            id="sentinel-auth-ipv6-db",
        ),
    ],
)
def test_redis_url_is_read_into_its_parts(url: str, expected: dict[str, Any]) -> None:
    """Cluster and Sentinel URLs give their topology, addresses (with default
    ports), credentials, primary name and database."""
    parsed = parse_redis_url(url)
    assert {key: getattr(parsed, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("redis+sentinel://s1:26379", "names the primary", id="no-name"),
        pytest.param("redis+sentinel://s1/main/x", "must be a number", id="bad-db"),
        pytest.param("redis+cluster://a:b", "expected host[:port]", id="bad-port"),
        pytest.param("redis+mesh://a", "must start with", id="bad-scheme"),
    ],
)
def test_malformed_redis_url_is_a_configuration_error_with_exit_2(
    url: str, message: str
) -> None:
    """A URL the store cannot read stops the CLI with status 2 before anything
    connects, and the message says what is wrong."""
    result = CliRunner().invoke(
        main, ["checkpoints", "show", "--group", "g", "--redis-url", url]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_sentinel_url_repr_hides_the_credentials() -> None:
    """The parsed URL's repr shows neither password."""
    parsed = parse_redis_url(
        "redis+sentinel://u:secret1@s1/main?sentinel_password=secret2"
    )
    assert "secret" not in repr(parsed)


def _keys_of(client: redis.cluster.RedisCluster, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{prefix}:*", target_nodes="all"))


def test_one_group_lives_in_one_cluster_slot(
    redis_cluster: LocalCluster, key_prefix: str
) -> None:
    """Every key of one group (checkpoints, partition set, history) hashes to
    one slot, whatever its topics: one script call reaches them all."""
    store = RedisCheckpointStore.from_url(redis_cluster.url, key_prefix=key_prefix)
    claims = store.claim("group-a", [A, B], ME)
    store.commit(
        "group-a",
        ME,
        [CommitRequest(A, 5, claims[A].epoch), CommitRequest(B, 9, claims[B].epoch)],
    )
    client = redis_cluster.client()
    try:
        keys = _keys_of(client, key_prefix)
        assert len(keys) == 4
        assert len({client.keyslot(key) for key in keys}) == 1
    finally:
        client.close()
        store.close()


def test_checkpoints_show_reads_a_cluster_through_its_url(
    redis_cluster: LocalCluster, key_prefix: str
) -> None:
    """``streamcp checkpoints show --redis-url redis+cluster://...`` lists the
    group's checkpoints."""
    store = RedisCheckpointStore.from_url(redis_cluster.url, key_prefix=key_prefix)
    epoch = store.claim("group-b", [A], ME)[A].epoch
    store.commit("group-b", ME, [CommitRequest(A, 42, epoch)])
    store.close()
    result = CliRunner().invoke(
        main,
        [
            "checkpoints",
            "show",
            "--json",
            "--group",
            "group-b",
            "--redis-url",
            redis_cluster.url,
            "--key-prefix",
            key_prefix,
        ],
    )
    assert result.exit_code == 0, result.output
    assert '"checkpoint": 42' in result.output


def _eventually(action: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """``action()`` once it stops raising StoreUnavailable."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return action()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_store_behind_sentinel_follows_a_failover_with_replicated_commits(
    tmp_path: Path, key_prefix: str
) -> None:
    """After Sentinel promotes the replica, the store reaches the new primary
    (a call or two may raise StoreUnavailable meanwhile), a checkpoint that
    reached the replica before the failover is there, and its owner goes on
    committing."""
    group: LocalSentinel = start_sentinel(tmp_path)
    store = RedisCheckpointStore.from_url(group.url, key_prefix=key_prefix)
    sentinel = redis.Redis(host="127.0.0.1", port=group.sentinel_port)
    primary = redis.Redis(host="127.0.0.1", port=group.ports[0])
    replica = group.ports[1]
    try:
        epoch = store.claim("group-c", [A], ME)[A].epoch
        store.commit("group-c", ME, [CommitRequest(A, 10, epoch)])
        assert primary.execute_command("WAIT", 1, 5000) == 1

        wait_until_failover_possible(group)
        sentinel.execute_command("SENTINEL FAILOVER", MASTER_NAME)
        deadline = time.monotonic() + 30
        while sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)[1] != replica:
            assert time.monotonic() < deadline, "no failover within 30 s"
            time.sleep(0.2)

        assert _eventually(
            lambda: store.commit("group-c", ME, [CommitRequest(A, 20, epoch)])
        ).accepted == (A,)
        assert store.read("group-c")[A].offset == 20
        assert [e.offset for e in store.history("group-c") if e.kind == "commit"] == [
            10,
            20,
        ]
    finally:
        sentinel.close()
        primary.close()
        store.close()
        group.stop()
