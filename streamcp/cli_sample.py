"""``streamcp load-sample``: the bundled Wikimedia events into a topic."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from streamcp.errors import StreamcpError
from streamcp.examples.wikistats import DATA_FILE
from streamcp.sample import (
    DEFAULT_PARTITIONS,
    DEFAULT_TOPIC,
    REQUEST_TIMEOUT_S,
    load_sample,
)

EXIT_FAILURE = 1


@click.command("load-sample")
@click.option(
    "--bootstrap-servers",
    required=True,
    envvar="STREAMCP_KAFKA__BOOTSTRAP_SERVERS",
    show_envvar=True,
    help="Kafka bootstrap servers.",
)
@click.option(
    "--topic",
    default=DEFAULT_TOPIC,
    show_default=True,
    help="Topic to load; created when missing.",
)
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=DEFAULT_PARTITIONS,
    show_default=True,
    help="Partition count of a topic created here.",
)
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=DATA_FILE,
    show_default="the bundled sample",
    help="NDJSON file of Wikimedia recent-change events.",
)
@click.option(
    "--append",
    is_flag=True,
    help="Produce the events even when the topic already holds some.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=REQUEST_TIMEOUT_S,
    show_default=True,
    help="Seconds each step may wait for the broker.",
)
def load_sample_command(  # click passes each option by position
    bootstrap_servers: str,
    topic: str,
    partitions: int,
    path: Path,
    append: bool,
    timeout_s: float,
) -> None:
    """Load real Wikimedia recent-change events into a topic.

    Each line of the file becomes one event keyed by its page title and
    stamped with the edit's own time. A topic that already holds events is
    left as it is, unless --append: running this twice does not double the
    data. Exit status 0 when loaded or left alone, 1 when the broker did
    not answer or refused.
    """
    try:
        result = load_sample(
            bootstrap_servers,
            topic=topic,
            partitions=partitions,
            path=path,
            append=append,
            timeout_s=timeout_s,
        )
    except (StreamcpError, ValueError) as exc:
        click.echo(f"streamcp load-sample: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    total = sum(result.ends.values())
    if result.produced == 0:
        click.echo(
            f"{topic} already holds {total} events: loaded nothing "
            f"(--append loads the sample again)"
        )
        return
    made = "created" if result.created else "existing"
    click.echo(
        f"loaded {result.produced} events from {path.name} into {made} "
        f"topic {topic} ({len(result.ends)} partitions)"
    )
    for partition, end in sorted(result.ends.items()):
        click.echo(f"  partition {partition}: end offset {end}")
