"""The handler test kit: run a handler as the service would, with no broker.

:class:`Harness` feeds events through a handler with the service's own
dispatch, failure policy, offset tracking and commit logic, on the caller's
thread, and shows the outcome of each event, the checkpoints committed and
the dead-letter records. :func:`check_conformance` runs the checks every
handler must pass (redelivery, replays, errors, rebalancing, closing). The
pytest plugin (:mod:`streamcp.testing.pytest_plugin`, loaded by pytest once
streamcp is installed) adds fixtures for the harness and for a real Kafka
broker and Redis, and the ``streamcp_conformance`` marker.

The names below are imported on first use, so that loading the pytest
plugin imports nothing of the kit until a test uses it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamcp.testing._clock import ManualClock
    from streamcp.testing._conformance import (
        CHECKS,
        CheckName,
        CheckResult,
        ConformanceError,
        ConformanceReport,
        ExpectedError,
        ReplayMode,
        check_conformance,
    )
    from streamcp.testing._events import (
        EventFactory,
        events_from_bytes,
        events_from_dicts,
        events_from_ndjson,
        replayed,
    )
    from streamcp.testing._harness import Harness, Outcome, OutcomeStatus
    from streamcp.testing._observe import DeadLetter

_HOMES = {
    "ManualClock": "_clock",
    "CHECKS": "_conformance",
    "CheckName": "_conformance",
    "CheckResult": "_conformance",
    "ConformanceError": "_conformance",
    "ConformanceReport": "_conformance",
    "ExpectedError": "_conformance",
    "ReplayMode": "_conformance",
    "check_conformance": "_conformance",
    "EventFactory": "_events",
    "events_from_bytes": "_events",
    "events_from_dicts": "_events",
    "events_from_ndjson": "_events",
    "replayed": "_events",
    "Harness": "_harness",
    "Outcome": "_harness",
    "OutcomeStatus": "_harness",
    "DeadLetter": "_observe",
}

__all__ = [
    "CHECKS",
    "CheckName",
    "CheckResult",
    "ConformanceError",
    "ConformanceReport",
    "DeadLetter",
    "EventFactory",
    "ExpectedError",
    "Harness",
    "ManualClock",
    "Outcome",
    "OutcomeStatus",
    "ReplayMode",
    "check_conformance",
    "events_from_bytes",
    "events_from_dicts",
    "events_from_ndjson",
    "replayed",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
