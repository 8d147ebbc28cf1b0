"""faust-streaming as a contender: a no-op agent.

Runs in the faust venv. faust reads through aiokafka, not librdkafka, so
the librdkafka settings are mapped to its own: the session timeout and the
earliest start. It commits offsets on its own schedule (broker_commit_interval,
set to one second).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

import faust
from common import Meter, emit, load_spec


def main() -> None:
    spec = load_spec()
    meter = Meter()
    expected = spec["events"]
    session_ms = int(spec["librdkafka"].get("session.timeout.ms", 10_000))
    app = faust.App(
        spec["group"],
        broker=f"kafka://{spec['bootstrap']}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_ms / 1000,
        broker_heartbeat_interval=min(3.0, session_ms / 3000),
        broker_commit_interval=1.0,
        topic_disable_leader=True,
        web_enabled=False,
        datadir=tempfile.mkdtemp(prefix="faust-bench-"),
    )
    topic = app.topic(spec["topic"], value_type=bytes, key_type=bytes)
    seen = 0

    @app.agent(topic)
    async def count(stream):  # type: ignore[no-untyped-def]
        nonlocal seen
        async for _value in stream:
            if not seen:
                meter.start()
            seen += 1
            if seen == expected:
                meter.stop()
                emit(meter.result(seen))
                # faust has no clean stop from inside an agent that returns
                # to the caller; the result is out, so leave at once.
                logging.shutdown()
                os._exit(0)

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
