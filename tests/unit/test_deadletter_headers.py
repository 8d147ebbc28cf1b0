"""The headers of a dead-letter record."""

from __future__ import annotations

from streamcp.deadletter import dead_letter_headers
from streamcp.events import Event


def test_own_headers_kept_as_they_were_and_streamcp_headers_replaced() -> None:
    """A null header value stays null, and the streamcp.* headers of an earlier
    dead-lettering are replaced, not repeated."""
    event = Event(
        topic="orders",
        partition=2,
        offset=7,
        key=b"k",
        value=b"v",
        headers=[("trace", b"abc"), ("empty", None), ("streamcp.attempts", b"9")],
        timestamp_ms=1000,
    )
    headers = dead_letter_headers(event, ValueError("bad total"), 3, "orders-handler")
    names = [name for name, _ in headers]
    assert headers[:2] == [("trace", b"abc"), ("empty", None)]
    assert names.count("streamcp.attempts") == 1
    values = dict(headers)
    assert values["streamcp.attempts"] == b"3"
    assert values["streamcp.original.offset"] == b"7"
    assert values["streamcp.error.type"] == b"ValueError"
    assert values["streamcp.handler"] == b"orders-handler"
