"""``streamcp demo``: real Wikimedia events, a service stopped midway and resumed.

The demo loads the 100 bundled recent-change events into a fresh 3-partition
topic, runs ``streamcp run`` with the :mod:`wikistats
<streamcp.examples.wikistats>` handler, stops it with SIGTERM once about 40
events are counted, starts it again until it has caught up, and checks that

* the second process resumed every partition exactly at the checkpoint the
  first one stored;
* the final checkpoints are at the partition ends;
* the statistics in Redis equal an independent computation over the file.

Broker and Redis: the ones given, else ``STREAMCP_DEMO_KAFKA_BOOTSTRAP`` /
``STREAMCP_DEMO_REDIS_URL``, else local ones started for the demo (see
:mod:`streamcp.services`) and stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis
from confluent_kafka import KafkaException

from streamcp.config import redact_url
from streamcp.events import TopicPartition
from streamcp.examples.wikistats import (
    DATA_FILE,
    Stats,
    compute_stats,
    load_records,
    read_stats,
)
from streamcp.logs import configure_logging
from streamcp.redis_store import RedisCheckpointStore
from streamcp.sample import partition_ends, sample_records
from streamcp.services import (
    KafkaService,
    ServiceUnavailableError,
    produce_records,
    provide_kafka,
    provide_redis,
)

KAFKA_ENV = "STREAMCP_DEMO_KAFKA_BOOTSTRAP"
REDIS_ENV = "STREAMCP_DEMO_REDIS_URL"

PARTITIONS = 3
STOP_AFTER_EVENTS = 40
FIRST_RUN_DELAY_MS = 50
WAIT_S = 60.0
EXIT_WAIT_S = 30.0

NAMESPACES = {
    0: "articles",
    1: "Talk",
    2: "User",
    3: "User talk",
    4: "Wikipedia",
    5: "Wikipedia talk",
    6: "File",
    10: "Template",
    14: "Category",
    118: "Draft",
}


class DemoFailed(Exception):  # reads as the outcome it reports
    """A step of the demo did not come out as it must; the message says how."""


def run_demo(
    *, bootstrap_servers: str | None, redis_url: str | None, workdir: Path
) -> int:
    """Run the demo (see the module docstring); returns the exit status."""
    configure_logging("warning", "console", sys.stderr)
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    heading("streamcp demo: 100 Wikimedia edits, a service stopped midway and resumed")
    try:
        with ExitStack() as stack:
            kafka = stack.enter_context(_kafka(bootstrap_servers, workdir))
            url = stack.enter_context(_redis(redis_url, workdir))
            _Demo(kafka, url, workdir).run()
    except DemoFailed as exc:
        print(f"\nstreamcp demo: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except (KafkaException, redis.RedisError) as exc:
        print(
            f"\nstreamcp demo: FAILED: {type(exc).__name__}: {exc}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    say(f"\nDemo finished in {time.monotonic() - started:.1f} s.")
    return 0


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say(f"\n== {text}")


# -- services ------------------------------------------------------------------


@contextmanager
def _kafka(bootstrap_servers: str | None, workdir: Path) -> Iterator[KafkaService]:
    if bootstrap_servers:
        kafka = KafkaService(
            bootstrap_servers=bootstrap_servers, kind="external", is_apache_kafka=False
        )
        try:
            kafka.admin().list_topics(timeout=10)
        except KafkaException as exc:
            raise ServiceUnavailableError(
                f"no Kafka broker answers at {bootstrap_servers}: {exc}"
            ) from exc
        say(f"Kafka: {bootstrap_servers} (given with --bootstrap-servers)")
    else:
        kafka = provide_kafka(KAFKA_ENV, workdir / "kafka")
        say(
            f"Kafka: {kafka.bootstrap_servers} ({_origin(kafka.kind, KAFKA_ENV)}"
            f"{_log_note(kafka.log_path)})"
        )
    try:
        yield kafka
    finally:
        if kafka.kind != "external":
            kafka.stop()
            say(f"Stopped the {kafka.kind} Kafka broker started for the demo.")


@contextmanager
def _redis(redis_url: str | None, workdir: Path) -> Iterator[str]:
    if redis_url:
        client = redis.Redis.from_url(
            redis_url, socket_timeout=5, socket_connect_timeout=5
        )
        try:
            client.ping()
        except redis.RedisError as exc:
            raise ServiceUnavailableError(
                f"Redis at {redact_url(redis_url)} does not answer: {exc}"
            ) from exc
        finally:
            client.close()
        say(f"Redis: {redact_url(redis_url)} (given with --redis-url)")
        yield redis_url
        return
    service = provide_redis(REDIS_ENV, workdir / "redis")
    say(
        f"Redis: {redact_url(service.url)} ({_origin(service.kind, REDIS_ENV)}"
        f"{_log_note(service.log_path)})"
    )
    try:
        yield service.url
    finally:
        if service.kind != "external":
            service.stop()
            say(f"Stopped the {service.kind} Redis started for the demo.")


def _origin(kind: str, env_var: str) -> str:
    return {
        "external": f"from {env_var}",
        "container": "a container started for the demo",
        "local": "started for the demo on 127.0.0.1",
    }.get(kind, kind)


def _log_note(path: Path | None) -> str:
    return f"; its log: {path}" if path is not None else ""


# -- the demo itself -------------------------------------------------------------


class _Demo:
    def __init__(self, kafka: KafkaService, redis_url: str, workdir: Path) -> None:
        run_id = uuid.uuid4().hex[:8]
        self.kafka = kafka
        self.redis_url = redis_url
        self.workdir = workdir
        self.topic = f"wikimedia.recentchange.{run_id}"
        self.group = f"streamcp-demo-{run_id}"
        self.stats_prefix = f"wikistats-demo-{run_id}"
        self.config_path = workdir / "wikistats.toml"
        self.records = load_records(DATA_FILE)
        self.ends: dict[int, int] = {}
        self.client = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.store = RedisCheckpointStore.from_url(redis_url)

    def run(self) -> None:
        try:
            self.load_topic()
            self.write_config()
            stored = self.first_run()
            self.second_run(stored)
            self.final_checkpoints()
            self.statistics()
        finally:
            self.client.close()
            self.store.close()

    def load_topic(self) -> None:
        heading("Loading the events")
        self.kafka.create_topic(self.topic, PARTITIONS)
        produce_records(
            self.kafka.bootstrap_servers, self.topic, sample_records(DATA_FILE)
        )
        self.ends = self.partition_ends()
        say(
            f"{len(self.records)} events from {DATA_FILE.name}, keyed by page title "
            f"and stamped with their own time,"
        )
        say(f"into the new topic {self.topic} ({PARTITIONS} partitions):")
        for partition, end in sorted(self.ends.items()):
            say(f"  partition {partition}: {end} events (offsets 0-{end - 1})")
        if sum(self.ends.values()) != len(self.records):
            raise DemoFailed(
                f"the partitions' end offsets add up to {sum(self.ends.values())}, "
                f"not the {len(self.records)} events produced"
            )

    def partition_ends(self) -> dict[int, int]:
        return partition_ends(
            self.kafka.bootstrap_servers, self.topic, range(PARTITIONS)
        )

    def write_config(self) -> None:
        q = json.dumps  # a JSON string is a TOML basic string
        self.config_path.write_text(f"""\
# Written by `streamcp demo`: the wikistats example on {self.topic}.
[kafka]
bootstrap_servers = {q(self.kafka.bootstrap_servers)}
group_id = {q(self.group)}
topics = [{q(self.topic)}]
session_timeout_ms = 6000

[commit]
every_events = 10
every_seconds = 1

[consumer]
# Small batches and few events in flight, so that a stop lands midway.
batch_size = 5
max_in_flight_events = 10

[redis]
url = {q(self.redis_url)}

[log]
format = "json"

[handler]
name = "wikistats"

[handler.options]
redis_url = {q(self.redis_url)}
key_prefix = {q(self.stats_prefix)}
delay_ms = {FIRST_RUN_DELAY_MS}
""")
        # The file may hold a Redis password given on the command line.
        self.config_path.chmod(0o600)

        heading("The service's configuration")
        say(f"Config file: {self.config_path}")
        say(
            f"Consumer group {self.group}; checkpoints in Redis under "
            f"streamcp:v1:{{{self.group}}}:*"
        )
        say(f"Handler: wikistats, statistics in Redis under {{{self.stats_prefix}}}:*")

    # -- the two runs ----------------------------------------------------------

    def first_run(self) -> dict[int, int | None]:
        heading(
            f"First run: sleeps {FIRST_RUN_DELAY_MS} ms per event; SIGTERM once "
            f"{STOP_AFTER_EVENTS} events are counted"
        )
        log_path = self.workdir / "run-1.log"
        argv = ["run", "--config", str(self.config_path)]
        say(f"$ streamcp {' '.join(argv)}    (log: {log_path})")
        with _service(argv, log_path) as proc:
            began = time.monotonic()
            counted = self.wait_for_events(proc, log_path, STOP_AFTER_EVENTS)
            say(
                f"{counted} events counted after {time.monotonic() - began:.1f} s: "
                f"sending SIGTERM"
            )
            proc.send_signal(signal.SIGTERM)
            status = _wait_exit(proc, log_path)
        if status != 0:
            raise DemoFailed(
                f"the first run exited with status {status} after "
                f"SIGTERM, not 0{_tail(log_path)}"
            )
        say("It stopped gracefully (exit status 0), committing what it had handled.")
        stored = self.checkpoints()
        say("\nCheckpoints after the first run (the next offset to process):")
        for partition, offset in sorted(stored.items()):
            end = self.ends[partition]
            if offset is None:
                say(f"  partition {partition}: no checkpoint yet ({end} to process)")
            else:
                say(
                    f"  partition {partition}: {offset:>3} of {end}  "
                    f"({end - offset} still to process)"
                )
        done = sum(offset or 0 for offset in stored.values())
        counted_now = read_stats(self.client, self.stats_prefix)["events"]
        say(
            f"Events behind the checkpoints: {done}; events counted in Redis: "
            f"{counted_now}."
        )
        if all(offset == self.ends[p] for p, offset in stored.items()):
            say(
                "(Note: the first run got through everything before it stopped; "
                "the resume below has nothing left to do.)"
            )
        return stored

    def wait_for_events(
        self, proc: subprocess.Popen[bytes], log_path: Path, wanted: int
    ) -> int:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            counted = int(read_stats(self.client, self.stats_prefix)["events"])
            if counted >= wanted:
                return counted
            if proc.poll() is not None:
                raise DemoFailed(
                    f"the first run exited with status {proc.returncode} "
                    f"before counting {wanted} events{_tail(log_path)}"
                )
            time.sleep(0.05)
        raise DemoFailed(
            f"the first run did not count {wanted} events within "
            f"{WAIT_S:.0f} s{_tail(log_path)}"
        )

    def second_run(self, stored: dict[int, int | None]) -> None:
        heading("Second run: no delay, stops by itself once caught up")
        log_path = self.workdir / "run-2.log"
        argv = [
            "run",
            "--config",
            str(self.config_path),
            "--set",
            "handler.options.delay_ms=0",
            "--stop-when-caught-up",
        ]
        say(f"$ streamcp {' '.join(argv)}")
        say(f"  (log: {log_path})")
        began = time.monotonic()
        with _service(argv, log_path) as proc:
            status = _wait_exit(proc, log_path, WAIT_S)
        if status != 0:
            raise DemoFailed(
                f"the second run exited with status {status}, not 0{_tail(log_path)}"
            )
        say(
            f"It caught up and exited with status 0 after "
            f"{time.monotonic() - began:.1f} s."
        )
        resumed = self.resumed_at(log_path)
        say("\nWhere the second run started (its partition.resumed log lines):")
        say("  partition  stored checkpoint after first run  second run resumed at")
        wrong = []
        for partition in range(PARTITIONS):
            before = stored.get(partition)
            after = resumed.get(partition, "not logged")
            before_text = "none" if before is None else str(before)
            after_text = "from the beginning" if after is None else str(after)
            say(f"  {partition:<9}  {before_text:<33}  {after_text}")
            if after != before:
                wrong.append(partition)
        if wrong:
            raise DemoFailed(
                f"the second run did not resume partition(s) {wrong} at the stored "
                f"checkpoints (see {log_path})"
            )
        say("Every partition resumed exactly at its stored checkpoint.")
        fresh = [p for p in range(PARTITIONS) if stored.get(p) is None]
        if fresh:
            say(
                f"(Partition {', '.join(map(str, fresh))}: nothing handled in the "
                f"first run, so no checkpoint;\n the second run started it from the "
                f"beginning, as consumer.start_policy = earliest says.)"
            )

    def resumed_at(self, log_path: Path) -> dict[int, int | None]:
        """Partition -> checkpoint the service resumed at (None: no checkpoint)."""
        found: dict[int, int | None] = {}
        for line in log_path.read_text("utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(entry, dict) or entry.get("topic") != self.topic:
                continue
            partition = entry.get("partition")
            if not isinstance(partition, int) or partition in found:
                continue
            if entry.get("event") == "partition.resumed":
                found[partition] = int(entry["checkpoint"])
            elif entry.get("event") == "partition.started":
                found[partition] = None
        return found

    def checkpoints(self) -> dict[int, int | None]:
        read = self.store.read(self.group)
        cps: dict[int, int | None] = {p: None for p in range(PARTITIONS)}
        for p in range(PARTITIONS):
            cp = read.get(TopicPartition(self.topic, p))
            if cp is not None:
                cps[p] = cp.offset
        return cps

    # -- the outcome -------------------------------------------------------------

    def final_checkpoints(self) -> None:
        heading("Final checkpoints")
        final = self.checkpoints()
        for partition, offset in sorted(final.items()):
            say(f"  partition {partition}: {offset} of {self.ends[partition]}")
        behind = [p for p, offset in final.items() if offset != self.ends[p]]
        if behind:
            raise DemoFailed(f"partition(s) {behind} are not checkpointed at their end")
        say("Every partition is checkpointed at its end.")

    def statistics(self) -> None:
        stats = read_stats(self.client, self.stats_prefix)
        heading(f"Statistics in Redis ({stats['events']} events)")
        show_stats(stats)
        expected = compute_stats(self.records)
        if stats != expected:
            raise DemoFailed(
                "the statistics in Redis differ from a computation over "
                f"{DATA_FILE}: {_differences(stats, expected)}"
            )
        say("\nstatistics match an independent computation of the data file")


def show_stats(stats: Stats, top: int = 5) -> None:
    say("Edits per namespace:")
    namespaces = sorted(stats["edits_by_namespace"].items(), key=lambda kv: -kv[1])
    for namespace, edits in namespaces[:top]:
        name = NAMESPACES.get(namespace, "")
        say(f"  {edits:>4}  namespace {namespace} {name}".rstrip())
    say("Pages with the most bytes added:")
    pages = sorted(stats["bytes_added_by_page"].items(), key=lambda kv: (-kv[1], kv[0]))
    for title, added in pages[:top]:
        say(f"  {added:>+6}  {title}")
    say(
        f"Bots vs people: {stats['bot_edits']} edits by bots, "
        f"{stats['human_edits']} by people"
    )


def _differences(got: Stats, expected: Stats) -> str:
    parts = []
    for key, want in expected.items():
        have = got.get(key)
        if have == want:
            continue
        if isinstance(want, dict) and isinstance(have, dict):
            keys = {k for k in want.keys() | have.keys() if have.get(k) != want.get(k)}
            parts.append(f"{key} differs for {sorted(map(str, keys))[:5]}")
        else:
            parts.append(f"{key} is {have} instead of {want}")
    return "; ".join(parts)


# -- the service processes ------------------------------------------------------------


def _service_command() -> list[str]:
    return [sys.executable, "-m", "streamcp.cli"]


def _child_env() -> dict[str, str]:
    # STREAMCP_<SECTION>__<FIELD> variables would override the demo's config.
    return {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("STREAMCP_") and "__" in k)
    }


@contextmanager
def _service(argv: Sequence[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``streamcp ARGV`` with its output in ``log_path``; killed if left running."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603  # our own interpreter and arguments
            [*_service_command(), *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_env(),
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _wait_exit(
    proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = EXIT_WAIT_S
) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise DemoFailed(
            f"the service did not exit within {timeout_s:.0f} s "
            f"(killed it){_tail(log_path)}"
        ) from exc


def _tail(log_path: Path, lines: int = 8) -> str:
    try:
        text = log_path.read_text("utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    shown = "\n    ".join(line[:300] for line in text[-lines:])
    return f"; the end of {log_path}:\n    {shown}" if shown else f" (log: {log_path})"
