"""docs/configuration.md lists exactly the configuration fields that exist."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from streamcp import config

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def documented_fields() -> dict[str, set[str]]:
    sections: dict[str, set[str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"## `\[(\w+)\]`", line)
        if heading:
            current = heading.group(1)
            sections[current] = set()
            continue
        row = re.match(r"\| `(\w+)` \|", line)
        if row and current is not None:
            sections[current].add(row.group(1))
    return sections


def test_every_section_field_is_documented_and_nothing_else() -> None:
    """Each [section]'s table names exactly the fields of its config class."""
    documented = documented_fields()
    for name, cls in config._SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert documented.get(name) == fields, name


def test_handler_fields_are_documented() -> None:
    """The [handler] table names name, options and every failure-policy field."""
    assert documented_fields()["handler"] == {"name", "options", *config.POLICY_FIELDS}
