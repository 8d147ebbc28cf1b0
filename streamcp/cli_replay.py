"""``streamcp replay`` and ``streamcp runs``: replay runs from the command line.

Exit status of ``replay``: 0 when the run completed (or after
``--dry-run``), 1 when it failed or could not go on, 2 when the request was
refused before anything ran, 3 when it was cancelled. What succeeded is
committed to the run's own checkpoints in every case where Redis answered.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from streamcp.cli import (
    ConfigArgs,
    _load,
    _load_for_store,
    _with_config_args,
    freeze_startup_objects,
)
from streamcp.cli_common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    answering,
    format_table,
    open_checkpoint_store,
    redis_unavailable,
    stop_on_signals,
)
from streamcp.config import Config
from streamcp.errors import (
    ConfigError,
    ReplayError,
    RequestRefused,
    StoreUnavailable,
)
from streamcp.handlers import Handler, load
from streamcp.logs import configure_logging
from streamcp.loop import check_handlers
from streamcp.progress import Progress
from streamcp.ranges import PartitionRange, RangeRequest, parse_time
from streamcp.redrive_ledger import RedriveSummary
from streamcp.replay import Replay, resolve_ranges
from streamcp.runs import RunKind, RunRecord, RunStore, new_run_id
from streamcp.store import Owner

EXIT_CANCELLED = 3
_EXIT_OF = {"completed": 0, "cancelled": EXIT_CANCELLED}

# How long `runs cancel` waits, by default, for the run to say it stopped.
CANCEL_WAIT_S = 10.0


def _refuse(exc: ConfigError) -> NoReturn:
    click.echo(f"streamcp: refused: {exc}", err=True)
    sys.exit(EXIT_CONFIG)


def _load_config(args: ConfigArgs, extra: dict[str, Any], topic: str) -> Config:
    """Load as ``streamcp run`` does; a replay needs no subscription of its own.

    When the configuration names no topics or no handler, the replay's
    ``--topic`` (and a placeholder handler, replaced later by the replay's
    own) fill them in, so that only the replay's real needs are checked.
    """
    fills = {"kafka.topics": [topic or "-"], "handler.name": "-"}
    wanted = dict(extra)
    while True:
        try:
            return _load(*args.values(), wanted)
        except ConfigError as exc:
            if exc.field not in fills or exc.field in wanted:
                raise
            wanted[exc.field] = fills[exc.field]


def _run_store(config: Config) -> RunStore:
    return RunStore.from_url(
        config.redis.url,
        key_prefix=config.redis.key_prefix,
        socket_timeout_s=config.redis.socket_timeout_s,
    )


@dataclass(frozen=True)
class RangeArgs:
    """The values of the range options of ``replay`` and ``dlq redrive``."""

    topic: str | None
    partitions: tuple[int, ...]
    from_offset: int | None
    to_offset: int | None
    from_time: str | None
    to_time: str | None
    end_inclusive: bool
    strict_end: bool

    def given(self) -> bool:
        """Whether any of the options was given."""
        ranged = [self.topic, self.from_offset, self.to_offset]
        ranged += [self.from_time, self.to_time]
        flags = [bool(self.partitions), self.end_inclusive, self.strict_end]
        return any(v is not None for v in ranged) or any(flags)

    def request(self) -> RangeRequest:
        """The range requested; raises ConfigError for a malformed time."""
        from_time, to_time = self.from_time, self.to_time
        return RangeRequest(
            topic=self.topic or "",
            partitions=self.partitions,
            from_offset=self.from_offset,
            to_offset=self.to_offset,
            from_time=parse_time(from_time, "--from-time") if from_time else None,
            to_time=parse_time(to_time, "--to-time") if to_time else None,
            end_inclusive=self.end_inclusive,
            strict_end=self.strict_end,
        )


def _with_range_args(func: Callable[..., Any]) -> Callable[..., Any]:
    """Pass the range options (declared below it) as one ``range_args``."""

    @functools.wraps(func)
    def command(
        *,
        topic: str | None,
        partitions: tuple[int, ...],
        from_offset: int | None,
        to_offset: int | None,
        from_time: str | None,
        to_time: str | None,
        end_inclusive: bool,
        strict_end: bool,
        **kw: Any,
    ) -> Any:
        args = RangeArgs(
            topic,
            partitions,
            from_offset,
            to_offset,
            from_time,
            to_time,
            end_inclusive,
            strict_end,
        )
        return func(range_args=args, **kw)

    return command


def handler_for(config: Config, topic: str, name: str | None) -> tuple[Handler, str]:
    """The replay's handler and its name; nothing connects yet.

    Without ``name``: the handler configured for ``topic`` (a
    ``[handlers.<topic>]`` table, else ``[handler]``). With ``name``: that
    handler, with the options and failure policy of the configured table
    of the same name, or none and the default policy. Raises
    :class:`ConfigError` naming the field.
    """
    tables = [
        (f"handlers.{topic}", config.handlers.get(topic)),
        ("handler", config.handler),
    ]
    for field_name, table in tables:
        if table is None or table.name == "-":
            continue
        if name is None or table.name == name:
            built = load(
                table.name, table.options, field_name=field_name, policy=table.policy
            )
            return built, table.name
    if name is None:
        raise ConfigError(
            "handler.name",
            f"no handler for topic {topic!r}: configure one or give --handler",
        )
    return load(name, {}, field_name="--handler"), name


@click.command()
@_with_config_args
@_with_range_args
@click.option("--topic", help="Topic to replay.")
@click.option(
    "--partition",
    "partitions",
    multiple=True,
    type=int,
    metavar="N",
    help="Partition to replay (repeatable); default: all.",
)
@click.option(
    "--from",
    "from_offset",
    type=int,
    metavar="OFFSET",
    help="First offset to replay (inclusive); default: the log start.",
)
@click.option(
    "--to",
    "to_offset",
    type=int,
    metavar="OFFSET",
    help="Offset to stop at (exclusive unless --end-inclusive); "
    "default: the high watermark.",
)
@click.option(
    "--from-time",
    metavar="TIME",
    help="Start at the first event at or after this ISO 8601 time "
    "(UTC unless it has an offset), per partition.",
)
@click.option(
    "--to-time",
    metavar="TIME",
    help="Stop before the first event at or after this ISO 8601 time "
    "(after it, with --end-inclusive), per partition.",
)
@click.option(
    "--end-inclusive",
    is_flag=True,
    help="Make the end inclusive: --to N replays offset N too.",
)
@click.option(
    "--strict-end",
    is_flag=True,
    help="Refuse an end beyond the high watermark instead of "
    "stopping at the high watermark.",
)
@click.option(
    "--handler",
    "handler_name",
    help="Handler to run: entry point or module:attr; default: the configured one.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Resolve and print the offsets and event counts; handle "
    "nothing and record no run.",
)
@click.option(
    "--resume",
    "resume_id",
    metavar="RUN_ID",
    help="Continue a run that stopped (crash, failure, cancel) from "
    "its checkpoints to its recorded end offsets.",
)
@click.option(
    "--rerun",
    "rerun_id",
    metavar="RUN_ID",
    help="Start a new run over the offsets another run recorded.",
)
@click.option(
    "--idle-timeout",
    "idle_timeout_s",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Stop waiting for a partition whose position stands still "
    "below its end this long.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress on stderr (default: a bar on a terminal, "
    "plain lines otherwise).",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def replay(
    *,
    config_args: ConfigArgs,
    range_args: RangeArgs,
    handler_name: str | None,
    dry_run: bool,
    resume_id: str | None,
    rerun_id: str | None,
    idle_timeout_s: float,
    progress: bool | None,
    log_level: str | None,
) -> None:
    """Replay an offset or time range of one topic as a recorded run.

    The start is inclusive and the end exclusive, unless --end-inclusive.
    Offsets and times apply to each chosen partition; a time resolves per
    partition to the first event at or after it. An end beyond the high
    watermark stops at the high watermark (or is refused with
    --strict-end), and the run ends when the position reaches the end, even
    where the last offsets hold no event.

    A replay uses its own checkpoints (namespace replay:<run id>) and never
    touches the consumer group's: the live service may run beside it.
    Handlers see Event.run_id set and Event.is_replay true.

    Exit status: 0 completed (or --dry-run), 1 failed, 2 refused before
    anything ran, 3 cancelled.
    """
    try:
        _check_combination(range_args, resume_id=resume_id, rerun_id=rerun_id)
        extra = {"log.level": log_level} if log_level else {}
        config = _load_config(config_args, extra, range_args.topic or "")
    except ConfigError as exc:
        _refuse(exc)
    configure_logging(config.log.level, config.log.format)
    if resume_id is not None:
        resume_run(config, resume_id, _REPLAY, idle_timeout_s, progress)
    if rerun_id is not None:
        _rerun(
            config=config,
            run_id=rerun_id,
            handler_name=handler_name,
            dry_run=dry_run,
            idle_timeout_s=idle_timeout_s,
            progress=progress,
        )
        return
    try:
        request = range_args.request()
        handler, name = handler_for(config, request.topic, handler_name)
    except ConfigError as exc:
        _refuse(exc)
    ranges = _resolve(config, request)
    _start(
        config,
        _Plan(request.topic, name, handler, ranges, request.describe()),
        _REPLAY,
        dry_run=dry_run,
        idle_timeout_s=idle_timeout_s,
        progress=progress,
    )


def _check_combination(
    range_args: RangeArgs,
    *,
    resume_id: str | None,
    rerun_id: str | None,
) -> None:
    if resume_id is not None and rerun_id is not None:
        raise RequestRefused("--resume", "give --resume or --rerun, not both")
    reuse = "--resume" if resume_id is not None else "--rerun"
    if (resume_id or rerun_id) and range_args.given():
        raise RequestRefused(
            reuse,
            "replays the recorded topic, partitions and offsets: give no "
            "--topic, --partition, --from, --to, --from-time, --to-time, "
            "--end-inclusive or --strict-end with it",
        )
    if not (resume_id or rerun_id) and not range_args.topic:
        raise RequestRefused("--topic", "is missing: name the topic to replay")


def _resolve(config: Config, request: RangeRequest) -> list[PartitionRange]:
    try:
        return resolve_ranges(config, request)
    except RequestRefused as exc:
        _refuse(exc)
    except ReplayError as exc:
        click.echo(f"streamcp: could not resolve the range: {exc}", err=True)
        sys.exit(EXIT_FAILURE)


@dataclass(frozen=True)
class _Plan:
    topic: str
    handler_name: str
    handler: Handler
    ranges: list[PartitionRange]
    requested: dict[str, Any]
    rerun_of: str = ""


HandlerFor = Callable[[Config, str, str | None], tuple[Handler, str]]


@dataclass(frozen=True)
class _Kind:
    """What differs between the kinds of run the command line starts."""

    kind: RunKind
    handler_for: HandlerFor
    check_resumable: Callable[[RunRecord], None]
    execute: Callable[..., NoReturn]
    # What the run goes through ("events", "records") and what a dry run
    # did not do ("handled", "redriven").
    items: str
    dry_run_did_not: str


def _start(
    config: Config,
    plan: _Plan,
    kind: _Kind,
    *,
    dry_run: bool,
    idle_timeout_s: float,
    progress: bool | None,
) -> None:
    """Print the plan, then (unless a dry run) record the run and execute it."""
    check_handlers(config, [plan.handler])  # refuses what cannot run
    run_id = "(dry run)" if dry_run else new_run_id()
    _print_plan(run_id, plan.topic, plan.handler_name, plan.ranges, {})
    if dry_run:
        click.echo(f"dry run: nothing {kind.dry_run_did_not}, no run recorded")
        return

    def create(runs: RunStore, owner: Owner) -> RunRecord:
        return runs.create(
            run_id,
            topic=plan.topic,
            handler=plan.handler_name,
            ranges=plan.ranges,
            requested=plan.requested,
            owner=owner,
            rerun_of=plan.rerun_of,
            kind=kind.kind,
        )

    _launch(config, create, kind, plan.handler, idle_timeout_s, progress)


def _launch(
    config: Config,
    open_record: Callable[[RunStore, Owner], RunRecord],
    kind: _Kind,
    handler: Handler,
    idle_timeout_s: float,
    progress: bool | None,
) -> NoReturn:
    """Create or resume the run as this process (``open_record``); execute it."""
    runs = _run_store(config)
    owner = Owner.for_this_process()
    try:
        record = open_record(runs, owner)
    except StoreUnavailable as exc:
        redis_unavailable(config, exc)
    kind.execute(
        config=config,
        record=record,
        runs=runs,
        handler=handler,
        owner=owner,
        idle_timeout_s=idle_timeout_s,
        progress=progress,
    )


def _rerun(
    *,
    config: Config,
    run_id: str,
    handler_name: str | None,
    dry_run: bool,
    idle_timeout_s: float,
    progress: bool | None,
) -> None:
    old = _existing(config, run_id, "--rerun")
    try:
        _check_replay(old, "--rerun")
        handler, name = handler_for(config, old.topic, handler_name or old.handler)
    except ConfigError as exc:
        _refuse(exc)
    ranges = [PartitionRange(r.partition, r.start, r.end) for r in old.ranges]
    requested = {**old.requested, "rerun_of": old.id}
    plan = _Plan(old.topic, name, handler, ranges, requested, rerun_of=old.id)
    _start(
        config,
        plan,
        _REPLAY,
        dry_run=dry_run,
        idle_timeout_s=idle_timeout_s,
        progress=progress,
    )


def resume_run(
    config: Config,
    run_id: str,
    kind: _Kind,
    idle_timeout_s: float,
    progress: bool | None,
) -> NoReturn:
    """Continue a run of ``kind`` that stopped, as this process."""
    record = _existing(config, run_id, "--resume")
    try:
        kind.check_resumable(record)
        handler, _ = kind.handler_for(config, record.topic, record.handler)
    except ConfigError as exc:
        _refuse(exc)
    click.echo(
        f"resuming run {record.id} ({record.status}, "
        f"{record.events_handled} {kind.items} handled so far)"
    )
    _print_plan(
        record.id, record.topic, record.handler, list(record.ranges), record.progress
    )
    _launch(
        config,
        lambda runs, owner: runs.resume(record.id, owner),
        kind,
        handler,
        idle_timeout_s,
        progress,
    )


def _check_resumable(record: RunRecord) -> None:
    _check_replay(record, "--resume")
    if record.status == "completed":
        raise RequestRefused(
            "--resume",
            f"run {record.id!r} is completed; use --rerun {record.id} "
            f"to replay its offsets again",
        )
    check_not_running(record)


def check_not_running(record: RunRecord) -> None:
    """Refuse to resume a run whose process is still alive (has a heartbeat)."""
    if record.status == "running" and not record.stale():
        raise RequestRefused(
            "--resume",
            f"run {record.id!r} is running in {record.started_by_host} "
            f"(heartbeat at {record.heartbeat_at}); cancel it first",
        )


def _check_replay(record: RunRecord, option: str) -> None:
    if record.kind != "replay":
        raise RequestRefused(
            option,
            f"run {record.id!r} is a {record.kind}, not a replay: resume it "
            f"with streamcp dlq redrive --resume {record.id}",
        )


def _existing(config: Config, run_id: str, option: str) -> RunRecord:
    with answering(config, _run_store(config)) as runs:
        record = runs.get(run_id)
    if record is None:
        _refuse(RequestRefused(option, f"no run {run_id!r}"))
    return record


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
    job = Replay(
        record,
        config,
        store=store,
        runs=runs,
        handler=handler,
        owner=owner,
        progress=progress_of(record, progress),
        idle_timeout_s=idle_timeout_s,
    )
    stop_on_signals(job.request_stop, config.consumer.drain_timeout_s)
    freeze_startup_objects()
    outcome = job.run()
    store.close()
    runs.close()
    for partition, note in sorted(outcome.notes.items()):
        click.echo(f"partition {partition}: {note}")
    click.echo(
        f"run {record.id} {outcome.status}: {outcome.handled} events "
        f"handled by this process"
    )
    if outcome.error:
        click.echo(f"streamcp: run {record.id}: {outcome.error}", err=True)
    sys.exit(_EXIT_OF.get(outcome.status, EXIT_FAILURE))


def progress_of(record: RunRecord, progress: bool | None) -> Progress | None:
    """The progress display of ``record`` on stderr; None with --no-progress."""
    if progress is False:
        return None
    total = sum(r.offsets for r in record.ranges)
    return Progress(record.id, total, sys.stderr, done=record.events_handled)


def _print_plan(
    run_id: str,
    topic: str,
    handler_name: str,
    ranges: Sequence[PartitionRange],
    progress: dict[int, int] | Any,
) -> None:
    total = sum(r.offsets for r in ranges)
    click.echo(
        f"run {run_id}: topic {topic}, {len(ranges)} partition(s), "
        f"handler {handler_name}"
    )
    rows = []
    for r in ranges:
        row: dict[str, Any] = {
            "partition": r.partition,
            "start": r.start,
            "end": r.end,
            "offsets": r.offsets,
            "note": r.note,
        }
        if progress:
            row["checkpoint"] = progress.get(r.partition)
        rows.append(row)
    columns = ["partition", "start", "end", "offsets"]
    columns += ["checkpoint"] if progress else []
    click.echo(format_table(rows, [*columns, "note"]))
    click.echo(
        f"total: {total} events at most (offsets in range; gaps such as "
        f"transaction markers hold none); end offsets are exclusive"
    )


# -- streamcp runs -------------------------------------------------------------


@click.group()
def runs() -> None:
    """List, show and cancel runs (replays and dead-letter redrives)."""


def _runs_config(args: ConfigArgs) -> Config:
    try:
        return _load_for_store(*args.values())
    except ConfigError as exc:
        _refuse(exc)


def _list_row(record: RunRecord) -> dict[str, Any]:
    status = record.status + (" (no heartbeat)" if record.stale() else "")
    return {
        "run": record.id,
        "kind": record.kind,
        "status": status,
        "topic": record.topic,
        "partitions": ",".join(str(p) for p in record.partitions),
        "handler": record.handler,
        "handled": record.events_handled,
        "failed": record.events_failed,
        "started_at": record.started_at.isoformat(timespec="seconds")
        if record.started_at
        else None,
        "started_by": f"{record.started_by_user}@{record.started_by_host}/"
        f"{record.started_by_pid}",
        "finished_at": record.finished_at.isoformat(timespec="seconds")
        if record.finished_at
        else None,
    }


@runs.command("list")
@_with_config_args
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Show at most this many runs, newest first.",
)
def runs_list(
    *,
    config_args: ConfigArgs,
    as_json: bool,
    limit: int,
) -> None:
    """List runs, newest first."""
    config = _runs_config(config_args)
    with answering(config, _run_store(config)) as store:
        found = store.list(limit)
    if as_json:
        click.echo(json.dumps({"runs": [r.to_json() for r in found]}, indent=2))
        return
    click.echo(f"{len(found)} run(s)")
    if found:
        click.echo(
            format_table(
                [_list_row(r) for r in found],
                [
                    "run",
                    "kind",
                    "status",
                    "topic",
                    "partitions",
                    "handler",
                    "handled",
                    "failed",
                    "started_at",
                    "started_by",
                    "finished_at",
                ],
            )
        )


@runs.command("show")
@_with_config_args
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def runs_show(
    *,
    config_args: ConfigArgs,
    run_id: str,
    as_json: bool,
) -> None:
    """Show one run: its range, resolved offsets, progress and outcome."""
    config = _runs_config(config_args)
    record = _existing(config, run_id, "RUN_ID")
    data = record.to_json()
    summary = _redrive_summary(config, record)
    if summary is not None:
        data["redrive"] = summary.to_json()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for name in (
        "id",
        "kind",
        "status",
        "topic",
        "handler",
        "events_handled",
        "events_failed",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "error",
        "rerun_of",
        "resumes",
    ):
        click.echo(f"{name}: {'-' if data[name] in (None, '') else data[name]}")
    who = data["started_by"]
    click.echo(f"started_by: {who['user']}@{who['host']} pid {who['pid']}")
    click.echo(f"requested: {json.dumps(data['requested'])}")
    click.echo(
        format_table(
            data["partitions"], ["partition", "start", "end", "checkpoint", "note"]
        )
    )
    if summary is not None:
        # cli_redrive builds on this module, so it is imported late.
        from streamcp.cli_redrive import print_summary

        print_summary(summary)


def _redrive_summary(config: Config, record: RunRecord) -> RedriveSummary | None:
    """What a redrive's records came to; None for a replay."""
    if record.kind != "redrive":
        return None
    from streamcp.cli_redrive import summary_of  # see above

    try:
        return summary_of(config, record)
    except StoreUnavailable as exc:
        redis_unavailable(config, exc)


@runs.command("cancel")
@_with_config_args
@click.argument("run_id")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=CANCEL_WAIT_S,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the run to stop.",
)
def runs_cancel(
    *,
    config_args: ConfigArgs,
    run_id: str,
    wait_s: float,
) -> None:
    """Ask a running replay to stop; it commits what succeeded first.

    A run whose process is gone (no heartbeat) is marked cancelled at once.
    Exit status 0 once cancelled, 1 when it did not stop within --wait, 2
    for an unknown run or one that is not running.
    """
    config = _runs_config(config_args)
    record = _existing(config, run_id, "RUN_ID")
    if record.status != "running":
        _refuse(
            RequestRefused(
                "RUN_ID",
                f"run {run_id!r} is {record.status}: only "
                f"a running run can be cancelled",
            )
        )
    with answering(config, _run_store(config)) as store:
        _cancel(store, record, wait_s)


def _cancel(store: RunStore, record: RunRecord, wait_s: float) -> None:
    if record.stale():
        store.mark_cancelled(record.id, record.owner)
        click.echo(
            f"run {record.id} had no heartbeat since {record.heartbeat_at}: "
            f"marked cancelled (resume it with --resume {record.id})"
        )
        return
    store.request_cancel(record.id)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        now = store.get(record.id)
        if now is not None and now.status != "running":
            click.echo(
                f"run {record.id} {now.status}: {now.events_handled} events handled"
            )
            return
        time.sleep(0.1)
    click.echo(
        f"asked run {record.id} to stop; it is still running after {wait_s:g}s",
        err=True,
    )
    sys.exit(EXIT_FAILURE)


_REPLAY = _Kind(
    kind="replay",
    handler_for=handler_for,
    check_resumable=_check_resumable,
    execute=_execute,
    items="events",
    dry_run_did_not="handled",
)
