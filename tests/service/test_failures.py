"""Crashes, handler failures and out-of-order completion lose nothing."""

from __future__ import annotations

import signal
import threading
import time
import zlib
from typing import Any

from streamcp.events import Event
from streamcp.services import produce_records
from tests.recorder import offsets_by_partition, read_handled
from tests.service.conftest import raw_for
from tests.service.harness import (
    ServiceProcess,
    ServiceThread,
    checkpoints,
    config_from,
    produce,
    wait_for,
    write_config,
)

_raw = raw_for


def test_kill_9_then_restart_redelivers_exactly_from_the_checkpoint(
    setup: dict[str, Any],
) -> None:
    """With N=7 and a long T, kill -9 loses the uncommitted tail; the restarted
    process handles exactly the events from each stored checkpoint on (a
    non-empty set: the last event of partition 0 is still being handled at the
    crash) and every event was handled at least once."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 20)
    record = setup["tmp"] / "handled.txt"
    raw = _raw(
        setup,
        commit={"every_events": 7, "every_seconds": 3600},
        consumer={"batch_size": 4, "concurrency": 3},
        handler={
            "options": {"path": str(record), "delay_ms": 5, "slow_at": ["0:19:60"]}
        },
    )
    first = ServiceProcess(
        write_config(setup["tmp"] / "c1.toml", raw), setup["tmp"] / "log1"
    )
    try:
        wait_for(lambda: len(read_handled(record)) == 59, what="59 handled")
        time.sleep(0.3)  # let a commit that was due land before the crash
        first.signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    stored = checkpoints(setup["store"], setup["group"])
    before = {(r.partition, r.offset) for r in read_handled(record)}
    expected_again = {(p, o) for p in range(3) for o in range(stored[p] or 0, 20)}
    assert (0, 19) in expected_again

    raw["handler"]["options"]["slow_at"] = []
    config_path = write_config(setup["tmp"] / "c2.toml", raw)
    second = ServiceProcess(config_path, setup["tmp"] / "log2", "--stop-when-caught-up")
    assert second.wait(60) == 0
    again = {
        (r.partition, r.offset) for r in read_handled(record) if r.pid == second.pid
    }
    assert again == expected_again
    assert before | again == {(p, o) for p in range(3) for o in range(20)}
    assert checkpoints(setup["store"], setup["group"]) == {0: 20, 1: 20, 2: 20}


def test_handler_failure_keeps_checkpoint_at_failed_event_and_commits_others(
    setup: dict[str, Any],
) -> None:
    """With on_failure = "stop", a failure at partition 1 offset 4 stops the real
    service with exit 1 and
    a clear error; partition 1 stays at 4 on shutdown, the others reach 10."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 10)
    record = setup["tmp"] / "handled.txt"
    raw = _raw(
        setup,
        handler={
            "options": {"path": str(record), "fail_at": ["1:4"]},
            "on_failure": "stop",
            "retry_attempts": 1,
        },
        consumer={"ordering": "key", "concurrency": 2},
    )
    proc = ServiceProcess(
        write_config(setup["tmp"] / "c.toml", raw), setup["tmp"] / "log"
    )
    try:
        status = proc.wait(60)
    finally:
        proc.kill()
    assert status == 1
    log = proc.log_path.read_text()
    assert f"failed at {setup['topic']}[1] offset 4" in log
    stored = checkpoints(setup["store"], setup["group"])
    assert stored[1] == 4
    handled = offsets_by_partition(read_handled(record))
    assert 4 not in handled.get(1, [])
    assert stored[0] == 10 or stored[2] == 10  # others were drained and committed
    for p in (0, 2):
        assert stored[p] == max(handled[p]) + 1


def test_handler_failure_checkpoint_stays_on_restart(setup: dict[str, Any]) -> None:
    """After the failure, a restart with the same bug starts at the failed event
    again and fails again: the checkpoint never passes it."""
    produce(setup["kafka"].bootstrap_servers, setup["topic"], 3, 6)

    def fail_at_2_3(event: Event) -> None:
        if (event.partition, event.offset) == (2, 3):
            raise ValueError("bad event")

    for _ in range(2):
        with ServiceThread(
            config_from(_raw(setup)),
            fail_at_2_3,
            policy={"on_failure": "stop", "retry_backoff_s": 0.01},
        ) as service:
            assert service.join(60) == 1
            failure = service.service.failure
            assert failure is not None and "offset 3" in str(failure)
        assert checkpoints(setup["store"], setup["group"])[2] == 3


def test_slow_event_holds_checkpoint_back_until_it_finishes(
    setup: dict[str, Any],
) -> None:
    """With key ordering, events of other keys finish past a slow one, yet the
    committed checkpoint stays at the slow event until it is done."""
    release = threading.Event()
    seen: list[int] = []
    lock = threading.Lock()

    def handler(event: Event) -> None:
        if event.offset == 2:
            release.wait(30)
        with lock:
            seen.append(event.offset)

    slow_key, other = _keys_on_different_lanes(2)
    keys = [slow_key, other, slow_key, other, other, other, other]
    records = [(k, b"v", None, 0) for k in keys]
    produce_records(setup["kafka"].bootstrap_servers, setup["topic"], records)
    config = config_from(
        _raw(
            setup,
            commit={"every_events": 1, "every_seconds": 0.2},
            consumer={"ordering": "key", "concurrency": 2},
        )
    )
    with ServiceThread(config, handler):
        wait_for(lambda: {1, 3, 4, 5, 6} <= set(seen), what="other key's events")
        time.sleep(0.6)  # several commit rounds pass
        assert checkpoints(setup["store"], setup["group"])[0] == 2
        release.set()
        wait_for(
            lambda: checkpoints(setup["store"], setup["group"])[0] == 7,
            what="checkpoint past the slow event",
        )


def _keys_on_different_lanes(lanes: int) -> tuple[bytes, bytes]:
    """Two keys the dispatcher puts on different lanes (crc32 modulo lanes)."""
    candidates = [f"key-{i}".encode() for i in range(20)]
    first = candidates[0]
    second = next(
        k for k in candidates if zlib.crc32(k) % lanes != zlib.crc32(first) % lanes
    )
    return first, second
