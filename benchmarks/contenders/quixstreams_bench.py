"""quixstreams as a contender: a no-op step, offsets committed every second.

Runs in the quixstreams venv. The librdkafka settings come in through
``consumer_extra_config``; quixstreams commits to Kafka on its own
``commit_interval``.
"""

from __future__ import annotations

import tempfile
from typing import Any

from common import Meter, emit, kafka_settings, load_spec
from quixstreams import Application

# Settings quixstreams owns and refuses to take as extra configuration.
OWNED = (
    "bootstrap.servers",
    "group.id",
    "auto.offset.reset",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "isolation.level",
)


def main() -> None:
    spec = load_spec()
    meter = Meter()
    expected = spec["events"]
    extra = {k: v for k, v in kafka_settings(spec).items() if k not in OWNED}
    app = Application(
        broker_address=spec["bootstrap"],
        consumer_group=spec["group"],
        auto_offset_reset="earliest",
        commit_interval=1.0,
        consumer_extra_config=extra,
        state_dir=tempfile.mkdtemp(prefix="quix-bench-"),
        use_changelog_topics=False,
        auto_create_topics=False,
        loglevel="WARNING",
    )
    topic = app.topic(
        spec["topic"], value_deserializer="bytes", key_deserializer="bytes"
    )
    seen = 0

    def step(value: Any) -> None:
        nonlocal seen
        if not seen:
            meter.start()
        seen += 1
        if seen == expected:
            meter.stop()
            app.stop()

    app.dataframe(topic).update(step)
    app.run()
    emit(meter.result(seen))


if __name__ == "__main__":
    main()
