"""The public API of streamcp.testing is what its __all__ says, and loads."""

from __future__ import annotations

import importlib
import subprocess
import sys

import streamcp.testing

PUBLIC = [
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


def test_all_lists_exactly_the_public_names_and_each_resolves() -> None:
    """__all__ is pinned; every name in it can be imported from the package."""
    assert sorted(streamcp.testing.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(streamcp.testing, name) is not None
    assert sorted(set(PUBLIC) - set(dir(streamcp.testing))) == []


def test_loading_the_pytest_plugin_imports_nothing_of_the_kit() -> None:
    """Importing the plugin module (as pytest does at start) leaves the
    harness, the dispatcher and the service modules unimported."""
    code = (
        "import sys, streamcp.testing.pytest_plugin\n"
        "mods = ['streamcp.testing._harness', 'streamcp.dispatcher',"
        " 'streamcp.services', 'streamcp.service']\n"
        "print([m for m in mods if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == "[]"


def test_an_unknown_name_raises_attribute_error() -> None:
    """A name the kit does not have is an AttributeError, as for any module."""
    module = importlib.import_module("streamcp.testing")
    try:
        module.nothing_here  # noqa: B018
    except AttributeError as exc:
        assert "nothing_here" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
