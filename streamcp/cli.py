"""The ``streamcp`` command line.

Exit status: 0 on success, 1 when the service stopped on a failure, 2 for
bad configuration or usage (before anything connects).
"""

from __future__ import annotations

import functools
import gc
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from streamcp.cli_common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    answering,
    format_table,
    open_checkpoint_store,
    stop_on_signals,
)
from streamcp.config import Config, load_config, parse_value, redact_url
from streamcp.errors import ConfigError, StreamcpError
from streamcp.events import TopicPartition
from streamcp.logs import configure_logging
from streamcp.redis_store import RedisCheckpointStore
from streamcp.store import Checkpoint


def _config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(path_type=Path),
            help="TOML configuration file.",
        ),
        click.option("--bootstrap-servers", help="Kafka bootstrap servers."),
        click.option("--group", help="Consumer group id (kafka.group_id)."),
        click.option("--redis-url", help="Redis URL of the checkpoint store."),
        click.option("--key-prefix", help="Redis key prefix (redis.key_prefix)."),
        click.option(
            "--set",
            "settings",
            multiple=True,
            metavar="FIELD=VALUE",
            help="Override any field, e.g. --set commit.every_events=100.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@dataclass(frozen=True)
class ConfigArgs:
    """The values of the shared configuration options of one command."""

    path: Path | None
    bootstrap_servers: str | None
    group: str | None
    redis_url: str | None
    key_prefix: str | None
    settings: tuple[str, ...]

    def values(
        self,
    ) -> tuple[
        Path | None, str | None, str | None, str | None, str | None, tuple[str, ...]
    ]:
        """The values in the order of the options (and of ``_load``)."""
        return (
            self.path,
            self.bootstrap_servers,
            self.group,
            self.redis_url,
            self.key_prefix,
            self.settings,
        )


def _with_config_args(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the shared configuration options, passed as one ``config_args``."""

    @functools.wraps(func)
    def command(
        *,
        config_path: Path | None,
        bootstrap_servers: str | None,
        group: str | None,
        redis_url: str | None,
        key_prefix: str | None,
        settings: tuple[str, ...],
        **kw: Any,
    ) -> Any:
        args = ConfigArgs(
            config_path, bootstrap_servers, group, redis_url, key_prefix, settings
        )
        return func(config_args=args, **kw)

    return _config_options(command)


def _load(
    config_path: Path | None,
    bootstrap_servers: str | None,
    group: str | None,
    redis_url: str | None,
    key_prefix: str | None,
    settings: tuple[str, ...],
    extra: dict[str, Any] | None = None,
) -> Config:
    overrides: dict[str, Any] = dict(extra or {})
    for flag, dotted in (
        (bootstrap_servers, "kafka.bootstrap_servers"),
        (group, "kafka.group_id"),
        (redis_url, "redis.url"),
        (key_prefix, "redis.key_prefix"),
    ):
        if flag is not None:
            overrides[dotted] = flag
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep or not name:
            raise ConfigError("--set", f"expected FIELD=VALUE, got {setting!r}")
        overrides[name.strip()] = parse_value(value.strip())
    return load_config(config_path, overrides=overrides)


def _config_error(exc: ConfigError) -> NoReturn:
    click.echo(f"streamcp: configuration error: {exc}", err=True)
    sys.exit(EXIT_CONFIG)


@click.group()
@click.version_option(package_name="streamcp")
def main() -> None:
    """Consume Kafka topics with checkpoints in Redis."""


def freeze_startup_objects() -> None:
    """Take what start-up made out of the garbage collector's sight.

    Modules, configuration and clients live as long as the process. Frozen
    (``gc.freeze``), they are no longer traversed by every full collection
    that the events passing through trigger: about a tenth of the CPU per
    event at high rates (docs/benchmarks.md). The process owner calls it,
    once, just before the loop; a library embedding the service may too.
    """
    gc.collect()
    gc.freeze()


@main.command()
@_with_config_args
@click.option("--topic", "topics", multiple=True, help="Topic to consume (repeatable).")
@click.option("--handler", "handler_name", help="Handler: entry point or module:attr.")
@click.option(
    "--stop-when-caught-up",
    is_flag=True,
    help="Stop gracefully once every assigned partition is committed "
    "up to its high watermark; exit 1 if some stay paused at a failed event.",
)
@click.option(
    "--retry-paused",
    is_flag=True,
    help="Lift the pause of partitions that stopped at a failed event "
    "when they are assigned, and retry that event.",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def run(
    config_args: ConfigArgs,
    topics: tuple[str, ...],
    handler_name: str | None,
    stop_when_caught_up: bool,
    retry_paused: bool,
    log_level: str | None,
) -> None:
    """Run the consumer service until SIGTERM or SIGINT.

    Checkpoints are committed to Redis only after the handler succeeded for an
    event and every earlier one of its partition: on the commit policy, on
    revocation and on shutdown. Exit status 0 after a graceful stop, 1 after a
    handler failure (what succeeded is committed first), 2 for bad
    configuration.
    """
    from streamcp.admin import credentials_refused
    from streamcp.loop import check_handlers
    from streamcp.router import HandlerRouter
    from streamcp.service import Service
    from streamcp.source import check_properties

    extra: dict[str, Any] = {}
    if topics:
        extra["kafka.topics"] = list(topics)
    if handler_name:
        extra["handler.name"] = handler_name
    if log_level:
        extra["log.level"] = log_level
    try:
        config = _load(*config_args.values(), extra)
        router = HandlerRouter.from_config(config)
        check_properties(config.kafka, config.consumer.start_policy)
        check_handlers(config, list(router))
    except ConfigError as exc:
        _config_error(exc)
    configure_logging(config.log.level, config.log.format)
    store = open_checkpoint_store(config)
    refused = credentials_refused(store)
    if refused is not None:
        store.close()
        click.echo(
            f"streamcp: redis at {redact_url(config.redis.url)} {refused}", err=True
        )
        sys.exit(EXIT_FAILURE)
    service = Service(
        config,
        store=store,
        router=router,
        stop_when_caught_up=stop_when_caught_up,
        retry_paused=retry_paused,
    )
    stop_on_signals(service.request_stop, config.consumer.drain_timeout_s)
    freeze_startup_objects()
    status = service.run()
    store.close()
    if service.failure is not None:
        click.echo(f"streamcp: stopped: {service.failure}", err=True)
    sys.exit(status)


@main.group()
def checkpoints() -> None:
    """Inspect the checkpoints of a consumer group."""


@checkpoints.command("show")
@_with_config_args
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def checkpoints_show(
    config_args: ConfigArgs,
    as_json: bool,
) -> None:
    """Show each partition's checkpoint: the offset of the next event to process."""
    with _store_command(config_args) as (config, store):
        found = store.read(config.kafka.group_id)
    rows = [checkpoint_row(cp) for cp in found.values()]
    if as_json:
        click.echo(
            json.dumps({"group": config.kafka.group_id, "checkpoints": rows}, indent=2)
        )
        return
    click.echo(f"group {config.kafka.group_id}: {len(rows)} partition(s)")
    click.echo(
        format_table(
            rows,
            [
                "topic",
                "partition",
                "checkpoint",
                "epoch",
                "owner",
                "committed_at",
                "committed_by",
                "events",
                "paused",
            ],
        )
    )
    for row in rows:
        if row["paused"]:
            click.echo(
                f"paused: {row['topic']}[{row['partition']}] at offset "
                f"{row['paused_offset']}: {row['paused_reason']}"
            )


@checkpoints.command("resume")
@_with_config_args
@click.option("--topic", required=True, help="Topic of the paused partition.")
@click.option(
    "--partition",
    "partitions",
    type=int,
    multiple=True,
    required=True,
    help="Partition to resume (repeatable).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def checkpoints_resume(
    config_args: ConfigArgs,
    topic: str,
    partitions: tuple[int, ...],
    yes: bool,
) -> None:
    """Lift the pause of partitions stopped at a failed event.

    The partition's current owner notices within a few seconds and retries
    the failed event from the checkpoint; with no owner, the next one does.
    """
    import getpass
    import socket

    by = f"{getpass.getuser()}@{socket.gethostname()}"
    status = 0
    listed = ", ".join(str(p) for p in partitions)
    if not yes:
        click.confirm(
            f"Resume {topic} partition(s) {listed}: their owner retries the "
            f"failed event?",
            abort=True,
        )
    with _store_command(config_args) as (config, store):
        for partition in partitions:
            tp = TopicPartition(topic, partition)
            if store.unpause(config.kafka.group_id, tp, by=by):
                click.echo(f"resumed {tp}")
            else:
                click.echo(f"{tp} is not paused", err=True)
                status = EXIT_FAILURE
    sys.exit(status)


def _load_for_store(*args: Any) -> Config:
    # Inspection needs only the group and Redis; a handler is not required.
    config_path, bootstrap, group, redis_url, prefix, settings = args
    extra: dict[str, Any] = {"handler.name": "-"}
    if config_path is None:
        extra["kafka.topics"] = ["-"]
    return _load(config_path, bootstrap, group, redis_url, prefix, settings, extra)


@contextmanager
def _store_command(
    config_args: ConfigArgs,
) -> Iterator[tuple[Config, RedisCheckpointStore]]:
    """The configuration and checkpoint store of a store-only command.

    Exit 2 for bad configuration, 1 when Redis does not answer; the store
    is closed in any case.
    """
    try:
        config = _load_for_store(*config_args.values())
    except ConfigError as exc:
        _config_error(exc)
    with answering(config, open_checkpoint_store(config, history=False)) as store:
        yield config, store


def checkpoint_row(cp: Checkpoint) -> dict[str, Any]:
    return {
        "topic": cp.topic_partition.topic,
        "partition": cp.topic_partition.partition,
        "checkpoint": cp.offset,
        "epoch": cp.epoch,
        "owner": cp.owner,
        "committed_at": cp.committed_at.isoformat() if cp.committed_at else None,
        "committed_by": (
            f"{cp.committed_by_host}/{cp.committed_by_pid}/{cp.committed_by_member}"
            if cp.committed_by_host
            else ""
        ),
        "events": cp.events,
        "operator_change": cp.operator_change,
        "paused": cp.paused,
        "paused_offset": cp.paused_offset,
        "paused_reason": cp.paused_reason or None,
    }


@main.group()
def handlers() -> None:
    """Discover handler plugins."""


@handlers.command("list")
def handlers_list() -> None:
    """List every handler registered under the streamcp.handlers entry point."""
    from streamcp.handlers import discover, options_schema

    for info in discover():
        click.echo(f"{info.name}  ({info.source})")
        try:
            target = info.target.load()
        except Exception as exc:  # noqa: BLE001  # a broken plugin must not hide others
            click.echo(f"    cannot load: {type(exc).__name__}: {exc}")
            continue
        options = options_schema(target)
        if not options:
            click.echo("    no options")
        for name, kind, default in options:
            click.echo(f"    option {name}: {kind} = {default}")


@main.command("new-handler")
@click.argument("name")
@click.option(
    "--directory",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where to write the package (default: ./NAME).",
)
def new_handler(name: str, directory: Path | None) -> None:
    """Create the package of a new handler plugin NAME, with its tests."""
    from streamcp.scaffold import create_handler_package

    try:
        made = create_handler_package(name, directory)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(
        f"created handler {made.name!r} ({made.package}.handler:"
        f"{made.class_name}) in {made.directory}"
    )
    click.echo(
        f"next: pip install -e '{made.directory}[test]' && pytest {made.directory}"
    )


@main.command()
@click.option("--bootstrap-servers", help="Use this broker instead of starting one.")
@click.option("--redis-url", help="Use this Redis instead of starting one.")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=Path(".streamcp/demo"),
    show_default=True,
    help="Where local services keep their files.",
)
def demo(bootstrap_servers: str | None, redis_url: str | None, workdir: Path) -> None:
    """Run the example on real Wikimedia events, stopping and resuming midway."""
    from streamcp.demo import run_demo

    try:
        status = run_demo(
            bootstrap_servers=bootstrap_servers, redis_url=redis_url, workdir=workdir
        )
    except StreamcpError as exc:
        click.echo(f"streamcp demo: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    sys.exit(status)


# The operator commands live in their own module; they take the groups and
# the shared configuration options from here.
from streamcp.admin_cli import add_commands  # noqa: E402  # needs the groups above

add_commands(main, checkpoints, _config_options, _load_for_store)


def topic_partition_arg(text: str) -> TopicPartition:
    topic, _, partition = text.rpartition(":")
    return TopicPartition(topic, int(partition))


def _add_replay_commands() -> None:
    # They live in their own module, which builds on this one's helpers.
    from streamcp.cli_redrive import dlq
    from streamcp.cli_replay import replay, runs

    main.add_command(replay)
    main.add_command(runs)
    main.add_command(dlq)

    from streamcp.cli_local import local_services_command
    from streamcp.cli_sample import load_sample_command

    main.add_command(load_sample_command)
    main.add_command(local_services_command)


if __name__ == "__main__":
    # Run the package's own copy of this module, which has every command.
    from streamcp.cli import main as _main

    _main()
else:
    _add_replay_commands()
