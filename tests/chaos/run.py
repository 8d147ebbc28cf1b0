"""Run the fault-injection suite: ``python -m tests.chaos.run --help``.

A run starts a private broker, a private Redis and several instances,
produces events with ids the whole time, injects episodes drawn from a
shuffled deck of fault kinds until the duration has passed and every
kind reached its minimum count, lets the group catch up, stops it
gracefully and checks the invariants (:mod:`tests.chaos.check`). Exit
status 0 when every invariant held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streamcp.services import KafkaService
from tests.chaos.check import Report, RunRecords, check
from tests.chaos.cluster import Cluster, ClusterSettings
from tests.chaos.faults import KINDS, Injector
from tests.chaos.handler import read_calls

# One of each kind, and two crashes: the short mode's deck.
SHORT_DECK: Mapping[str, int] = {
    "kill": 2,
    "rebalance": 1,
    "zombie": 1,
    "redis_outage": 1,
    "redis_crash": 1,
    "store_loss": 1,
    "broker_freeze": 1,
    "kill_in_outage": 1,
}
# About 3.5 minutes of episodes per deck with the default gaps.
LONG_DECK: Mapping[str, int] = {
    "kill": 7,
    "rebalance": 2,
    "zombie": 1,
    "redis_outage": 3,
    "redis_crash": 1,
    "store_loss": 1,
    "broker_freeze": 1,
    "kill_in_outage": 1,
}
# What a soak must reach whatever its duration.
LONG_MINIMUM: Mapping[str, int] = {"kill": 30, "redis_outage": 10, "zombie": 5}
CATCH_UP_TIMEOUT_S = 180.0


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """How long to inject which faults."""

    duration_s: float
    deck: Mapping[str, int]
    minimum: Mapping[str, int] = field(default_factory=dict)
    gap_s: tuple[float, float] = (1.0, 3.0)
    warmup_s: float = 4.0
    # Past the duration, episodes go on only until the minimums are met,
    # and never past this.
    limit_s: float = 0.0

    def minimum_counts(self) -> dict[str, int]:
        wanted = {kind: 1 for kind, n in self.deck.items() if n > 0}
        for kind, n in self.minimum.items():
            wanted[kind] = max(wanted.get(kind, 0), n)
        wanted["handler_failure"] = 1
        wanted["handler_slow"] = 1
        return wanted


def short_plan() -> RunPlan:
    """Every kind once (crashes twice): CI's run, about two minutes."""
    return RunPlan(
        duration_s=0.0,
        deck=SHORT_DECK,
        minimum=SHORT_DECK,
        gap_s=(0.5, 1.5),
        limit_s=240.0,
    )


def long_plan(duration_s: float, gap_s: tuple[float, float]) -> RunPlan:
    return RunPlan(
        duration_s=duration_s,
        deck=LONG_DECK,
        minimum=LONG_MINIMUM,
        gap_s=gap_s,
        limit_s=duration_s * 1.5,
    )


class Deck:
    """Fault kinds in shuffled rounds; past the duration, only kinds that
    have not reached their minimum yet."""

    def __init__(self, plan: RunPlan, rng: random.Random) -> None:
        self._plan = plan
        self._rng = rng
        self._cards: list[str] = []

    def draw(self, counts: Mapping[str, int], overtime: bool) -> str | None:
        if overtime:
            short = [k for k, n in self._plan.minimum.items() if counts.get(k, 0) < n]
            self._cards = [c for c in self._cards if c in short]
            if not short:
                return None
            if not self._cards:
                self._cards = list(short)
                self._rng.shuffle(self._cards)
        if not self._cards:
            self._cards = [k for k, n in self._plan.deck.items() for _ in range(n)]
            self._rng.shuffle(self._cards)
        return self._cards.pop()


def run_chaos(
    settings: ClusterSettings,
    plan: RunPlan,
    workdir: Path,
    say: bool = True,
    kafka: KafkaService | None = None,
) -> Report:
    """One run, start to report; stops everything it started.

    ``kafka``: a broker to use instead of a private local one; the plan
    must then leave out ``broker_freeze``.
    """
    rng = random.Random(settings.seed)
    cluster = Cluster(settings, workdir, kafka)
    began = time.time()
    try:
        cluster.start(produce_limit_s=plan.limit_s + CATCH_UP_TIMEOUT_S)
        injector = Injector(cluster, rng)
        _warm_up(cluster, injector, plan)
        _inject(injector, plan, rng, began, say)
        return _finish(cluster, injector, plan, began)
    finally:
        cluster.close()


def _warm_up(cluster: Cluster, injector: Injector, plan: RunPlan) -> None:
    time.sleep(plan.warmup_s)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not injector.quiet_since(0.0):
        time.sleep(0.2)


def _inject(
    injector: Injector, plan: RunPlan, rng: random.Random, began: float, say: bool
) -> None:
    deck = Deck(plan, rng)
    if plan.duration_s <= 0:
        cards = [k for k, n in plan.deck.items() for _ in range(n)]
        rng.shuffle(cards)
    while True:
        elapsed = time.time() - began
        if elapsed > plan.limit_s:
            break
        if plan.duration_s <= 0:
            if not cards:
                break
            kind: str | None = cards.pop()
        else:
            kind = deck.draw(injector.counts, overtime=elapsed > plan.duration_s)
        if kind is None:
            break
        episode = injector.inject(kind)
        if say:
            took = episode.window_end - episode.started_at
            print(
                f"[{elapsed:6.0f}s] {kind:<13} {took:5.1f}s  {episode.detail}"
                + (f"  PROBLEMS: {episode.problems}" if episode.problems else ""),
                flush=True,
            )
        time.sleep(rng.uniform(*plan.gap_s))


def _finish(
    cluster: Cluster, injector: Injector, plan: RunPlan, began: float
) -> Report:
    cluster.reap()
    cluster.ensure(cluster.settings.instances)
    assert cluster.producer is not None
    cluster.producer.stop()
    _catch_up(cluster, injector)
    cluster.stop_all()
    records, ends = cluster.read_topic()
    run = RunRecords(
        settings=cluster.settings,
        topic=cluster.topic,
        calls=list(read_calls(cluster.record_path)),
        topic_records=records,
        ends=ends,
        acked_ids=cluster.producer.acked,
        history_segments=[*cluster.archived_history, cluster.history()],
        final_checkpoints=cluster.checkpoints() or {},
        episodes=injector.episodes,
        instances=cluster.instances,
        fault_counts=injector.counts,
        minimum_counts=plan.minimum_counts(),
        duration_s=time.time() - began,
    )
    report = check(run)
    report.figures["rebalances (joins + leaves)"] = (
        f"{injector.joins + injector.leaves} "
        f"({injector.joins} joins, {injector.leaves} leaves)"
    )
    report.figures["broker group stalls (moved to a new group)"] = injector.stalls
    report.figures["produce calls that failed"] = len(cluster.producer.errors)
    (cluster.workdir / "report.json").write_text(
        json.dumps(
            {"figures": report.figures, "failures": report.failures},
            indent=2,
            default=str,
        )
    )
    return report


def _catch_up(cluster: Cluster, injector: Injector) -> None:
    """Wait until every checkpoint reached its partition's end."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while time.monotonic() < deadline:
        injector.unstall()
        cluster.reap()
        cluster.ensure(cluster.settings.instances)
        ends = cluster.end_offsets()
        checkpoints = cluster.checkpoints() or {}
        done = {tp.partition: cp.offset for tp, cp in checkpoints.items()}
        if ends is not None and all(done.get(p) == end for p, end in ends.items()):
            return
        time.sleep(0.5)


def _parse_counts(text: str) -> dict[str, int]:
    counts = {}
    for item in filter(None, text.split(",")):
        kind, _, number = item.partition("=")
        if kind not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown fault kind {kind!r}")
        counts[kind] = int(number)
    return counts


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos.run",
        description="Fault injection against a private broker, Redis and "
        "streamcp instances on 127.0.0.1.",
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help="every fault kind once (crashes twice), as in CI",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=900.0,
        help="seconds of fault injection (long mode)",
    )
    parser.add_argument(
        "--gap",
        type=float,
        nargs=2,
        default=(1.0, 3.0),
        metavar=("MIN_S", "MAX_S"),
        help="pause between episodes: the fault rate",
    )
    parser.add_argument(
        "--deck",
        type=_parse_counts,
        default=None,
        help="episodes per round, e.g. kill=7,zombie=1",
    )
    parser.add_argument(
        "--min",
        dest="minimum",
        type=_parse_counts,
        default=None,
        help="counts to reach, e.g. kill=30,redis_outage=10",
    )
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where logs, records and report.json go",
    )
    args = parser.parse_args(argv)

    seed = args.seed
    if seed is None:
        seed = random.SystemRandom().randrange(10**6)
    plan = short_plan() if args.short else long_plan(args.duration, tuple(args.gap))
    if args.deck is not None:
        plan = RunPlan(**{**plan.__dict__, "deck": args.deck})
    if args.minimum is not None:
        plan = RunPlan(**{**plan.__dict__, "minimum": args.minimum})
    settings = ClusterSettings(
        partitions=args.partitions,
        instances=args.instances,
        max_instances=max(args.instances + 2, 2),
        seed=seed,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="streamcp-chaos-"))
    print(f"chaos run: seed {seed}, workdir {workdir}", flush=True)
    # SIGTERM unwinds like Ctrl-C, so every process the run started stops.
    signal.signal(signal.SIGTERM, _interrupt)
    report = run_chaos(settings, plan, workdir)
    print(report.render(), flush=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
