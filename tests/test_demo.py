"""`streamcp demo`: stops the example service midway, resumes it, checks the result."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import redis

from streamcp.events import TopicPartition
from streamcp.examples.wikistats import compute_stats, load_records, read_stats
from streamcp.redis_store import RedisCheckpointStore
from streamcp.services import KafkaService, RedisService, free_port

MATCH_LINE = "statistics match an independent computation of the data file"


def run_demo_cli(
    *args: str, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamcp.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_demo_stops_midway_resumes_at_the_checkpoints_and_gets_exact_stats(
    kafka: KafkaService,
    redis_service: RedisService,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """On the test broker and Redis the demo exits 0 and says the statistics
    match; the second service process resumed each partition at the checkpoint
    the first one stored (read back from the store's history, independently of
    the demo's own check); the first run stopped midway; and the statistics in
    Redis equal compute_stats of the data file."""
    done = run_demo_cli(
        "--bootstrap-servers",
        kafka.bootstrap_servers,
        "--redis-url",
        redis_service.url,
        "--workdir",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert MATCH_LINE in done.stdout
    assert "Every partition resumed exactly at its stored checkpoint." in done.stdout
    # No walls of JSON: the service logs went to files in the workdir.
    assert not [line for line in done.stdout.splitlines() if line.startswith("{")]

    config = tomllib.loads((tmp_path / "wikistats.toml").read_text())
    group = config["kafka"]["group_id"]
    (topic,) = config["kafka"]["topics"]
    stats_prefix = config["handler"]["options"]["key_prefix"]

    # The first run's last accepted commit per partition, from the history.
    store = RedisCheckpointStore.from_url(redis_service.url)
    try:
        history = store.history(group, count=0)
        final = store.read(group)
    finally:
        store.close()
    commits = [e for e in history if e.kind == "commit"]
    first_owner = commits[0].owner
    stored: dict[int, int] = {}
    for entry in commits:
        if entry.owner == first_owner and entry.offset is not None:
            stored[entry.topic_partition.partition] = entry.offset
    assert 40 <= sum(stored.values()) < 100, stored

    resumed: dict[int, int | None] = {}
    for line in (tmp_path / "run-2.log").read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("event") == "partition.resumed" and entry["topic"] == topic:
            resumed[entry["partition"]] = entry["checkpoint"]
        elif entry.get("event") == "partition.started" and entry["topic"] == topic:
            resumed[entry["partition"]] = None
    assert resumed == {p: stored.get(p) for p in range(3)}

    # The demo's own table says the same.
    rows = re.findall(r"^  (\d)\s{2,}(\S+)\s{2,}(.+)$", done.stdout, re.MULTILINE)
    assert {int(p): (None if b == "none" else int(b)) for p, b, _ in rows} == {
        p: stored.get(p) for p in range(3)
    }

    records = load_records()
    assert sum(cp.offset or 0 for cp in final.values()) == len(records)
    assert all(tp.topic == topic for tp in final)
    assert set(final) == {TopicPartition(topic, p) for p in range(3)}
    assert read_stats(redis_client, stats_prefix) == compute_stats(records)


def test_demo_with_a_redis_that_does_not_answer_fails_with_a_clear_message(
    kafka: KafkaService, tmp_path: Path
) -> None:
    """A --redis-url nobody listens on: exit status 1 and a message naming the
    Redis that does not answer, without a traceback."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = run_demo_cli(
        "--bootstrap-servers",
        kafka.bootstrap_servers,
        "--redis-url",
        url,
        "--workdir",
        str(tmp_path),
        timeout_s=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"Redis at {url} does not answer" in done.stderr
    assert "Traceback" not in done.stderr
