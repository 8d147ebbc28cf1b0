"""The faults the suite injects, one episode at a time.

Each episode disrupts the cluster, then waits until it has *settled*: every
partition is owned by a live instance and committed after the disruption
ended. Faults never overlap, so a duplicate can be pinned on the episode
during whose window its first handling happened (see :mod:`tests.chaos.check`).
"""

from __future__ import annotations

import json
import random
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tests.chaos.cluster import Cluster, Instance

KINDS = (
    "kill",
    "rebalance",
    "zombie",
    "redis_outage",
    "redis_crash",
    "store_loss",
    "broker_freeze",
    "kill_in_outage",
)
# Kinds whose hand-overs are graceful: the commit policy allows no
# duplicate at all for them (revocation and shutdown commit first).
GRACEFUL = ("rebalance",)
# How long an episode may take to settle before the run says so.
SETTLE_TIMEOUT_S = 150.0
# After this long unsettled, instances still without an assignment are
# restarted (see Injector._unstall).
STALL_S = 25.0
# How long instances get to notice a store loss and stop.
STORE_LOSS_STOP_S = 45.0


@dataclass
class Episode:
    """One injected fault: what, when, whom it hit, and what went wrong."""

    kind: str
    started_at: float
    ended_at: float = 0.0
    settled_at: float = 0.0
    pids: tuple[int, ...] = ()
    detail: str = ""
    problems: list[str] = field(default_factory=list)
    stalls: int = 0

    @property
    def window_end(self) -> float:
        return self.settled_at or self.ended_at


def log_events(instance: Instance, since: float = 0.0) -> list[dict[str, Any]]:
    """The instance's JSON log events stamped at or after ``since``."""
    found = []
    for line in instance.log_text().splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        stamp = event.get("timestamp")
        at = datetime.fromisoformat(stamp).timestamp() if stamp else 0.0
        if at >= since:
            event["_at"] = at
            found.append(event)
    return found


def _saw(instance: Instance, names: tuple[str, ...], since: float) -> bool:
    return any(e.get("event") in names for e in log_events(instance, since))


_ASSIGNMENT_EVENTS = ("partition.assigned", "partition.revoked", "partition.lost")


def _last_assignment_event(instance: Instance) -> dict[str, Any] | None:
    found = None
    for event in log_events(instance):
        if event.get("event") in _ASSIGNMENT_EVENTS:
            found = event
    return found


def _assigned(instance: Instance) -> bool:
    """The instance holds partitions now, by its own log."""
    last = _last_assignment_event(instance)
    return (
        last is not None
        and last["event"] == "partition.assigned"
        and bool(last.get("partitions"))
    )


def _assignment_changed(instance: Instance) -> float:
    last = _last_assignment_event(instance)
    return last["_at"] if last is not None else instance.started_at


def _owner_pid(owner: str) -> int | None:
    parts = owner.split(":")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


class Injector:
    """Injects episodes into one cluster; bounded waits everywhere."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.episodes: list[Episode] = []
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.joins = 0
        self.stalls = 0
        self.leaves = 0

    def inject(self, kind: str) -> Episode:
        """Run one episode of ``kind`` and wait for the group to settle."""
        episode = Episode(kind, time.time())
        getattr(self, f"_{kind}")(episode)
        if not episode.ended_at:
            episode.ended_at = time.time()
        self.counts[kind] += 1
        self.episodes.append(episode)
        self.settle(episode)
        return episode

    def settle(self, episode: Episode) -> None:
        """Wait (bounded) until the group settled after ``episode``."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        stall_at = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            self._replace_unexpected(episode)
            if self.quiet_since(episode.ended_at):
                episode.settled_at = time.time()
                return
            if time.monotonic() >= stall_at:
                episode.stalls += self.unstall()
                stall_at = time.monotonic() + 1.0
            time.sleep(0.2)
        episode.problems.append(
            f"did not settle within {SETTLE_TIMEOUT_S}s: not every partition "
            f"was committed by a live owner after the episode"
        )

    def unstall(self) -> bool:
        """Move the instances to a new consumer group when one has been
        without partitions for ``STALL_S``; True if it did.

        The local broker sometimes stops answering the JoinGroup requests
        of a group for good (seen when a member left in the middle of a
        rebalance, and after a store loss, when every member left at once
        and new ones joined); new processes then wait forever. The
        instances stop gracefully (no duplicates), the checkpoints are
        copied over, and each move is counted and reported.
        """
        now = time.time()
        stuck = [
            i
            for i in self.cluster.alive()
            if not _assigned(i) and now - _assignment_changed(i) >= STALL_S
        ]
        if not stuck:
            return False
        self.cluster.move_to_new_group()
        self.stalls += 1
        return True

    def quiet_since(self, since: float) -> bool:
        """Every partition owned by a live instance and committed after
        ``since`` (Unix time)."""
        checkpoints = self.cluster.checkpoints()
        if checkpoints is None or len(checkpoints) < self.cluster.settings.partitions:
            return False
        alive = {i.pid for i in self.cluster.alive()}
        return all(
            _owner_pid(cp.owner) in alive
            and cp.committed_at is not None
            and cp.committed_at.timestamp() > since
            for cp in checkpoints.values()
        )

    def _replace_unexpected(self, episode: Episode) -> None:
        for instance in self.cluster.reap():
            episode.problems.append(
                f"instance {instance.name} (pid {instance.pid}) exited by itself "
                f"with status {instance.exit_code}"
            )
        self.cluster.ensure(self.cluster.settings.instances)

    def _await_assigned(
        self, instance: Instance, since: float, timeout_s: float = 30.0
    ) -> None:
        self._await_all_assigned([instance], since, timeout_s)

    def _await_all_assigned(
        self, instances: list[Instance], since: float, timeout_s: float = 30.0
    ) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = list(instances)
        while waiting and time.monotonic() < deadline:
            waiting = [
                i
                for i in waiting
                if i.alive and not _saw(i, ("partition.assigned",), since)
            ]
            time.sleep(0.2)

    def _await_stable(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(_assigned(i) for i in self.cluster.alive()):
                return
            time.sleep(0.2)

    def _busy_instance(self) -> Instance | None:
        """A live instance that owns at least one partition in Redis."""
        checkpoints = self.cluster.checkpoints() or {}
        owners = {_owner_pid(cp.owner) for cp in checkpoints.values()}
        busy = [i for i in self.cluster.alive() if i.pid in owners]
        return self.rng.choice(busy) if busy else None

    # -- the kinds --------------------------------------------------------------

    def _kill(self, episode: Episode) -> None:
        victim = self.rng.choice(self.cluster.alive())
        episode.pids = (victim.pid,)
        time.sleep(self.rng.uniform(0.0, 1.5))  # a random moment
        self.cluster.kill(victim)
        time.sleep(self.rng.uniform(0.2, 2.0))
        fresh = self.cluster.add_instance()
        episode.detail = f"killed {victim.name}, started {fresh.name}"
        self._await_assigned(fresh, fresh.started_at)

    def _rebalance(self, episode: Episode) -> None:
        """A storm: instances join and leave every second or few, without
        waiting for the group to settle in between."""
        settings = self.cluster.settings
        low = max(1, settings.instances - 1)
        actions = []
        for _ in range(self.rng.randint(3, 5)):
            alive = self.cluster.alive()
            join = len(alive) <= low or (
                len(alive) < settings.max_instances and self.rng.random() < 0.5
            )
            if join:
                fresh = self.cluster.add_instance()
                actions.append(f"{fresh.name} joined")
                self.joins += 1
            else:
                # The local broker can wedge a group for good when a member
                # leaves in the middle of a rebalance, so a leave waits (a
                # little) for the group to be stable; joins never wait.
                self._await_stable(timeout_s=10.0)
                alive = self.cluster.alive()
                leaver = self.rng.choice(alive)
                episode.pids += (leaver.pid,)
                self.cluster.leave(leaver)
                actions.append(f"{leaver.name} left")
                self.leaves += 1
                if leaver.exit_code != 0:
                    episode.problems.append(
                        f"{leaver.name} left with status {leaver.exit_code}, not 0"
                    )
            time.sleep(self.rng.uniform(1.0, 3.0))
        episode.detail = ", ".join(actions)
        self._await_all_assigned(
            self.cluster.alive(), episode.started_at, timeout_s=10.0
        )

    def _zombie(self, episode: Episode) -> None:
        victim = self._busy_instance() or self.rng.choice(self.cluster.alive())
        episode.pids = (victim.pid,)
        freeze_s = self.cluster.settings.session_timeout_ms / 1000 + 4.0
        victim.process.signal(signal.SIGSTOP)
        time.sleep(freeze_s)
        thawed = time.time()
        victim.process.signal(signal.SIGCONT)
        episode.detail = f"froze {victim.name} for {freeze_s:.0f}s"
        deadline = time.monotonic() + 20.0
        names = ("partition.lost", "checkpoint.refused", "partition.revoking")
        while time.monotonic() < deadline:
            if _saw(victim, names, thawed):
                return
            time.sleep(0.2)
        episode.problems.append(
            f"zombie {victim.name} did not notice it lost its partitions "
            f"within 20s of being resumed"
        )

    def _redis_outage(self, episode: Episode) -> None:
        redis = self.cluster.redis
        assert redis is not None
        down_s = self.rng.uniform(3.0, 6.0)
        redis.stop()
        time.sleep(down_s)
        redis.start()
        episode.detail = f"stopped {down_s:.1f}s, restarted with its data"

    def _redis_crash(self, episode: Episode) -> None:
        redis = self.cluster.redis
        assert redis is not None
        down_s = self.rng.uniform(0.2, 2.0)
        redis.kill()
        time.sleep(down_s)
        redis.start()
        episode.detail = f"kill -9, {down_s:.1f}s down, restarted with its data"

    def _kill_in_outage(self, episode: Episode) -> None:
        """Redis stopped long enough for uncommitted work to pile up to the
        in-flight bound, then ``kill -9`` of an instance: the worst case
        the duplicate bound is there for."""
        redis = self.cluster.redis
        assert redis is not None
        victim = self.rng.choice(self.cluster.alive())
        episode.pids = (victim.pid,)
        redis.stop()
        time.sleep(self.rng.uniform(2.0, 5.0))
        self.cluster.kill(victim)
        redis.start()
        fresh = self.cluster.add_instance()
        episode.detail = f"Redis stopped, killed {victim.name}, started {fresh.name}"
        self._await_assigned(fresh, fresh.started_at)

    def _broker_freeze(self, episode: Episode) -> None:
        kafka = self.cluster.kafka
        assert kafka is not None
        frozen_s = self.rng.uniform(3.0, 8.0)
        kafka.freeze()
        time.sleep(frozen_s)
        kafka.thaw()
        episode.detail = f"broker frozen {frozen_s:.1f}s"

    def _store_loss(self, episode: Episode) -> None:
        """Redis restarts without its data: every instance must stop with
        an error naming the store loss, and none may apply the start policy.
        Then the harness restores the checkpoints as an operator would."""
        cluster = self.cluster
        hit = cluster.alive()
        episode.pids = tuple(i.pid for i in hit)
        lost_at = time.time()
        cluster.lose_redis_data()
        deadline = time.monotonic() + STORE_LOSS_STOP_S
        while time.monotonic() < deadline and any(i.alive for i in hit):
            time.sleep(0.2)
        for instance in hit:
            self._judge_store_loss_exit(episode, instance, lost_at)
        restored = cluster.restore_lost_checkpoints()
        fresh = [cluster.add_instance() for _ in range(cluster.settings.instances)]
        self._await_all_assigned(fresh, lost_at)
        episode.detail = (
            f"{len(hit)} instances hit, {restored} checkpoints "
            f"restored, {len(fresh)} instances started"
        )

    def _judge_store_loss_exit(
        self, episode: Episode, instance: Instance, lost_at: float
    ) -> None:
        if instance.alive:
            instance.process.kill()
            instance.exit_code = None
            self.cluster.mark_ended(instance, "store_loss_ignored")
            episode.problems.append(
                f"{instance.name} did not stop within {STORE_LOSS_STOP_S}s "
                f"of the store loss"
            )
            return
        instance.exit_code = instance.process.wait(5)
        self.cluster.mark_ended(instance, "store_lost")
        if instance.exit_code != 1:
            episode.problems.append(
                f"{instance.name} exited with status {instance.exit_code} after "
                f"the store loss, not 1"
            )
        if not _saw(instance, ("checkpoint.store_lost",), lost_at):
            episode.problems.append(
                f"{instance.name} stopped without an error naming the store loss"
            )
        started = [
            e
            for e in log_events(instance, lost_at)
            if e.get("event") == "partition.started"
        ]
        if started:
            episode.problems.append(
                f"{instance.name} applied the start policy after the store "
                f"loss: {started[0]}"
            )
