"""Conformance checks: what every handler must get right, each observed.

:func:`check_conformance` runs a handler through scenarios on the
:class:`~streamcp.testing.Harness` and compares what it left behind (a
snapshot of its state, read by the author's callable) with a clean run:

``at_least_once``  a crash before the commit delivers the events after the
                   last checkpoint again; the state must not change.
``replay``         events of a replay run (``run_id`` set) are applied as
                   declared: ``overwrite`` gives the state of handling them
                   once, ``skip`` leaves the state as it was.
``errors``         each sample bad event fails with the declared error, and
                   the checkpoint stays before it.
``rebalance``      partitions revoked mid-stream, handled by another consumer
                   meanwhile, and given back end with the clean run's state.
``close``          ``close()`` returns, in time, without raising, and leaves
                   no thread or file descriptor that setup or handling opened.

The handler's state must live outside the handler object, as it does in
production (a database, Redis, files): ``state()`` makes a fresh empty one,
``handler_factory(state)`` builds a handler that works on it (called again
with the same state for a restarted consumer), and ``snapshot(state)``
reads it back as a value compared with ``==``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from streamcp.events import Event
from streamcp.failures import FailurePolicy
from streamcp.handlers import _event_loop
from streamcp.testing._events import replayed
from streamcp.testing._harness import Harness, Outcome

S = TypeVar("S")

CheckName = Literal["at_least_once", "replay", "errors", "rebalance", "close"]
CHECKS: tuple[CheckName, ...] = (
    "at_least_once",
    "replay",
    "errors",
    "rebalance",
    "close",
)
ReplayMode = Literal["overwrite", "skip"]
CheckStatus = Literal["passed", "failed", "not_run"]

# Far beyond any sample: scenarios commit only where they say so.
_NEVER_EVENTS = 1 << 62
_NEVER_S = 1e12
_RUN_ID = "conformance-replay"
_GROUP = f"replay:{_RUN_ID}"


@dataclass(frozen=True, slots=True)
class ExpectedError:
    """A sample bad event and how the handler must fail for it.

    ``raises`` is the exception type it raises (a subclass counts; for a
    batch handler, the cause chained to
    :class:`~streamcp.handlers.BatchFailed`). ``retryable`` says whether
    the error is worth retrying (``True``) or final (``False``: raised as
    :class:`~streamcp.errors.NonRetryable`, or of a type in the handler's
    ``non_retryable``); it is checked by counting the handler's calls for
    the event. Give at least one of the two.
    """

    event: Event
    raises: type[BaseException] | None = None
    retryable: bool | None = None

    def __post_init__(self) -> None:
        if self.raises is None and self.retryable is None:
            raise ValueError("ExpectedError needs raises=..., retryable=... or both")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's verdict; each problem says what happened and what to change."""

    name: CheckName
    status: CheckStatus
    problems: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.status}"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ConformanceReport:
    """The verdict of every check that was asked for."""

    results: tuple[CheckResult, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        """True when no check failed (a check that did not run is no failure)."""
        return all(result.status != "failed" for result in self.results)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == "failed")

    def result(self, name: CheckName) -> CheckResult:
        """The result of the check called ``name``; ``KeyError`` if not asked."""
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    def __str__(self) -> str:
        return "\n".join(str(result) for result in self.results)


class ConformanceError(AssertionError):
    """Raised by :func:`check_conformance` when a check failed; lists them all."""

    def __init__(self, report: ConformanceReport) -> None:
        failed = ", ".join(r.name for r in report.failures)
        super().__init__(f"handler failed conformance check(s) {failed}:\n{report}")
        self.report = report


@dataclass(frozen=True)
class _Subject(Generic[S]):
    """What the scenarios need to know of the handler under test."""

    factory: Callable[[S], object]
    state: Callable[[], S]
    snapshot: Callable[[S], object]
    events: Sequence[Event]
    topic: str
    partitions: int
    batch_size: int
    policy: Mapping[str, Any]

    def harness(self, state: S, **kwargs: Any) -> Harness:
        settings: dict[str, Any] = {
            "policy": self.policy,
            "topic": self.topic,
            "partitions": self.partitions,
            "batch_size": self.batch_size,
            "commit_every_events": _NEVER_EVENTS,
            "commit_every_seconds": _NEVER_S,
        }
        settings.update(kwargs)
        return Harness(self.factory(state), **settings)


def check_conformance(
    handler_factory: Callable[[S], object],
    events: Sequence[Event],
    *,
    state: Callable[[], S],
    snapshot: Callable[[S], object],
    replay: ReplayMode | None = None,
    errors: Sequence[ExpectedError] = (),
    policy: Mapping[str, Any] | None = None,
    checks: Collection[CheckName] = CHECKS,
    batch_size: int = 500,
    close_timeout_s: float = 5.0,
    raise_on_failure: bool = True,
) -> ConformanceReport:
    """Run the conformance checks on a handler; see the module docstring.

    ``events`` are good events of one topic, each of which must succeed
    (at least two, so that some come after a checkpoint); ``replay``
    declares how replayed events are applied (without it the replay check
    does not run); ``errors`` are the sample bad events (without them the
    errors check does not run). ``policy`` holds the failure-handling
    settings the handler runs with in production (its configuration table:
    ``retry_attempts``, ``on_failure``, ...). ``checks`` picks some of the
    checks; ``batch_size`` is the most events handed over per poll.

    Blocks until every scenario ran. Returns the report; raises
    :class:`ConformanceError` listing every failed check unless
    ``raise_on_failure`` is false. Raises ``ValueError`` when ``events``
    cannot be used, and whatever ``state``, ``handler_factory`` or
    ``snapshot`` raise.
    """
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(
            f"unknown check(s) {sorted(unknown)!r}; choose from {CHECKS!r}"
        )
    subject = _subject(
        handler_factory,
        events,
        state=state,
        snapshot=snapshot,
        batch_size=batch_size,
        policy=policy or {},
    )
    reference, problem = _clean_run(subject)
    results = []
    for name in CHECKS:
        if name not in checks:
            continue
        if problem is not None:
            results.append(CheckResult(name, "failed", (problem,)))
            continue
        results.append(
            _run_check(
                name,
                subject,
                reference,
                replay=replay,
                errors=errors,
                close_timeout_s=close_timeout_s,
            )
        )
    report = ConformanceReport(tuple(results))
    if raise_on_failure and not report.passed:
        raise ConformanceError(report)
    return report


def _subject(
    factory: Callable[[S], object],
    events: Sequence[Event],
    *,
    state: Callable[[], S],
    snapshot: Callable[[S], object],
    batch_size: int,
    policy: Mapping[str, Any],
) -> _Subject[S]:
    events = list(events)
    if len(events) < 2:
        raise ValueError(
            f"check_conformance needs at least 2 good events, got {len(events)}"
        )
    topics = sorted({event.topic for event in events})
    if len(topics) != 1:
        raise ValueError(f"events must be of one topic, got {topics!r}")
    if any(event.is_replay for event in events):
        raise ValueError(
            "events must be live events (run_id None); the replay "
            "check makes the replayed copies itself"
        )
    partitions = max(event.partition for event in events) + 1
    return _Subject(
        factory, state, snapshot, events, topics[0], partitions, batch_size, policy
    )


def _run_check(
    name: CheckName,
    subject: _Subject[Any],
    reference: object,
    *,
    replay: ReplayMode | None,
    errors: Sequence[ExpectedError],
    close_timeout_s: float,
) -> CheckResult:
    if name == "replay" and replay is None:
        return CheckResult(
            name,
            "not_run",
            ("no replay behaviour declared: pass replay='overwrite' or 'skip'",),
        )
    if name == "errors" and not errors:
        return CheckResult(
            name,
            "not_run",
            ("no sample bad events: pass errors=[ExpectedError(event, raises=...)]",),
        )
    if name == "at_least_once":
        problems = _at_least_once(subject, reference)
    elif name == "replay":
        problems = _replay(subject, reference, replay or "overwrite")
    elif name == "errors":
        problems = _errors(subject, errors)
    elif name == "rebalance":
        problems = _rebalance(subject, reference)
    else:
        problems = _close(subject, close_timeout_s)
    return CheckResult(name, "failed" if problems else "passed", tuple(problems))


# -- scenarios -----------------------------------------------------------------------


def _clean_run(subject: _Subject[Any]) -> tuple[object, str | None]:
    """The snapshot after every event was handled once, or why there is none."""
    state = subject.state()
    failure = _run(subject, state, subject.events)
    if failure is not None:
        return None, (
            f"the clean run failed: {failure}. Every event given to "
            f"check_conformance must succeed; pass bad events as errors=[...]"
        )
    return subject.snapshot(state), None


def _at_least_once(subject: _Subject[Any], reference: object) -> list[str]:
    state = subject.state()
    first, second = _split(subject.events, 2)
    crashed = subject.harness(state)
    crashed.feed(first)
    crashed.commit()
    crashed.feed(second)
    crashed.crash()
    problems = _failed_during(crashed, "before the crash")
    restarted = subject.harness(state, store=crashed.store)
    again = restarted.redeliver(subject.events)
    problems += _failed_during(
        restarted, "while the events after the checkpoint were delivered again"
    )
    _close_quietly(restarted)
    after = subject.snapshot(state)
    _close_quietly(crashed)
    if not problems and after != reference:
        problems.append(
            f"after a crash before the commit, the {len(again)} event(s) after the "
            f"last checkpoint were delivered again and the state differs from a "
            f"single delivery ({_difference(reference, after)}). Make the handler "
            f"idempotent: store, atomically with each effect, the offset of the "
            f"partition's next event, and skip events below it (or key each "
            f"effect by topic, partition and offset)"
        )
    return problems


def _replay(subject: _Subject[Any], reference: object, mode: ReplayMode) -> list[str]:
    state = subject.state()
    copies = replayed(subject.events, _RUN_ID)
    problems = _failed_during_run(subject, state, subject.events, "live")
    problems += _failed_during_run(subject, state, copies, "replay", group=_GROUP)
    over_live = subject.snapshot(state)
    fresh = subject.state()
    problems += _failed_during_run(subject, fresh, copies, "replay", group=_GROUP)
    over_empty = subject.snapshot(fresh)
    empty_state = subject.state()
    _run(subject, empty_state, [])
    empty = subject.snapshot(empty_state)
    if problems:
        return problems
    if over_live != reference:
        problems.append(
            f"replaying events that were already handled changed the state "
            f"({_difference(reference, over_live)}). "
            + (
                "With replay='overwrite', applying an event again must overwrite "
                "its result, not add to it"
                if mode == "overwrite"
                else "With replay='skip', return early when event.is_replay is true"
            )
        )
    expected, what = (
        (reference, "the state of handling them once")
        if (mode == "overwrite")
        else (empty, "the empty state")
    )
    if over_empty != expected:
        problems.append(
            f"replaying the events over an empty state did not leave {what} "
            f"({_difference(expected, over_empty)}). "
            + (
                "With replay='overwrite', apply replayed events (do not skip "
                "event.is_replay)"
                if mode == "overwrite"
                else "With replay='skip', return early when event.is_replay is true"
            )
        )
    return problems


def _errors(subject: _Subject[Any], errors: Sequence[ExpectedError]) -> list[str]:
    problems = []
    for expected in errors:
        problems += _one_error(subject, expected)
    return problems


def _one_error(subject: _Subject[Any], expected: ExpectedError) -> list[str]:
    event = expected.event
    harness = subject.harness(
        subject.state(),
        topic=event.topic,
        partitions=max(subject.partitions, event.partition + 1),
    )
    try:
        (outcome,) = harness.feed([event])
        checkpoint = harness.checkpoints().get(event.topic_partition)
    finally:
        _close_quietly(harness)
    where = f"the bad event at {event.topic_partition} offset {event.offset}"
    if outcome.status == "succeeded":
        wanted = expected.raises.__name__ if expected.raises else "an exception"
        return [
            f"{where} ({_short(event.value)}) succeeded; the handler must "
            f"raise {wanted} for it"
        ]
    error = outcome.error
    problems = []
    if expected.raises is not None and not isinstance(error, expected.raises):
        wanted = expected.raises.__name__
        problems.append(
            f"{where} raised {_name(error)}: {error}, not {wanted}; "
            f"raise {wanted} (or chain it as the cause of BatchFailed) "
            f"for such events"
        )
    if expected.retryable is not None:
        problems += _retry_problems(
            where, outcome, harness.handler.policy, expected.retryable
        )
    if (
        outcome.status == "failed"
        and checkpoint is not None
        and (checkpoint > event.offset)
    ):
        problems.append(
            f"the checkpoint moved past {where} (to {checkpoint}); a "
            f"failed event must hold it"
        )
    return problems


def _retry_problems(
    where: str, outcome: Outcome, policy: FailurePolicy, retryable: bool
) -> list[str]:
    error = outcome.error
    if policy.attempts > 1:
        retried = outcome.attempts > 1
    else:
        # One attempt allowed: nothing is retried; judge by the policy.
        retried = error is not None and policy.retryable(error)
    if retryable and not retried:
        return [
            f"the error for {where} ({_name(error)}: {error}) was not retried, "
            f"though declared retryable: it is NonRetryable, a DecodeError or a "
            f"type in the handler's non_retryable; raise an ordinary exception "
            f"for errors that may pass on a later attempt"
        ]
    if not retryable and retried:
        return [
            f"the error for {where} ({_name(error)}: {error}) was retried "
            f"({outcome.attempts} calls), though declared final: raise "
            f"NonRetryable (chain the cause with 'from') or list "
            f"{_name(error)} in the handler's non_retryable, so the failure "
            f"policy applies at once"
        ]
    return []


def _rebalance(subject: _Subject[Any], reference: object) -> list[str]:
    state = subject.state()
    first, second, _ = _split(subject.events, 3)
    consumer = subject.harness(state)
    consumer.feed(first)
    consumer.revoke()
    other = subject.harness(state, store=consumer.store)
    other.redeliver([*first, *second])
    other.revoke()
    consumer.assign(range(subject.partitions))
    consumer.redeliver(subject.events)
    problems = _failed_during(
        other, "on the consumer that held the partitions meanwhile"
    )
    problems += _failed_during(consumer, "after the partitions were given back")
    _close_quietly(other)
    _close_quietly(consumer)
    after = subject.snapshot(state)
    if not problems and after != reference:
        problems.append(
            f"the partitions were revoked mid-stream, handled by another consumer "
            f"for a while and given back; the state then differs from a clean run "
            f"({_difference(reference, after)}). The handler keeps a copy of its "
            f"state in memory that the other consumer changed meanwhile: read and "
            f"write the state where it lives on each event or batch, not from a "
            f"copy loaded in setup()"
        )
    return problems


def _close(subject: _Subject[Any], timeout_s: float) -> list[str]:
    state = subject.state()
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()
    handler = subject.factory(state)
    if _is_async(handler):
        # streamcp runs coroutines on one event loop per thread, kept for
        # the thread's life; its descriptors are not the handler's.
        known = _open_fds()
        _event_loop()
        fds_before |= _open_fds() - known
    harness = Harness(
        handler,
        topic=subject.topic,
        partitions=subject.partitions,
        batch_size=subject.batch_size,
    )
    opened = _open_fds() - fds_before
    harness.feed(subject.events)
    started = time.monotonic()
    try:
        harness.close()
    except Exception as exc:  # noqa: BLE001  # the handler's error is the finding
        return [
            f"close() raised {_name(exc)}: {exc}; close() must release what "
            f"setup() opened and return without raising"
        ]
    took_s = time.monotonic() - started
    problems = []
    if took_s > timeout_s:
        problems.append(
            f"close() took {took_s:.1f} s, more than {timeout_s} s; "
            f"bound every wait in close()"
        )
    left = _threads_left(threads_before, timeout_s)
    if left:
        problems.append(
            f"close() left thread(s) {', '.join(left)} running; stop "
            f"and join in close() every thread the handler started"
        )
    leaked = sorted(target for fd, target in opened & _open_fds())
    if leaked:
        problems.append(
            f"close() left open {len(leaked)} file descriptor(s) that "
            f"setup() opened ({', '.join(leaked)}); close in close() "
            f"the connections and files setup() opened"
        )
    return problems


# -- helpers -------------------------------------------------------------------------


def _run(
    subject: _Subject[Any], state: object, events: Sequence[Event], **kwargs: Any
) -> str | None:
    """Feed ``events`` to a new consumer and close it; returns its failure."""
    harness = subject.harness(state, **kwargs)
    try:
        harness.feed(events)
    finally:
        _close_quietly(harness)
    return _first_failure(harness)


def _first_failure(harness: Harness) -> str | None:
    for outcome in harness.outcomes:
        if outcome.status in ("failed", "skipped", "dead_lettered"):
            return (
                f"{outcome.topic_partition} offset {outcome.offset} was "
                f"{outcome.status.replace('_', '-')} after "
                f"{_name(outcome.error)}: {outcome.error}"
            )
    return None


def _failed_during_run(
    subject: _Subject[Any],
    state: object,
    events: Sequence[Event],
    kind: str,
    **kwargs: Any,
) -> list[str]:
    failure = _run(subject, state, events, **kwargs)
    if failure is None:
        return []
    return [
        f"the handler failed during a {kind} run: {failure}. Every event "
        f"given to check_conformance must succeed, live or replayed"
    ]


def _split(events: Sequence[Event], parts: int) -> list[list[Event]]:
    size = max(1, len(events) // parts)
    pieces = [list(events[i * size : (i + 1) * size]) for i in range(parts - 1)]
    return [*pieces, list(events[(parts - 1) * size :])]


def _failed_during(harness: Harness, when: str) -> list[str]:
    failure = _first_failure(harness)
    if failure is None:
        return []
    return [
        f"the handler failed {when}: {failure}. A handler must accept an event "
        f"delivered again"
    ]


def _close_quietly(harness: Harness) -> None:
    # The close check judges close(); the other scenarios only clean up. A
    # crashed consumer's handler is closed too, so that a test process does
    # not keep what it opened (its snapshot was taken before).
    with contextlib.suppress(Exception):
        if harness.state == "crashed":
            harness.handler.close()
        else:
            harness.close()


def _is_async(handler: object) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    return any(
        inspect.iscoroutinefunction(getattr(handler, hook, None))
        for hook in ("setup", "handle", "handle_batch", "close")
    )


def _open_fds() -> set[tuple[int, str]]:
    """(descriptor, what it points at) of this process; empty off Linux."""
    directory = "/proc/self/fd"
    if not os.path.isdir(directory):
        return set()
    found = set()
    for name in os.listdir(directory):
        with contextlib.suppress(OSError):
            found.add((int(name), os.readlink(os.path.join(directory, name))))
    return found


def _threads_left(before: set[threading.Thread], grace_s: float) -> list[str]:
    deadline = time.monotonic() + grace_s
    for thread in _new_threads(before):
        thread.join(max(0.0, deadline - time.monotonic()))
    return sorted(repr(thread.name) for thread in _new_threads(before))


def _new_threads(before: set[threading.Thread]) -> Iterator[threading.Thread]:
    for thread in threading.enumerate():
        if thread not in before and thread.is_alive():
            yield thread


def _difference(expected: object, actual: object, limit: int = 3) -> str:
    if isinstance(expected, dict) and isinstance(actual, dict):
        keys = sorted({*expected, *actual}, key=repr)
        changed = [
            k for k in keys if expected.get(k, _MISSING) != actual.get(k, _MISSING)
        ]
        shown = "; ".join(
            f"{k!r}: expected {_short(expected.get(k, _MISSING))}, got "
            f"{_short(actual.get(k, _MISSING))}"
            for k in changed[:limit]
        )
        more = f"; and {len(changed) - limit} more" if len(changed) > limit else ""
        return shown + more
    return f"expected {_short(expected)}, got {_short(actual)}"


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _name(error: BaseException | None) -> str:
    return "nothing" if error is None else type(error).__name__
