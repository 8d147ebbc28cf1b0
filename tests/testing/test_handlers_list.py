"""`streamcp handlers list`: each handler's source and options, whatever its form."""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

import pytest
from click.testing import CliRunner

import streamcp.handlers
from streamcp.cli import main
from streamcp.events import Event


def handle(event: Event) -> None:
    """A function handler: it takes no options."""


class KeywordOptions:
    """A class handler taking its options as constructor keywords."""

    def __init__(
        self, url: str, retries: int = 3, *, tags: list[str] | None = None
    ) -> None:
        self.url = url

    def handle(self, event: Event) -> None:
        pass


def with_extra_entry_points(monkeypatch: pytest.MonkeyPatch, **targets: str) -> None:
    """Add entry points (name=module:attribute) to the handlers group."""
    real: Callable[..., Any] = metadata.entry_points
    extra = [
        metadata.EntryPoint(name, value, streamcp.handlers.ENTRY_POINT_GROUP)
        for name, value in targets.items()
    ]

    def entry_points(**selection: Any) -> list[metadata.EntryPoint]:
        found = list(real(**selection))
        return found + [
            ep
            for ep in extra
            if all(getattr(ep, key) == value for key, value in selection.items())
        ]

    monkeypatch.setattr(streamcp.handlers, "entry_points", entry_points)


def test_handlers_list_shows_source_with_version_and_every_kind_of_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each handler shows the distribution and version that registered it,
    its target, and its options: an Options dataclass's fields, a
    constructor's keyword parameters, or 'no options' for a function; a
    handler that cannot load says why and hides no other."""
    here = __name__
    with_extra_entry_points(
        monkeypatch,
        fn=f"{here}:handle",
        kw=f"{here}:KeywordOptions",
        broken=f"{here}:Missing",
    )

    result = CliRunner().invoke(main, ["handlers", "list"])

    assert result.exit_code == 0, result.output
    version = metadata.version("streamcp")
    blocks = _by_handler(result.output)
    assert blocks["wikistats"] == [
        f"wikistats  (entry point of streamcp {version} "
        f"(streamcp.examples.wikistats:WikiStats))",
        "    option redis_url: str = required",
        "    option key_prefix: str = 'wikistats'",
        "    option delay_ms: int = 0",
    ]
    assert blocks["fn"][1:] == ["    no options"]
    assert blocks["kw"][1:] == [
        "    option url: str = required",
        "    option retries: int = 3",
        "    option tags: list[str] | None = None",
    ]
    assert "cannot load: AttributeError" in blocks["broken"][1]


def _by_handler(output: str) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    current: list[str] = []
    for line in output.splitlines():
        if not line.startswith(" "):
            current = blocks.setdefault(line.split()[0], [])
        current.append(line)
    return blocks
