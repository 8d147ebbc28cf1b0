"""Module-level handlers for routing tests (found by module:attribute)."""

from __future__ import annotations

from streamcp.events import Event

SEEN: dict[str, list[tuple[str, int]]] = {"default": [], "special": []}


def default(event: Event) -> None:
    SEEN["default"].append((event.topic, event.offset))


def special(event: Event) -> None:
    SEEN["special"].append((event.topic, event.offset))
