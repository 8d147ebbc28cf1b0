"""The benchmark runner: ``python -m benchmarks.run [--quick] [options]``.

In one invocation it starts a broker and Redis on loopback (or uses the
addresses given), produces each data set once, then runs every contender
as a process of its own, scenario after scenario, over several interleaved
rounds (the order of contenders turns each round). Each result is compared
with the baseline measured in the same round, so the ratios hold even while
other work shares the machine; the report gives medians and spreads.

Output: a table on the terminal, ``--json PATH`` with every run and the
summary, and a PNG plot of the ratios (``--plot PATH``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import data, machine, report, venvs
from benchmarks.scenarios import CONTENDERS, Contender, DataSet, Scenario
from benchmarks.scenarios import data_sets as make_data_sets
from benchmarks.scenarios import scenarios as make_scenarios
from streamcp.services import KafkaService, provide_local_kafka, provide_local_redis

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONTENDER_DIR = HERE / "contenders"
RESULT_MARK = "BENCH-RESULT "

# The settings every contender's librdkafka gets (faust, on aiokafka, gets
# the session timeout). The local broker holds a new group's first join for
# about half the session timeout, so it is the shortest Apache Kafka takes
# by default plus some room; the short queue backoff keeps fetching going.
LIBRDKAFKA = {"session.timeout.ms": 10_000, "fetch.queue.backoff.ms": 10}
# Quick mode waits less for each group's first join: 6 s is the shortest
# session timeout Apache Kafka accepts by default.
QUICK_SESSION_TIMEOUT_MS = 6_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, one round, no peers (for CI)"
    )
    parser.add_argument(
        "--events",
        type=int,
        help="events per data set (default 1,000,000; quick 20,000)",
    )
    parser.add_argument(
        "--memory-events",
        type=int,
        help="events of the large memory scenario (default 5 x --events)",
    )
    parser.add_argument("--size", type=int, default=200, help="bytes per value")
    parser.add_argument("--rounds", type=int, help="default 3; quick 1")
    parser.add_argument(
        "--partitions",
        default="1,16,256",
        help="partition counts besides the headline's 4",
    )
    parser.add_argument(
        "--scenarios", help="comma-separated scenario names (default: all)"
    )
    parser.add_argument(
        "--no-peers", action="store_true", help="skip quixstreams, arroyo and faust"
    )
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=HERE / ".venvs",
        help="where the peers' virtual environments live",
    )
    parser.add_argument("--out-dir", type=Path, default=HERE / "out")
    parser.add_argument(
        "--json",
        type=Path,
        dest="json_path",
        help="write results here (default: OUT_DIR/results.json)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        help="write the ratio plot here (default: OUT_DIR/ratios.png)",
    )
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--markdown",
        type=Path,
        help="also write the results as "
        "Markdown here (the full run keeps benchmarks/RESULTS.md)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.no_peers = True
    args.events = args.events or (20_000 if args.quick else 1_000_000)
    args.memory_events = args.memory_events or 5 * args.events
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.partition_counts = tuple(int(p) for p in args.partitions.split(",") if p)
    args.librdkafka = dict(LIBRDKAFKA)
    if args.quick:
        args.librdkafka["session.timeout.ms"] = QUICK_SESSION_TIMEOUT_MS
    return args


class Services:
    """The broker and Redis of this run: given, or started here."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self._stoppable: list[Any] = []
        self.librdkafka = args.librdkafka
        self.kafka_kind = self.redis_kind = "given"
        if args.bootstrap:
            self.bootstrap = args.bootstrap
            self.kafka = None
        else:
            self.kafka = provide_local_kafka(workdir)
            self._stoppable.append(self.kafka)
            self.bootstrap = self.kafka.bootstrap_servers
            self.kafka_kind = "local tansu (memory storage)"
        if args.redis_url:
            self.redis_url = args.redis_url
        else:
            redis = provide_local_redis(workdir)
            self._stoppable.append(redis)
            self.redis_url = redis.url
            self.redis_kind = "local redis-server (appendonly, appendfsync always)"

    def create_topic(self, name: str, partitions: int) -> None:
        broker = self.kafka or KafkaService(
            self.bootstrap, kind="external", is_apache_kafka=False
        )
        broker.create_topic(name, partitions, timeout_s=60.0)

    def stop(self) -> None:
        for service in reversed(self._stoppable):
            service.stop()


def produce_data(
    services: Services, sets: dict[str, DataSet], size: int, tag: str
) -> dict[str, dict[str, Any]]:
    topics = {}
    for data_set in sets.values():
        topic = f"bench-{tag}-{data_set.name}"
        services.create_topic(topic, data_set.partitions)
        seconds = data.produce(
            services.bootstrap, topic, data_set.events, data_set.partitions, size
        )
        log(
            f"produced {data_set.events:,} events to {topic} "
            f"({data_set.partitions} partitions) in {seconds:.1f}s"
        )
        topics[data_set.name] = {
            "topic": topic,
            "partitions": data_set.partitions,
            "events": data_set.events,
            "per_partition": data.per_partition(data_set.events, data_set.partitions),
        }
    return topics


def run_contender(
    contender: Contender,
    python: Path,
    spec: dict[str, Any],
    workdir: Path,
    timeout_s: float,
) -> dict[str, Any]:
    """One process; its result, or ``{"error": ...}``. Never raises."""
    command = [str(python), str(CONTENDER_DIR / contender.script), json.dumps(spec)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not contender.venv:
        # The streamcp of this tree, whatever else the interpreter finds.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
        )
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{spec['group']}.log"
    started = time.monotonic()
    try:
        with log_path.open("w") as log_file:
            done = subprocess.run(
                command,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                timeout=timeout_s,
                cwd=workdir,
                env=env,
                check=False,
            )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f}s (log: {log_path.name})"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if not lines:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        return {
            "error": f"exit status {done.returncode}, no result: " + " | ".join(tail)
        }
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK) :])
    result["process_s"] = round(time.monotonic() - started, 2)
    if result["events"] < spec["events"]:
        result["error"] = f"saw {result['events']} of {spec['events']} events"
    return result


def spec_for(
    contender: Contender,
    scenario: Scenario,
    topic: dict[str, Any],
    services: Services,
    key_prefix: str,
) -> dict[str, Any]:
    events = scenario.events or topic["events"]
    ranges = [[p, 0, n] for p, n in enumerate(topic["per_partition"])]
    return {
        "bootstrap": services.bootstrap,
        "redis_url": services.redis_url,
        "topic": topic["topic"],
        "events": events,
        "group": f"bench-{contender.name}-{uuid.uuid4().hex[:8]}",
        "key_prefix": key_prefix,
        "librdkafka": dict(services.librdkafka),
        "ranges": ranges,
        **contender.spec,
    }


def interpreters(args: argparse.Namespace, names: set[str]) -> dict[str, Any]:
    """Interpreter per venv name ('' is this one), or the reason it has none."""
    found: dict[str, Any] = {"": Path(sys.executable)}
    for name in sorted(names - {""}):
        log(f"preparing the {name} venv under {args.cache_dir} ...")
        env = venvs.ensure(name, args.cache_dir)
        found[name] = env
        if env.python is None:
            log(f"  {name}: not run: {env.error}")
    return found


@dataclass(frozen=True)
class Bench:
    """What every run of one invocation shares."""

    services: Services
    topics: dict[str, dict[str, Any]]
    pythons: dict[str, Any]
    workdir: Path


def run_rounds(
    bench: Bench, rounds: int, chosen: list[Scenario]
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for round_index in range(rounds):
        for scenario in chosen:
            names = list(scenario.contenders)
            turn = round_index % len(names)
            for name in names[turn:] + names[:turn]:
                runs.append(one_run(bench, scenario, CONTENDERS[name], round_index))
    return runs


def one_run(
    bench: Bench, scenario: Scenario, contender: Contender, round_index: int
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "round": round_index + 1,
        "scenario": scenario.name,
        "contender": contender.name,
    }
    interpreter = bench.pythons.get(contender.venv)
    python = (
        interpreter
        if isinstance(interpreter, Path)
        else getattr(interpreter, "python", None)
    )
    if python is None:
        row["not_run"] = getattr(interpreter, "error", "no interpreter")
        return row
    spec = spec_for(
        contender,
        scenario,
        bench.topics[scenario.data],
        bench.services,
        f"bench{uuid.uuid4().hex[:8]}",
    )
    timeout_s = 90 + spec["events"] / 5_000
    result = run_contender(contender, python, spec, bench.workdir, timeout_s)
    row.update(result)
    shown = (
        f"{result['events'] / result['wall_s']:>12,.0f} ev/s"
        if "error" not in result and result.get("wall_s")
        else f"  FAILED: {result.get('error')}"
    )
    log(f"round {round_index + 1} {scenario.name:<16} {contender.name:<28} {shown}")
    return row


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    chosen = make_scenarios(
        args.events, args.memory_events, args.partition_counts, peers=not args.no_peers
    )
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        chosen = [
            s for s in chosen if s.name in wanted or s.name.split("-")[0] in wanted
        ]
    sets = make_data_sets(args.events, args.memory_events, args.partition_counts)
    sets = {
        name: s for name, s in sets.items() if any(sc.data == name for sc in chosen)
    }
    needed = {CONTENDERS[c].venv for s in chosen for c in s.contenders}
    started = time.time()
    pythons = interpreters(args, needed)
    services = Services(args, args.out_dir / "services")
    try:
        topics = produce_data(services, sets, args.size, uuid.uuid4().hex[:6])
        bench = Bench(services, topics, pythons, args.out_dir / "logs")
        runs = run_rounds(bench, args.rounds, chosen)
        described = machine.describe(services.redis_url)
    finally:
        services.stop()
    results = {
        "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "settings": {
            "events": args.events,
            "memory_events": args.memory_events,
            "size": args.size,
            "rounds": args.rounds,
            "librdkafka": args.librdkafka,
            "quick": args.quick,
        },
        "machine": described,
        "services": {"kafka": services.kafka_kind, "redis": services.redis_kind},
        "versions": machine.versions(pythons),
        "scenarios": [
            {
                "name": s.name,
                "title": s.title,
                "data": s.data,
                "contenders": list(s.contenders),
                "baseline": list(s.baseline),
            }
            for s in chosen
        ],
        "labels": {name: c.label for name, c in CONTENDERS.items()},
        "runs": runs,
    }
    results["summary"] = report.summarize(results)
    results["targets"] = report.targets(results)
    print(report.table(results))
    json_path = args.json_path or args.out_dir / "results.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2))
    log(f"results: {json_path}")
    drawn = None if args.no_plot else plot(args, json_path)
    if args.markdown:
        beside = drawn is not None and (
            drawn.parent.resolve() == args.markdown.parent.resolve()
        )
        name = drawn.name if drawn is not None and beside else None
        args.markdown.write_text(report.markdown(results, name))
        log(f"markdown: {args.markdown}")
    failed = [r for r in results["runs"] if "error" in r]
    return 1 if failed else 0


def plot(args: argparse.Namespace, json_path: Path) -> Path | None:
    """Draw the ratio plot; its path, or None when it could not be drawn."""
    target = args.plot or args.out_dir / "ratios.png"
    python: Path | None = Path(sys.executable)
    if importlib.util.find_spec("matplotlib") is None:
        if args.quick:
            log("plot not drawn: matplotlib is not installed (pip install matplotlib)")
            return None
        env = venvs.ensure("plot", args.cache_dir)
        python = env.python
        if python is None:
            log(f"plot not drawn: {env.error}")
            return None
    done = subprocess.run(
        [
            str(python),
            str(HERE / "plot.py"),
            str(json_path),
            str(target),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        log(f"plot not drawn: {done.stderr.strip().splitlines()[-1:]}")
        return None
    log(f"plot: {target}")
    return target


if __name__ == "__main__":
    sys.exit(main())
