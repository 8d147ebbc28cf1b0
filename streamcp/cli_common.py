"""What the command-line modules share: exit codes, stores, error exits.

It imports no command module, so that each of them (``cli``, ``admin_cli``,
``cli_replay``, ``cli_redrive``) can build on it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, Protocol, TypeVar

import click

from streamcp.config import Config, redact_url
from streamcp.errors import StoreUnavailable
from streamcp.redis_store import RedisCheckpointStore

EXIT_FAILURE = 1
EXIT_CONFIG = 2


class _Closable(Protocol):
    def close(self) -> None: ...


_S = TypeVar("_S", bound=_Closable)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [
        [("-" if row[c] is None or row[c] == "" else str(row[c])) for c in columns]
        for row in rows
    ]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


def open_checkpoint_store(
    config: Config, *, history: bool = True
) -> RedisCheckpointStore:
    """The checkpoint store of ``config``; nothing connects yet.

    ``history``: keep the configured bound on the history stream (what
    writes to it needs; a read-only inspection goes without).
    """
    if not history:
        return RedisCheckpointStore.from_url(
            config.redis.url,
            key_prefix=config.redis.key_prefix,
            socket_timeout_s=config.redis.socket_timeout_s,
        )
    return RedisCheckpointStore.from_url(
        config.redis.url,
        key_prefix=config.redis.key_prefix,
        socket_timeout_s=config.redis.socket_timeout_s,
        history_max_entries=config.redis.history_max_entries,
    )


def redis_unavailable(config: Config, exc: Exception) -> NoReturn:
    """Say that Redis did not answer and exit with status 1."""
    click.echo(
        f"streamcp: redis at {redact_url(config.redis.url)} did not answer: {exc}",
        err=True,
    )
    sys.exit(EXIT_FAILURE)


@contextmanager
def answering(config: Config, store: _S) -> Iterator[_S]:
    """Use ``store``, exit 1 when Redis does not answer, close it in any case."""
    try:
        yield store
    except StoreUnavailable as exc:
        redis_unavailable(config, exc)
    finally:
        store.close()


def stop_on_signals(request_stop: Callable[[], object], drain_timeout_s: float) -> None:
    """Stop gracefully on SIGTERM or SIGINT; at a second one, or when the
    graceful stop takes too long, exit at once.

    The graceful stop drains, commits and releases, each within
    ``drain_timeout_s``: it is given three times that and five seconds more.
    It can take longer only when a handler call that never returns holds
    the loop (handlers inline). Exiting at once commits nothing more: the
    checkpoints stay at the last accepted commit, so nothing is lost and
    what finished since is handled again by the next owner.
    """
    grace_s = 3 * drain_timeout_s + 5
    signals: list[int] = []

    def exit_now(why: str) -> None:
        sys.stderr.write(
            f"streamcp: {why}: exiting now, without draining; the checkpoints "
            "stay at the last commit\n"
        )
        sys.stderr.flush()
        os._exit(EXIT_FAILURE)

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        if len(signals) > 1:
            exit_now(f"second signal ({signal.Signals(signum).name})")
        request_stop()
        timer = threading.Timer(
            grace_s, exit_now, (f"still stopping after {grace_s:g}s",)
        )
        timer.daemon = True
        timer.start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
