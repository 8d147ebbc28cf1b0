"""A redis-py client for a Redis URL: one server, a Cluster, or Sentinel.

URL forms (``rediss`` for TLS in each)::

    redis://[[user]:password@]host[:port][/db]         one server (or unix://)
    redis+cluster://[[user]:password@]host[:port][,host[:port]...]
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/name[/db]

A Cluster URL lists one or more nodes to discover the cluster from (port
6379 by default). A Sentinel URL lists the Sentinels (port 26379 by default)
and names the monitored primary; the client asks them where the primary is
and follows failovers. The user and password are the primary's (or the
cluster nodes'); a Sentinel that needs its own password takes it from the
``sentinel_password`` query parameter.

The checkpoint store needs nothing beyond this: its scripts name every key
in ``KEYS`` and the keys of one namespace share one hash tag, so on a
Cluster each call goes to one node.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

RedisClient = redis.Redis | redis.cluster.RedisCluster
Topology = Literal["server", "cluster", "sentinel"]

_DEFAULT_PORTS = {"cluster": 6379, "sentinel": 26379}


@dataclass(frozen=True)
class RedisUrl:
    """The parts of a ``redis+cluster://`` or ``redis+sentinel://`` URL.

    For a plain ``redis://`` URL only ``topology`` (``server``) and ``url``
    are filled in: redis-py reads the rest itself. Credentials stay out of
    the repr.
    """

    url: str = field(repr=False)
    topology: Topology
    tls: bool = False
    addresses: tuple[tuple[str, int], ...] = ()
    auth: dict[str, Any] = field(default_factory=dict, repr=False)
    primary_name: str = ""
    db: int = 0
    sentinel_password: str | None = field(default=None, repr=False)


def parse_redis_url(url: str) -> RedisUrl:
    """Read ``url``; raises ``ValueError`` naming what is wrong with it.

    Checks only the form (no connection): the scheme, ``host[:port]`` of
    every address, and for Sentinel the primary's name and the database.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("expected a URL such as redis://host:6379/0")
    base, plus, topology = scheme.partition("+")
    if not plus:
        if base != "unix":
            # Reading the port checks it, and the brackets of an IPv6 host.
            _ = urlsplit(url).port
        return RedisUrl(url=url, topology="server")
    if base not in ("redis", "rediss") or topology not in _DEFAULT_PORTS:
        raise ValueError(f"unknown scheme {scheme + '://'!r}")
    rest, _, query_text = rest.partition("?")
    netloc, _, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    query = parse_qs(query_text)
    parsed = RedisUrl(
        url=url,
        topology="cluster" if topology == "cluster" else "sentinel",
        tls=base == "rediss",
        addresses=_addresses(hosts, _DEFAULT_PORTS[topology]),
        auth=_auth(credentials) if at else {},
        sentinel_password=query["sentinel_password"][-1]
        if "sentinel_password" in query
        else None,
    )
    if parsed.topology == "cluster":
        return parsed
    name, _, db = path.strip("/").partition("/")
    if not name:
        raise ValueError(
            "a redis+sentinel:// URL names the primary after the "
            "addresses: redis+sentinel://host:26379/<name>[/db]"
        )
    if db and not db.isdigit():
        raise ValueError(f"the database must be a number, got {db!r}")
    return replace(parsed, primary_name=unquote(name), db=int(db or 0))


def redis_client(
    url: str, *, socket_timeout_s: float, health_check_interval_s: int = 30
) -> RedisClient:
    """A client for ``url``; connects lazily, on its first command.

    The client never retries a command itself (the caller decides when to
    try again, without blocking its loop). Raises ``ValueError`` for a URL
    it cannot read.
    """
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
        "health_check_interval": health_check_interval_s,
        "retry": Retry(NoBackoff(), 0),
    }
    parsed = parse_redis_url(url)
    if parsed.topology == "cluster":
        nodes = [
            redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            for host, port in parsed.addresses
        ]
        return redis.cluster.RedisCluster(
            startup_nodes=nodes, ssl=parsed.tls, **parsed.auth, **options
        )
    if parsed.topology == "sentinel":
        return _primary(parsed, options)
    return redis.Redis.from_url(url, **options)


def _primary(parsed: RedisUrl, options: dict[str, Any]) -> redis.Redis:
    sentinel_options: dict[str, Any] = {
        key: value for key, value in options.items() if key.startswith("socket_")
    }
    if parsed.sentinel_password is not None:
        sentinel_options["password"] = parsed.sentinel_password
    if parsed.tls:
        sentinel_options["ssl"] = True
    sentinel = redis.sentinel.Sentinel(
        list(parsed.addresses), sentinel_kwargs=sentinel_options, **options
    )
    client: redis.Redis = sentinel.master_for(
        parsed.primary_name, db=parsed.db, ssl=parsed.tls, **parsed.auth
    )
    return client


def _auth(credentials: str) -> dict[str, Any]:
    user, colon, password = credentials.partition(":")
    auth: dict[str, Any] = {"username": unquote(user)} if user else {}
    if colon:
        auth["password"] = unquote(password)
    return auth


def _addresses(hosts: str, default_port: int) -> tuple[tuple[str, int], ...]:
    found = []
    for item in hosts.split(","):
        address = item.strip()
        if address.startswith("["):
            host, _, port = address[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = address.partition(":")
        if not host or (port and not port.isdigit()):
            raise ValueError(f"expected host[:port], got {address!r}")
        found.append((host, int(port) if port else default_port))
    return tuple(found)
