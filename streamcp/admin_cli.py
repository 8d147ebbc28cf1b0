"""The operator commands: ``streamcp lag`` and ``streamcp checkpoints ...``.

Each takes the same configuration options as ``streamcp run`` (only the
group, Kafka and Redis matter). Exit status: 0 on success (also for a
``--dry-run``), 1 when Kafka or Redis failed or a change was refused or
not confirmed, 2 for bad configuration or usage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from streamcp.admin import (
    Change,
    KafkaUnavailable,
    KafkaView,
    ResetTarget,
    apply_changes,
    export_document,
    lag_rows,
    operator_name,
    owned,
    plan_changes,
    read_document,
    target_partitions,
)
from streamcp.cli_common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    format_table,
    open_checkpoint_store,
    redis_unavailable,
)
from streamcp.config import Config
from streamcp.errors import ConfigError, StoreUnavailable, StreamcpError

Loader = Callable[..., Config]
Options = Callable[[Callable[..., Any]], Callable[..., Any]]

LAG_COLUMNS = [
    "topic",
    "partition",
    "checkpoint",
    "high_watermark",
    "lag",
    "checkpoint_age_s",
    "committed_by",
    "owner",
    "kafka_committed",
]
CHANGE_COLUMNS = ["topic", "partition", "checkpoint", "new_checkpoint", "owner"]
HISTORY_COLUMNS = [
    "id",
    "kind",
    "topic",
    "partition",
    "offset",
    "previous",
    "epoch",
    "owner",
    "at",
]


def _fail(message: str, status: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"streamcp: {message}", err=True)
    sys.exit(status)


class _Context:
    """Configuration, store and (on demand) Kafka view of one command."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.group = config.kafka.group_id
        self.store = open_checkpoint_store(config)
        self._view: KafkaView | None = None

    @property
    def view(self) -> KafkaView:
        if self._view is None:
            self._view = KafkaView(self.config.kafka)
        return self._view

    def topics(self) -> list[str]:
        return [t for t in self.config.kafka.topics if t != "-"]

    def close(self) -> None:
        self.store.close()
        if self._view is not None:
            self._view.close()


@contextmanager
def _opened(load: Loader, args: tuple[Any, ...]) -> Iterator[_Context]:
    try:
        config = load(*args)
    except ConfigError as exc:
        _fail(f"configuration error: {exc}", EXIT_CONFIG)
    context = _Context(config)
    try:
        yield context
    except StoreUnavailable as exc:
        redis_unavailable(config, exc)
    except KafkaUnavailable as exc:
        _fail(str(exc))
    except ConfigError as exc:  # a refused request, such as an unknown partition
        _fail(str(exc), EXIT_CONFIG)
    except StreamcpError as exc:
        _fail(str(exc))
    finally:
        context.close()


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not click.confirm(question, default=False):
        _fail("nothing changed (not confirmed; pass --yes to skip the question)")


def add_commands(
    main: click.Group, checkpoints: click.Group, options: Options, load: Loader
) -> None:
    """Register the commands on the CLI's groups.

    ``options`` adds the shared configuration options and ``load`` turns
    them into a :class:`Config` that needs no handler.
    """
    _add_lag(main, options, load)
    _add_set(checkpoints, options, load)
    _add_reset(checkpoints, options, load)
    _add_history(checkpoints, options, load)
    _add_export(checkpoints, options, load)
    _add_import(checkpoints, options, load)
    _add_delete(checkpoints, options, load)


def _add_lag(group: click.Group, options: Options, load: Loader) -> None:
    @group.command("lag")
    @options
    @click.option(
        "--topic",
        "topics",
        multiple=True,
        help="Also list every partition of this topic (repeatable).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def lag(topics: tuple[str, ...], as_json: bool, **kw: Any) -> None:
        """Per partition: checkpoint, high watermark, lag and checkpoint age.

        Lag is the high watermark minus the checkpoint in Redis. Works while
        the service runs and while it is stopped: it never joins the group.
        """
        with _opened(load, _args(kw)) as ctx:
            rows = lag_rows(ctx.store, ctx.view, ctx.group, [*ctx.topics(), *topics])
        if as_json:
            click.echo(json.dumps({"group": ctx.group, "partitions": rows}, indent=2))
            return
        total = sum(r["lag"] or 0 for r in rows)
        click.echo(f"group {ctx.group}: {len(rows)} partition(s), lag {total}")
        click.echo(format_table(rows, LAG_COLUMNS))


def _add_set(group: click.Group, options: Options, load: Loader) -> None:
    @group.command("set")
    @options
    @click.option("--topic", required=True, help="The topic whose checkpoints to set.")
    @click.option(
        "--partition",
        "partitions",
        type=int,
        multiple=True,
        help="Partition to set (repeatable; default: all of the topic).",
    )
    @click.option(
        "--offset",
        type=click.IntRange(min=0),
        help="The new checkpoint: the offset of the next event to process.",
    )
    @click.option(
        "--time",
        "at",
        metavar="ISO8601",
        help="The first offset at or after this time (offsets_for_times).",
    )
    @_change_options
    def set_(
        *,
        topic: str,
        partitions: tuple[int, ...],
        offset: int | None,
        at: str | None,
        yes: bool,
        dry_run: bool,
        **kw: Any,
    ) -> None:
        """Set checkpoints to an offset or a time; may move them backwards.

        A running owner adopts the change at its next commit of the
        partition and continues from there; its older position is refused.
        """
        if (offset is None) == (at is None):
            _fail("give exactly one of --offset and --time", EXIT_CONFIG)
        when = _parse_time(at) if at is not None else None
        with _opened(load, _args(kw)) as ctx:
            parts = target_partitions(ctx.store, ctx.view, ctx.group, topic, partitions)
            changes = plan_changes(
                ctx.store, ctx.view, ctx.group, parts, offset=offset, at=when
            )
            _change(ctx, changes, yes=yes, dry_run=dry_run)


def _add_reset(group: click.Group, options: Options, load: Loader) -> None:
    @group.command("reset")
    @options
    @click.option(
        "--topic", required=True, help="The topic whose checkpoints to reset."
    )
    @click.option(
        "--partition",
        "partitions",
        type=int,
        multiple=True,
        help="Partition to reset (repeatable; default: all of the topic).",
    )
    @click.option(
        "--to",
        "to",
        type=click.Choice(["earliest", "latest"]),
        required=True,
        help="The log's first offset, or its high watermark.",
    )
    @_change_options
    def reset(
        *,
        topic: str,
        partitions: tuple[int, ...],
        to: ResetTarget,
        yes: bool,
        dry_run: bool,
        **kw: Any,
    ) -> None:
        """Reset checkpoints to the start or the end of the log."""
        with _opened(load, _args(kw)) as ctx:
            parts = target_partitions(ctx.store, ctx.view, ctx.group, topic, partitions)
            changes = plan_changes(ctx.store, ctx.view, ctx.group, parts, to=to)
            _change(ctx, changes, yes=yes, dry_run=dry_run)


def _add_history(group: click.Group, options: Options, load: Loader) -> None:
    @group.command("history")
    @options
    @click.option(
        "--count",
        type=click.IntRange(min=0),
        default=20,
        show_default=True,
        help="How many of the latest entries (0: all).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def history(count: int, as_json: bool, **kw: Any) -> None:
        """The group's audit trail: claims, commits, releases, operator changes."""
        with _opened(load, _args(kw)) as ctx:
            entries = ctx.store.history(ctx.group, count)
        rows = [
            {
                "id": e.id,
                "kind": e.kind,
                "topic": e.topic_partition.topic,
                "partition": e.topic_partition.partition,
                "offset": e.offset,
                "previous": e.previous_offset,
                "epoch": e.epoch,
                "owner": e.owner,
                "at": e.at.isoformat(),
            }
            for e in entries
        ]
        if as_json:
            click.echo(json.dumps({"group": ctx.group, "history": rows}, indent=2))
            return
        click.echo(f"group {ctx.group}: {len(rows)} history entries")
        click.echo(format_table(rows, HISTORY_COLUMNS))


def _add_export(group: click.Group, options: Options, load: Loader) -> None:
    @group.command("export")
    @options
    @click.option(
        "--output",
        "-o",
        type=click.Path(path_type=Path),
        help="Write to this file instead of standard output.",
    )
    def export(output: Path | None, **kw: Any) -> None:
        """Write every checkpoint of the group as JSON (see ``import``)."""
        with _opened(load, _args(kw)) as ctx:
            document = export_document(ctx.store, ctx.group)
        text = json.dumps(document, indent=2) + "\n"
        if output is None:
            click.echo(text, nl=False)
            return
        output.write_text(text)
        click.echo(
            f"exported {len(document['checkpoints'])} checkpoint(s) of group "
            f"{ctx.group} to {output}",
            err=True,
        )


def _add_import(group: click.Group, options: Options, load: Loader) -> None:
    @group.command("import")
    @options
    @click.argument("source", type=click.File("r"))
    @click.option(
        "--force",
        is_flag=True,
        help="Overwrite checkpoints the group already has here.",
    )
    @_change_options
    def import_(source: Any, force: bool, yes: bool, dry_run: bool, **kw: Any) -> None:
        """Write the checkpoints of an export into the group (``-`` for stdin).

        Each partition's fields are written as exported, with the owner
        cleared. Refused when the group has checkpoints here, unless --force.
        """
        try:
            rows = read_document(json.load(source))
        except ValueError as exc:
            _fail(f"cannot import {source.name}: {exc}", EXIT_CONFIG)
        with _opened(load, _args(kw)) as ctx:
            existing = ctx.store.read(ctx.group)
            if existing and not force:
                _fail(
                    f"group {ctx.group!r} already has {len(existing)} checkpoint(s) "
                    f"here; pass --force to overwrite them"
                )
            click.echo(f"group {ctx.group}: importing {len(rows)} checkpoint(s)")
            click.echo(
                format_table(
                    [
                        {
                            "topic": tp.topic,
                            "partition": tp.partition,
                            "checkpoint": fields.get("offset"),
                            "epoch": fields.get("epoch"),
                        }
                        for tp, fields in sorted(rows.items())
                    ],
                    ["topic", "partition", "checkpoint", "epoch"],
                )
            )
            if dry_run:
                click.echo("dry run: nothing changed")
                return
            _confirm("Import these checkpoints?", yes)
            ctx.store.restore(ctx.group, rows, by=operator_name())
            click.echo(f"imported {len(rows)} checkpoint(s)")


def _add_delete(group: click.Group, options: Options, load: Loader) -> None:
    @group.command("delete")
    @options
    @click.option(
        "--force",
        is_flag=True,
        help="Delete even though a partition has a current owner.",
    )
    @_change_options
    def delete(force: bool, yes: bool, dry_run: bool, **kw: Any) -> None:
        """Delete every checkpoint and the history of a group that is gone.

        Refused while a partition has a current owner (a running or crashed
        consumer), unless --force. Kafka's mirrored group offsets stay.
        """
        with _opened(load, _args(kw)) as ctx:
            found = ctx.store.read(ctx.group)
            holders = owned(found)
            if holders and not force:
                who = ", ".join(f"{cp.topic_partition}: {cp.owner}" for cp in holders)
                _fail(
                    f"group {ctx.group!r} has partitions with a current owner "
                    f"({who}); stop it first, or pass --force"
                )
            click.echo(
                f"group {ctx.group}: deleting {len(found)} checkpoint(s) and "
                f"the history"
            )
            if dry_run:
                click.echo("dry run: nothing changed")
                return
            _confirm(f"Delete the checkpoints of group {ctx.group}?", yes)
            deleted = ctx.store.delete(ctx.group)
            click.echo(f"deleted {deleted} key(s)")


def _args(kw: dict[str, Any]) -> tuple[Any, ...]:
    return (
        kw["config_path"],
        kw["bootstrap_servers"],
        kw["group"],
        kw["redis_url"],
        kw["key_prefix"],
        kw["settings"],
    )


def _change_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--dry-run", is_flag=True, help="Show what would change and change nothing."
    )(func)
    return click.option(
        "--yes", "-y", is_flag=True, help="Do not ask for confirmation."
    )(func)


def _parse_time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        _fail(f"--time: expected an ISO 8601 time, got {text!r}", EXIT_CONFIG)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _change(ctx: _Context, changes: list[Change], *, yes: bool, dry_run: bool) -> None:
    if not changes:
        _fail("no partitions to change (no such topic, and no checkpoints for it)")
    click.echo(f"group {ctx.group}: {len(changes)} partition(s)")
    click.echo(format_table([c.row() for c in changes], CHANGE_COLUMNS))
    if dry_run:
        click.echo("dry run: nothing changed")
        return
    _confirm("Apply these changes?", yes)
    done = apply_changes(ctx.store, ctx.group, changes, operator_name())
    click.echo(
        f"set {len(done)} checkpoint(s); running owners adopt them at their next commit"
    )
