"""``streamcp dlq redrive``: dead-letter records back through a handler.

Exit status: 0 when the run completed and every record was redriven, 4
when it completed with records still failing or not streamcp dead-letter
records (listed), 1 when it failed or could not go on, 2 when the request
was refused before anything ran, 3 when it was cancelled.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click
import confluent_kafka

from streamcp.cli import ConfigArgs, _with_config_args
from streamcp.cli_common import (
    EXIT_FAILURE,
    format_table,
    open_checkpoint_store,
    stop_on_signals,
)
from streamcp.cli_replay import (
    EXIT_CANCELLED,
    RangeArgs,
    _Kind,
    _load_config,
    _Plan,
    _refuse,
    _resolve,
    _start,
    _with_range_args,
    check_not_running,
    progress_of,
    resume_run,
)
from streamcp.config import Config
from streamcp.deadletter import dead_letter_producer
from streamcp.errors import ConfigError, ReplayError, RequestRefused
from streamcp.handlers import Handler
from streamcp.ranges import BrokerView
from streamcp.redrive import Redrive, redrive_handler
from streamcp.redrive_ledger import RedriveLedger, RedriveSummary
from streamcp.replay import replay_consumer_settings
from streamcp.runs import RunRecord, RunStore, new_run_id
from streamcp.store import Owner

EXIT_STILL_FAILING = 4


@click.group()
def dlq() -> None:
    """Dead-letter topics: send their records back through a handler."""


@dlq.command()
@_with_config_args
@_with_range_args
@click.option("--topic", help="Dead-letter topic to redrive.")
@click.option(
    "--partition",
    "partitions",
    multiple=True,
    type=int,
    metavar="N",
    help="Partition of the dead-letter topic (repeatable); default: all.",
)
@click.option(
    "--from",
    "from_offset",
    type=int,
    metavar="OFFSET",
    help="First dead-letter offset (inclusive); default: the log start.",
)
@click.option(
    "--to",
    "to_offset",
    type=int,
    metavar="OFFSET",
    help="Dead-letter offset to stop at (exclusive unless --end-inclusive); "
    "default: the high watermark.",
)
@click.option(
    "--from-time", metavar="TIME", help="Start at the first record at or after TIME."
)
@click.option(
    "--to-time", metavar="TIME", help="Stop before the first record at or after TIME."
)
@click.option("--end-inclusive", is_flag=True, help="Make the end inclusive.")
@click.option(
    "--strict-end", is_flag=True, help="Refuse an end beyond the high watermark."
)
@click.option(
    "--handler",
    "handler_name",
    help="Handler to run: entry point or module:attr; default: the configured "
    "one whose dead-letter topic this is, else [handler].",
)
@click.option(
    "--dead-letter-to",
    metavar="TOPIC",
    help="Produce records that still fail to TOPIC (default: only record them).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the resolved offsets; redrive nothing."
)
@click.option(
    "--resume",
    "resume_id",
    metavar="RUN_ID",
    help="Continue a redrive that stopped, from its checkpoints.",
)
@click.option(
    "--idle-timeout",
    "idle_timeout_s",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Stop waiting for a partition whose position stands still this long.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress on stderr (default: a bar on a terminal).",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def redrive(
    *,
    config_args: ConfigArgs,
    range_args: RangeArgs,
    handler_name: str | None,
    dead_letter_to: str | None,
    dry_run: bool,
    resume_id: str | None,
    idle_timeout_s: float,
    progress: bool | None,
    log_level: str | None,
) -> None:
    """Send the records of a dead-letter topic back through a handler.

    Each record becomes the event it was made from (topic, partition,
    offset and timestamp from its streamcp.original.* headers, its key,
    value and other headers) with Event.run_id set, and goes to the
    handler with its retry settings. One that still fails is recorded
    (and produced to --dead-letter-to, when given) and the redrive goes
    on; a record without those headers is recorded as not a streamcp
    dead-letter record. The redrive is a recorded run, with its own
    checkpoints: streamcp runs list, show and cancel it, and --resume
    continues it after a crash or a cancel.

    Exit status: 0 completed with every record redriven, 4 completed with
    records still failing or refused, 1 failed, 2 refused before anything
    ran, 3 cancelled.
    """
    others = [dead_letter_to is not None, handler_name is not None, dry_run]
    try:
        if resume_id is not None and (range_args.given() or any(others)):
            raise RequestRefused(
                "--resume",
                "redrives the recorded topic, offsets, handler and "
                "--dead-letter-to: give no --topic, --partition, --from, --to, "
                "--from-time, --to-time, --end-inclusive, --strict-end, "
                "--handler, --dead-letter-to or --dry-run with it",
            )
        if resume_id is None and not range_args.topic:
            raise RequestRefused("--topic", "is missing: name the dead-letter topic")
        extra = {"log.level": log_level} if log_level else {}
        config = _load_config(config_args, extra, range_args.topic or "")
    except ConfigError as exc:
        _refuse(exc)
    if resume_id is not None:
        resume_run(config, resume_id, _REDRIVE, idle_timeout_s, progress)
    try:
        request = range_args.request()
        if dead_letter_to is not None and dead_letter_to == request.topic:
            raise RequestRefused(
                "--dead-letter-to",
                f"is the topic being redriven, {dead_letter_to!r}: name another",
            )
        handler, name = redrive_handler(config, request.topic, handler_name)
    except ConfigError as exc:
        _refuse(exc)
    ranges = _resolve(config, request)
    if dead_letter_to:
        _check_topic(config, dead_letter_to)
    requested = {**request.describe(), "dead_letter_to": dead_letter_to}
    _start(
        config,
        _Plan(request.topic, name, handler, ranges, requested),
        _REDRIVE,
        dry_run=dry_run,
        idle_timeout_s=idle_timeout_s,
        progress=progress,
    )


def _check_topic(config: Config, topic: str) -> None:
    """Refuse (exit 2) a ``--dead-letter-to`` topic the broker does not know."""
    settings = replay_consumer_settings(config.kafka, f"check-{new_run_id()}")
    consumer = confluent_kafka.Consumer(settings)
    try:
        BrokerView(consumer).partitions(topic)
    except RequestRefused:
        _refuse(RequestRefused("--dead-letter-to", f"no such topic: {topic!r}"))
    except ReplayError as exc:
        click.echo(f"streamcp: could not check --dead-letter-to: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    finally:
        consumer.close()


def _check_resumable(record: RunRecord) -> None:
    if record.kind != "redrive":
        raise RequestRefused(
            "--resume",
            f"run {record.id!r} is a {record.kind}: resume it with "
            f"streamcp {record.kind} --resume {record.id}",
        )
    if record.status == "completed":
        raise RequestRefused(
            "--resume",
            f"run {record.id!r} is completed: every record of it was redriven "
            f"or recorded; start a new redrive to go through them again",
        )
    check_not_running(record)


def _execute(
    *,
    config: Config,
    record: RunRecord,
    runs: RunStore,
    handler: Handler,
    owner: Owner,
    idle_timeout_s: float,
    progress: bool | None,
) -> NoReturn:
    store = open_checkpoint_store(config)
    ledger = _ledger(config, record)
    dead_letter_to = str(record.requested.get("dead_letter_to") or "")
    job = Redrive(
        record,
        config,
        store=store,
        runs=runs,
        ledger=ledger,
        handler=handler,
        dead_letter_to=dead_letter_to,
        dead_letters=dead_letter_producer(config) if dead_letter_to else None,
        owner=owner,
        progress=progress_of(record, progress),
        idle_timeout_s=idle_timeout_s,
    )
    stop_on_signals(job.request_stop, config.consumer.drain_timeout_s)
    outcome = job.run()
    store.close()
    ledger.close()
    runs.close()
    status = outcome.replay.status
    click.echo(f"run {record.id} {status}")
    if outcome.summary is not None:
        print_summary(outcome.summary)
    if outcome.replay.error:
        click.echo(f"streamcp: run {record.id}: {outcome.replay.error}", err=True)
    summary = outcome.summary
    if summary is None:
        click.echo(
            f"streamcp: run {record.id}: redis did not answer for what its "
            f"records came to; see streamcp runs show {record.id}",
            err=True,
        )
    if status == "cancelled":
        sys.exit(EXIT_CANCELLED)
    if status != "completed" or summary is None:
        sys.exit(EXIT_FAILURE)
    sys.exit(0 if summary.total == summary.redriven else EXIT_STILL_FAILING)


def _ledger(config: Config, record: RunRecord) -> RedriveLedger:
    return RedriveLedger.from_url(
        config.redis.url,
        record,
        key_prefix=config.redis.key_prefix,
        socket_timeout_s=config.redis.socket_timeout_s,
    )


def summary_of(config: Config, record: RunRecord) -> RedriveSummary:
    """What a redrive run's records came to so far; raises StoreUnavailable."""
    ledger = _ledger(config, record)
    try:
        return ledger.summary(record)
    finally:
        ledger.close()


def print_summary(summary: RedriveSummary) -> None:
    """The counts, then each still-failing and each refused record."""
    click.echo(
        f"{summary.total} dead-letter record(s): {summary.redriven} redriven, "
        f"{len(summary.still_failing)} still failing, {len(summary.refused)} "
        f"not a streamcp dead-letter record"
    )
    if summary.still_failing:
        target = summary.dead_letter_to
        where = f", produced to {target}" if target else ""
        click.echo(f"still failing (partition and offset of the record{where}):")
        rows = [
            {
                "partition": entry.partition,
                "offset": entry.offset,
                "original": f"{entry.original_topic}[{entry.original_partition}] "
                f"offset {entry.original_offset}",
                "attempts": entry.attempts,
                "error": f"{entry.error_type}: {entry.error_message}",
            }
            for entry in summary.still_failing
        ]
        click.echo(
            format_table(rows, ["partition", "offset", "original", "attempts", "error"])
        )
    if summary.refused:
        click.echo("not a streamcp dead-letter record (partition and offset):")
        rows = [
            {"partition": e.partition, "offset": e.offset, "reason": e.reason}
            for e in summary.refused
        ]
        click.echo(format_table(rows, ["partition", "offset", "reason"]))


_REDRIVE = _Kind(
    kind="redrive",
    handler_for=redrive_handler,
    check_resumable=_check_resumable,
    execute=_execute,
    items="records",
    dry_run_did_not="redriven",
)
