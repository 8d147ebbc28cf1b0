"""Configuration: one TOML file, then environment variables, then CLI flags.

Every section is a frozen, keyword-only dataclass validated on construction;
a bad value raises :class:`~streamcp.errors.ConfigError` naming the field
(``commit.every_events``), and the CLI turns that into exit status 2 before
anything connects.

Environment variables override the file: ``STREAMCP_<SECTION>__<FIELD>``,
for example ``STREAMCP_KAFKA__BOOTSTRAP_SERVERS`` or
``STREAMCP_COMMIT__EVERY_SECONDS``. Values are parsed as TOML values when
they parse (``10``, ``true``, ``["a", "b"]``) and taken as strings otherwise.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from streamcp.errors import ConfigError
from streamcp.redis_client import parse_redis_url

StartPolicy = Literal["earliest", "latest", "fail"]
Ordering = Literal["partition", "key"]
StoreLossPolicy = Literal["fail", "recover_from_kafka"]
Execution = Literal["auto", "inline", "threads"]

ENV_PREFIX = "STREAMCP_"
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")

# librdkafka properties streamcp owns: a user setting them would break the
# only-after-success rule or the consumer loop's bookkeeping.
_FORBIDDEN_TRUE = ("enable.auto.commit", "enable.auto.offset.store")
_OWNED_PROPERTIES = (
    "group.id",
    "bootstrap.servers",
    "on_commit",
    "enable.partition.eof",
)
_SECRET_WORDS = ("password", "secret", "sasl.jaas", "key.pem", "token")


def is_secret(name: str) -> bool:
    """True when a property name holds a credential that must not be shown."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(field_name, message)


def _check_type(value: Any, kinds: tuple[type, ...], name: str) -> None:
    # bool is an int to Python, never to a configuration file.
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(name, f"expected {_kind_names(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(name, f"expected {_kind_names(kinds)}, got {value!r}")


def _kind_names(kinds: tuple[type, ...]) -> str:
    return " or ".join(kind.__name__ for kind in kinds)


@dataclass(frozen=True, kw_only=True)
class KafkaConfig:
    """How to reach Kafka and what to consume."""

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "streamcp"
    topics: tuple[str, ...] = ()
    topic_pattern: str | None = None
    assignor: Literal["range", "roundrobin", "cooperative-sticky"] = "range"
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    session_timeout_ms: int = 10_000
    max_poll_interval_ms: int = 300_000
    group_instance_id: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_type(self.bootstrap_servers, (str,), "kafka.bootstrap_servers")
        _require(bool(self.bootstrap_servers), "kafka.bootstrap_servers", "is empty")
        _check_type(self.group_id, (str,), "kafka.group_id")
        _require(bool(self.group_id), "kafka.group_id", "is empty")
        _require(
            not set("{}") & set(self.group_id),
            "kafka.group_id",
            f"may not contain '{{' or '}}', got {self.group_id!r}",
        )
        for topic in self.topics:
            _check_type(topic, (str,), "kafka.topics")
            _require(
                bool(TOPIC_NAME.fullmatch(topic)) and topic not in (".", ".."),
                "kafka.topics",
                f"{topic!r} is not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)",
            )
        _require(
            bool(self.topics) != (self.topic_pattern is not None),
            "kafka.topics",
            "set exactly one of kafka.topics and kafka.topic_pattern",
        )
        if self.topic_pattern is not None:
            _check_pattern(self.topic_pattern)
        _check_choice(
            self.assignor,
            ("range", "roundrobin", "cooperative-sticky"),
            "kafka.assignor",
        )
        _check_choice(
            self.isolation_level,
            ("read_committed", "read_uncommitted"),
            "kafka.isolation_level",
        )
        _check_positive_int(self.session_timeout_ms, "kafka.session_timeout_ms")
        _check_positive_int(self.max_poll_interval_ms, "kafka.max_poll_interval_ms")
        _check_properties(self.properties)

    def subscription(self) -> list[str]:
        """The list ``Consumer.subscribe`` takes (a pattern starts with ``^``)."""
        if self.topic_pattern is not None:
            return [self.topic_pattern]
        return list(self.topics)


def _check_pattern(pattern: str) -> None:
    _check_type(pattern, (str,), "kafka.topic_pattern")
    _require(
        pattern.startswith("^"),
        "kafka.topic_pattern",
        f"must start with '^' (librdkafka's mark of a regex), got {pattern!r}",
    )
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError("kafka.topic_pattern", f"invalid regex: {exc}") from exc


def _check_properties(properties: Mapping[str, Any]) -> None:
    for name, value in properties.items():
        where = f"kafka.properties.{name!r}"
        _require(
            isinstance(value, str | int | float | bool),
            where,
            "must be a string, number or boolean",
        )
        if name in _FORBIDDEN_TRUE:
            _require(
                str(value).lower() in ("false", "0"),
                where,
                "must stay false: streamcp commits checkpoints only after "
                "the handler succeeded",
            )
        _require(
            name not in _OWNED_PROPERTIES,
            where,
            "is set by streamcp; use the kafka section's own field",
        )


# One server, a Redis Cluster or a primary found through Sentinel (see
# streamcp.redis_client for the URL forms).
REDIS_URL_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
)


@dataclass(frozen=True, kw_only=True)
class RedisConfig:
    """Where the checkpoint store lives.

    ``url`` is ``redis://host:port/db`` for one server,
    ``redis+cluster://host:port[,host:port...]`` for a Redis Cluster, or
    ``redis+sentinel://host:port[,host:port...]/<primary name>[/db]`` for a
    primary that Sentinel watches (``rediss`` for TLS in each).
    """

    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "streamcp"
    socket_timeout_s: float = 2.0
    history_max_entries: int = 100_000

    def __post_init__(self) -> None:
        _check_type(self.url, (str,), "redis.url")
        _require(
            self.url.startswith(REDIS_URL_SCHEMES),
            "redis.url",
            f"must start with {', '.join(REDIS_URL_SCHEMES)}, got "
            f"{redact_url(self.url)!r}",
        )
        try:
            parse_redis_url(self.url)
        except ValueError as exc:
            raise ConfigError("redis.url", f"{exc}: {redact_url(self.url)!r}") from exc
        _check_type(self.key_prefix, (str,), "redis.key_prefix")
        _require(
            bool(re.fullmatch(r"[A-Za-z0-9_.-]+", self.key_prefix)),
            "redis.key_prefix",
            f"may hold only letters, digits, '_', '.', '-', got {self.key_prefix!r}",
        )
        _check_positive_number(self.socket_timeout_s, "redis.socket_timeout_s")
        _check_positive_int(self.history_max_entries, "redis.history_max_entries")


@dataclass(frozen=True, kw_only=True)
class CommitConfig:
    """The commit policy: every N events and/or every T seconds.

    Either may be ``0`` to turn it off, not both. Commits also happen on
    revocation and on graceful shutdown, whatever these say.
    """

    every_events: int = 1000
    every_seconds: float = 5.0
    mirror_to_kafka: bool = True

    def __post_init__(self) -> None:
        _check_type(self.every_events, (int,), "commit.every_events")
        _require(
            self.every_events >= 0,
            "commit.every_events",
            f"must be 0 (off) or positive, got {self.every_events!r}",
        )
        _check_type(self.every_seconds, (int, float), "commit.every_seconds")
        _require(
            self.every_seconds >= 0 and math.isfinite(self.every_seconds),
            "commit.every_seconds",
            f"must be 0 (off) or a positive finite number, got {self.every_seconds!r}",
        )
        _require(
            self.every_events > 0 or self.every_seconds > 0,
            "commit.every_events",
            "and commit.every_seconds are both 0: set at least one",
        )
        _check_type(self.mirror_to_kafka, (bool,), "commit.mirror_to_kafka")


@dataclass(frozen=True, kw_only=True)
class ConsumerConfig:
    """How the loop batches, bounds and drains work."""

    batch_size: int = 500
    poll_timeout_s: float = 0.1
    max_in_flight_events: int = 100_000
    max_in_flight_bytes: int = 64 * 1024 * 1024
    drain_timeout_s: float = 10.0
    start_policy: StartPolicy = "earliest"
    ordering: Ordering = "partition"
    concurrency: int = 1
    # Where handlers run: "inline" on the loop's own thread (the fastest:
    # no hand-over between threads), "threads" on ``concurrency`` worker
    # threads, "auto" inline unless concurrency > 1 or a handler sets
    # timeout_s (a timeout can only be enforced off the loop's thread).
    execution: Execution = "auto"
    dead_letter_timeout_s: float = 30.0
    # What to do when Redis holds no checkpoint for a partition that Kafka's
    # mirrored group offsets show was committed before (the store lost data).
    on_store_loss: StoreLossPolicy = "fail"

    def __post_init__(self) -> None:
        _check_positive_int(self.batch_size, "consumer.batch_size")
        _check_positive_number(self.poll_timeout_s, "consumer.poll_timeout_s")
        _check_positive_int(self.max_in_flight_events, "consumer.max_in_flight_events")
        _check_positive_int(self.max_in_flight_bytes, "consumer.max_in_flight_bytes")
        _check_positive_number(self.drain_timeout_s, "consumer.drain_timeout_s")
        _check_choice(
            self.start_policy, ("earliest", "latest", "fail"), "consumer.start_policy"
        )
        _check_choice(self.ordering, ("partition", "key"), "consumer.ordering")
        _check_positive_int(self.concurrency, "consumer.concurrency")
        _check_choice(
            self.execution, ("auto", "inline", "threads"), "consumer.execution"
        )
        if self.execution == "inline" and self.concurrency > 1:
            raise ConfigError(
                "consumer.execution",
                '"inline" runs handlers on one thread; '
                f"concurrency is {self.concurrency}",
            )
        _check_positive_number(
            self.dead_letter_timeout_s, "consumer.dead_letter_timeout_s"
        )
        _check_choice(
            self.on_store_loss, ("fail", "recover_from_kafka"), "consumer.on_store_loss"
        )


POLICY_FIELDS = (
    "retry_attempts",
    "retry_backoff_s",
    "retry_max_backoff_s",
    "on_failure",
    "dead_letter_topic",
    "timeout_s",
    "key_codec",
    "value_codec",
    "tombstones",
)


@dataclass(frozen=True, kw_only=True)
class HandlerConfig:
    """Which handler to load (entry point name or ``module:attribute``).

    ``policy`` holds the failure-handling fields that were set (see
    :mod:`streamcp.failures`); unset ones fall back to what the handler
    class declares, then to the defaults.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    policy: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_type(self.name, (str,), "handler.name")
        _require(bool(self.name), "handler.name", "is empty")


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"

    def __post_init__(self) -> None:
        _check_choice(self.level, ("debug", "info", "warning", "error"), "log.level")
        _check_choice(self.format, ("auto", "json", "console"), "log.format")


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """The HTTP endpoint for ``/metrics``, ``/healthz`` and ``/readyz``.

    ``address`` is ``host:port``; port 0 picks a free one (logged as
    ``metrics.listening``). ``/healthz`` fails when the polling loop has not
    iterated for ``liveness_timeout_s``.
    """

    enabled: bool = True
    address: str = "127.0.0.1:9400"
    liveness_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        _check_type(self.enabled, (bool,), "metrics.enabled")
        _check_type(self.address, (str,), "metrics.address")
        split_address(self.address)
        _check_positive_number(self.liveness_timeout_s, "metrics.liveness_timeout_s")


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port`` or ``[v6 host]:port``."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    _require(
        bool(sep and host) and port.isdigit() and int(port) <= 65535,
        "metrics.address",
        f"expected host:port, got {address!r}",
    )
    return host, int(port)


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration of one service instance."""

    kafka: KafkaConfig
    redis: RedisConfig = field(default_factory=RedisConfig)
    commit: CommitConfig = field(default_factory=CommitConfig)
    consumer: ConsumerConfig = field(default_factory=ConsumerConfig)
    handler: HandlerConfig | None = None
    handlers: Mapping[str, HandlerConfig] = field(default_factory=dict)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        _require(
            self.handler is not None or bool(self.handlers),
            "handler.name",
            "no handler configured: set [handler] name, or [handlers.<topic>]",
        )
        self._check_timeouts()

    def _check_timeouts(self) -> None:
        # A revocation waits up to the drain timeout inside the rebalance
        # callback, where the consumer cannot poll: past max.poll.interval.ms
        # the group would evict it.
        poll_ms = self.kafka.max_poll_interval_ms
        _require(
            self.kafka.session_timeout_ms <= poll_ms,
            "kafka.max_poll_interval_ms",
            f"must be at least kafka.session_timeout_ms "
            f"({self.kafka.session_timeout_ms}), got {poll_ms}",
        )
        _require(
            self.consumer.drain_timeout_s * 1000 < poll_ms,
            "consumer.drain_timeout_s",
            f"must be shorter than kafka.max_poll_interval_ms ({poll_ms} ms), got "
            f"{self.consumer.drain_timeout_s!r}",
        )
        named = [("handler", self.handler)] + [
            (f"handlers.{topic}", h) for topic, h in self.handlers.items()
        ]
        for where, handler in named:
            timeout = handler.policy.get("timeout_s") if handler else None
            if timeout is None or not isinstance(timeout, int | float):
                continue
            _require(
                timeout * 1000 < poll_ms,
                f"{where}.timeout_s",
                f"must be shorter than kafka.max_poll_interval_ms ({poll_ms} ms): "
                f"a call revoked mid-way is waited for inside the rebalance, "
                f"got {timeout!r}",
            )


def _check_choice(value: Any, choices: tuple[str, ...], name: str) -> None:
    _require(
        value in choices, name, f"must be one of {', '.join(choices)}, got {value!r}"
    )


# No count or size streamcp takes is anywhere near this; a larger value is a
# typo, and librdkafka and Redis would refuse it later with less clarity.
MAX_INT = 2**31 - 1


def _check_positive_int(value: Any, name: str) -> None:
    _check_type(value, (int,), name)
    _require(
        0 < value <= MAX_INT,
        name,
        f"must be positive and at most {MAX_INT}, got {value!r}",
    )


def _check_positive_number(value: Any, name: str) -> None:
    _check_type(value, (int, float), name)
    _require(
        value > 0 and math.isfinite(value),
        name,
        f"must be a positive finite number, got {value!r}",
    )


_SECTIONS: dict[str, type[Any]] = {
    "kafka": KafkaConfig,
    "redis": RedisConfig,
    "commit": CommitConfig,
    "consumer": ConsumerConfig,
    "log": LogConfig,
    "metrics": MetricsConfig,
}


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read ``path`` (TOML), apply environment variables, then ``overrides``.

    ``overrides`` maps dotted names (``kafka.group_id``) to values; the CLI
    builds it from its flags. Raises :class:`ConfigError` for anything
    invalid, before any connection is made.
    """
    raw = _read_file(path) if path is not None else {}
    env = os.environ if environ is None else environ
    for dotted, value in _env_overrides(env).items():
        _set_dotted(raw, dotted, value)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return build_config(raw)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError as exc:
        raise ConfigError("--config", f"no such file: {str(path)!r}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            "--config", f"{str(path)!r} is not valid TOML: {exc}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "--config", f"{str(path)!r} is not UTF-8 text: {exc}"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            "--config", f"cannot read {str(path)!r}: {exc.strerror or exc}"
        ) from exc


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        section = dotted.split(".")[0]
        if section not in (*_SECTIONS, "handler", "handlers"):
            raise ConfigError(
                name,
                f"unknown section {section!r}; expected one of "
                f"{', '.join(sorted((*_SECTIONS, 'handler')))}",
            )
        found[dotted] = parse_value(text)
    return found


def parse_value(text: str) -> Any:
    """A TOML value if ``text`` is one (``10``, ``true``), else ``text``."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    if dotted.startswith("kafka.properties."):
        # librdkafka property names hold dots themselves: take the rest whole.
        parents = ["kafka", "properties"]
        leaf = dotted[len("kafka.properties.") :].strip("'\"")
    else:
        *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(dotted, f"{part!r} is not a table")
        node = child
    node[leaf] = value


def build_config(raw: Mapping[str, Any]) -> Config:
    """A validated :class:`Config` from parsed TOML tables."""
    known = {*_SECTIONS, "handler", "handlers"}
    for name in raw:
        _require(
            name in known,
            str(name),
            f"unknown section; expected one of {', '.join(sorted(known))}",
        )
    sections = {
        name: _build_section(cls, name, raw.get(name, {}))
        for name, cls in _SECTIONS.items()
    }
    return Config(
        **sections,
        handler=_build_handler("handler", raw["handler"]) if "handler" in raw else None,
        handlers={
            topic: _build_handler(f"handlers.{topic}", table)
            for topic, table in _table(raw.get("handlers", {}), "handlers").items()
        },
    )


def _table(value: Any, name: str) -> Mapping[str, Any]:
    _require(isinstance(value, Mapping), name, f"must be a table, got {value!r}")
    result: Mapping[str, Any] = value
    return result


def _build_section(cls: type[Any], name: str, value: Any) -> Any:
    table = dict(_table(value, name))
    names = {f.name for f in fields(cls)}
    for key in table:
        _require(
            key in names,
            f"{name}.{key}",
            f"unknown field; expected one of {', '.join(sorted(names))}",
        )
    if "topics" in table:
        topics = table["topics"]
        if isinstance(topics, str):
            topics = [t for t in topics.split(",") if t]
        _check_type(topics, (list, tuple), f"{name}.topics")
        table["topics"] = tuple(topics)
    if "properties" in table:
        table["properties"] = dict(_table(table["properties"], f"{name}.properties"))
    try:
        return cls(**table)
    except TypeError as exc:  # a wrong type that compares before we check it
        raise ConfigError(name, str(exc)) from exc


def _build_handler(name: str, value: Any) -> HandlerConfig:
    table = dict(_table(value, name))
    allowed = ("name", "options", *POLICY_FIELDS)
    for key in table:
        _require(
            key in allowed,
            f"{name}.{key}",
            f"unknown field; expected one of {', '.join(allowed)}",
        )
    _require("name" in table, f"{name}.name", "is missing")
    options = _table(table.get("options", {}), f"{name}.options")
    policy = {key: table[key] for key in POLICY_FIELDS if key in table}
    try:
        return HandlerConfig(name=table["name"], options=dict(options), policy=policy)
    except ConfigError as exc:
        raise ConfigError(f"{name}.name", exc.message) from exc
