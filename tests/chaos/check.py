"""The invariants of a chaos run, proved from records kept apart from the
checkpoints, and the report.

Sources: the topic itself (read back record by record), the handler's
append-only record (every handled event, with the pid that handled it),
the group's history stream (every claim, commit, release and operator
change, including the history Redis held before each store loss), the
final checkpoints, and the instances' logs.

Invariants:

* nothing lost: every record in the topic, and every event id the broker
  acknowledged, was handled at least once;
* no regression: within one Redis lifetime, no accepted commit of a
  partition is lower than the one before it, unless an operator change
  came in between;
* no stale commit accepted: after a claim by B, no commit entry by anyone
  else for that partition until they claim it again (and none after a
  release or a restore before the next claim); the epoch matches too;
* every final checkpoint equals the partition's end;
* duplicates bounded: the duplicates whose first handling falls in one
  episode's window, per instance, are at most what one instance can hold
  uncommitted (``ClusterSettings.duplicates_bound``); graceful hand-overs
  and quiet stretches allow none;
* every configured fault kind was injected (at least its minimum count),
  and every episode's own checks passed.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamcp.events import TopicPartition
from streamcp.store import Checkpoint, HistoryEntry
from tests.chaos.cluster import RESTORER, ClusterSettings, Instance
from tests.chaos.faults import GRACEFUL, Episode, log_events
from tests.chaos.handler import Call

SAMPLE = 5  # how many examples of a violation the report quotes
# Episodes that kill -9 an instance: "per crash" figures are over these.
CRASHES = ("kill", "kill_in_outage")


@dataclass
class Report:
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def fail(self, what: str) -> None:
        self.failures.append(what)

    def render(self) -> str:
        lines = ["chaos run report", "================"]
        width = max(len(k) for k in self.figures) if self.figures else 0
        for key, value in self.figures.items():
            lines.append(f"{key:<{width}}  {value}")
        lines.append("")
        if self.failures:
            lines.append(f"FAILED: {len(self.failures)} invariant(s) violated")
            lines += [f"  - {f}" for f in self.failures]
        else:
            lines.append("PASSED: every invariant held")
        return "\n".join(lines)


@dataclass(frozen=True)
class RunRecords:
    """Everything one run left behind, for :func:`check`."""

    settings: ClusterSettings
    topic: str
    calls: Sequence[Call]
    topic_records: Mapping[tuple[int, int], str]
    ends: Mapping[int, int]
    acked_ids: Sequence[str]
    history_segments: Sequence[Sequence[HistoryEntry]]
    final_checkpoints: Mapping[TopicPartition, Checkpoint]
    episodes: Sequence[Episode]
    instances: Sequence[Instance]
    fault_counts: Mapping[str, int]
    minimum_counts: Mapping[str, int]
    duration_s: float


def check(run: RunRecords) -> Report:
    report = Report()
    handled = [c for c in run.calls if c.kind == "H"]
    report.figures["duration"] = f"{run.duration_s:.0f}s"
    report.figures["instances started"] = len(run.instances)
    report.figures["events produced (acknowledged)"] = len(run.acked_ids)
    report.figures["events in the topic"] = len(run.topic_records)
    report.figures["handler calls that succeeded"] = len(handled)
    _check_faults(run, report)
    _check_lost(run, handled, report)
    _check_history(run, report)
    _check_final(run, report)
    _check_duplicates(run, handled, report)
    _check_instances(run, report)
    return report


def _check_faults(run: RunRecords, report: Report) -> None:
    for kind, count in run.fault_counts.items():
        report.figures[f"faults: {kind}"] = count
    failed = sum(1 for c in run.calls if c.kind == "F")
    slow = sum(1 for c in run.calls if c.kind == "S")
    report.figures["faults: handler calls failed (then retried)"] = failed
    report.figures["faults: handler calls slowed"] = slow
    counts = {**run.fault_counts, "handler_failure": failed, "handler_slow": slow}
    for kind, minimum in run.minimum_counts.items():
        if counts.get(kind, 0) < max(minimum, 1):
            report.fail(
                f"fault kind {kind!r} injected {counts.get(kind, 0)} "
                f"times, wanted at least {max(minimum, 1)}"
            )
    for episode in run.episodes:
        for problem in episode.problems:
            report.fail(f"{episode.kind} at {episode.started_at:.0f}: {problem}")


def _check_lost(run: RunRecords, handled: Sequence[Call], report: Report) -> None:
    seen = {(c.partition, c.offset): c.event_id for c in handled}
    lost = sorted(key for key in run.topic_records if key not in seen)
    in_topic = set(run.topic_records.values())
    never_written = sorted(set(run.acked_ids) - in_topic)
    mismatched = [
        key
        for key, event_id in seen.items()
        if run.topic_records.get(key, event_id) != event_id
    ]
    report.figures["lost events"] = len(lost) + len(never_written)
    if lost:
        report.fail(
            f"{len(lost)} records of the topic never handled, "
            f"e.g. (partition, offset) {lost[:SAMPLE]}"
        )
    if never_written:
        report.fail(
            f"{len(never_written)} acknowledged event ids not in the "
            f"topic, e.g. {never_written[:SAMPLE]}"
        )
    if mismatched:
        report.fail(
            f"{len(mismatched)} handled events whose id differs from the "
            f"topic's record there, e.g. {mismatched[:SAMPLE]}"
        )


def _check_history(run: RunRecords, report: Report) -> None:
    regressions: list[HistoryEntry] = []
    stale: list[HistoryEntry] = []
    into_empty: list[HistoryEntry] = []
    entries = 0
    last: dict[TopicPartition, int | None] = {}
    for number, segment in enumerate(run.history_segments):
        entries += len(segment)
        if segment and segment[0].kind not in ("claim", "operator"):
            report.fail(
                f"history segment {number} starts with a {segment[0].kind} "
                f"entry: the stream was trimmed, the audit is incomplete"
            )
        regressions += _restored_lower(segment, last)
        last = _final_offsets(segment, last)
        audit = _audit_segment(segment, after_loss=number > 0)
        regressions += audit[0]
        stale += audit[1]
        into_empty += audit[2]
    report.figures["history entries read"] = entries
    report.figures["history segments (Redis lifetimes, groups)"] = len(
        run.history_segments
    )
    report.figures["checkpoint regressions"] = len(regressions)
    report.figures["stale commits accepted"] = len(stale)
    if regressions:
        report.fail(
            f"{len(regressions)} commits lower than the checkpoint "
            f"before them, e.g. {_quote(regressions)}"
        )
    if stale:
        report.fail(
            f"{len(stale)} commits accepted from a consumer that did "
            f"not own the partition, e.g. {_quote(stale)}"
        )
    if into_empty:
        report.fail(
            f"{len(into_empty)} commits accepted into the emptied store "
            f"before the restore (silent reprocessing), e.g. "
            f"{_quote(into_empty)}"
        )


def _restored_lower(
    segment: Iterable[HistoryEntry], before: Mapping[TopicPartition, int | None]
) -> list[HistoryEntry]:
    """Restores (after a store loss or a move to a new group) that put a
    checkpoint lower than the last one of the previous history."""
    lower = []
    for entry in segment:
        if entry.kind != "operator" or entry.owner != RESTORER:
            continue
        previous = before.get(entry.topic_partition)
        if None not in (previous, entry.offset) and entry.offset < previous:
            lower.append(entry)
    return lower


def _final_offsets(
    segment: Iterable[HistoryEntry], before: Mapping[TopicPartition, int | None]
) -> dict[TopicPartition, int | None]:
    last = dict(before)
    for entry in segment:
        if entry.kind in ("commit", "operator"):
            last[entry.topic_partition] = entry.offset
    return last


def _audit_segment(
    segment: Iterable[HistoryEntry], *, after_loss: bool
) -> tuple[list[HistoryEntry], list[HistoryEntry], list[HistoryEntry]]:
    """One Redis lifetime's history: (regressions, stale, before restore)."""
    offset: dict[TopicPartition, int | None] = {}
    owner: dict[TopicPartition, str | None] = {}
    epoch: dict[TopicPartition, int] = {}
    restored: set[TopicPartition] = set()
    regressions, stale, into_empty = [], [], []
    for entry in segment:
        tp = entry.topic_partition
        if entry.kind == "claim":
            owner[tp], epoch[tp] = entry.owner, entry.epoch
        elif entry.kind == "release" and owner.get(tp) == entry.owner:
            owner[tp] = None
        elif entry.kind == "operator":
            offset[tp], epoch[tp] = entry.offset, entry.epoch
            if entry.owner == RESTORER:
                owner[tp] = None
                restored.add(tp)
        elif entry.kind == "commit":
            before = offset.get(tp)
            if None not in (before, entry.offset) and entry.offset < before:
                regressions.append(entry)
            if owner.get(tp) != entry.owner or epoch.get(tp) != entry.epoch:
                stale.append(entry)
            if after_loss and tp not in restored:
                into_empty.append(entry)
            offset[tp] = entry.offset
    return regressions, stale, into_empty


def _quote(entries: Sequence[HistoryEntry]) -> str:
    return "; ".join(
        f"{e.kind} {e.topic_partition} {e.previous_offset}->{e.offset} "
        f"epoch {e.epoch} by {e.owner}"
        for e in entries[:SAMPLE]
    )


def _check_final(run: RunRecords, report: Report) -> None:
    final = {tp.partition: cp.offset for tp, cp in run.final_checkpoints.items()}
    wrong = {
        p: (final.get(p), end) for p, end in run.ends.items() if final.get(p) != end
    }
    report.figures["final checkpoints equal the ends"] = not wrong
    if wrong:
        report.fail(
            f"final checkpoints differ from the partitions' ends "
            f"(checkpoint, end): {wrong}"
        )


def _check_duplicates(run: RunRecords, handled: Sequence[Call], report: Report) -> None:
    episodes = sorted(run.episodes, key=lambda e: e.started_at)
    bounds = [e.window_end for e in episodes]
    previous: dict[tuple[int, int], Call] = {}
    per_window: Counter[tuple[int, int]] = Counter()  # (window, first pid)
    for call in handled:
        key = (call.partition, call.offset)
        first = previous.get(key)
        previous[key] = call
        if first is None:
            continue
        # window i covers (end of episode i-1, end of episode i]; the
        # stretch after the last episode is window len(episodes).
        window = bisect.bisect_left(bounds, first.at)
        per_window[(window, first.pid)] += 1
    total = sum(per_window.values())
    bound = run.settings.duplicates_bound
    by_kind: Counter[str] = Counter()
    per_episode: Counter[int] = Counter()
    quiet = 0
    for (window, pid), count in per_window.items():
        if window >= len(episodes):
            quiet += count
            report.fail(
                f"{count} duplicates of events first handled by pid "
                f"{pid} after the last episode (only graceful stops then)"
            )
            continue
        episode = episodes[window]
        by_kind[episode.kind] += count
        per_episode[window] += count
        if episode.kind in GRACEFUL:
            report.fail(
                f"{count} duplicates after a graceful hand-over "
                f"({episode.detail}), where the commit policy allows none"
            )
        elif count > bound:
            report.fail(
                f"{count} duplicates from pid {pid} in one {episode.kind} "
                f"episode, over the bound of {bound}"
            )
    crash_counts = [per_episode[i] for i, e in enumerate(episodes) if e.kind in CRASHES]
    report.figures["duplicates (handled more than once)"] = total
    for kind in sorted(by_kind):
        report.figures[f"duplicates after {kind}"] = by_kind[kind]
    report.figures["max duplicates per crash"] = max(crash_counts, default=0)
    for kind in CRASHES:
        worst = max(
            (per_episode[i] for i, e in enumerate(episodes) if e.kind == kind),
            default=0,
        )
        report.figures[f"max duplicates per crash ({kind})"] = worst
    report.figures["mean duplicates per crash"] = (
        round(sum(crash_counts) / len(crash_counts), 1) if crash_counts else 0
    )
    report.figures["duplicates bound per instance and episode"] = bound
    report.figures["duplicates outside any episode"] = quiet


def _check_instances(run: RunRecords, report: Report) -> None:
    refused: Counter[str] = Counter()
    started_late = []
    first_loss = min(
        (e.started_at for e in run.episodes if e.kind == "store_loss"), default=None
    )
    for instance in run.instances:
        for event in log_events(instance):
            if event.get("event") == "checkpoint.refused":
                refused[str(event.get("reason"))] += 1
            if (
                event.get("event") == "partition.started"
                and first_loss is not None
                and event["_at"] >= first_loss
            ):
                started_late.append((instance.name, event.get("partition")))
        if instance.ending == "unexpected":
            report.fail(
                f"{instance.name} (pid {instance.pid}) exited by itself "
                f"with status {instance.exit_code}"
            )
        if instance.ending in ("left", "stopped") and instance.exit_code != 0:
            report.fail(
                f"{instance.name} stopped gracefully with status "
                f"{instance.exit_code}, not 0"
            )
    report.figures["refused stale commits"] = sum(refused.values())
    report.figures["refused commits by reason"] = dict(sorted(refused.items()))
    report.figures["start policy applied after a store loss"] = len(started_late)
    if started_late:
        report.fail(
            f"the start policy was applied after a store loss: {started_late[:SAMPLE]}"
        )
