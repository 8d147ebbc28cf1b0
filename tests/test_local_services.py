"""`streamcp local-services` gives a newcomer a broker and a Redis to try with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from confluent_kafka.admin import AdminClient


def test_local_services_answer_and_stop_on_sigterm(tmp_path: Path) -> None:
    """It prints the addresses of a broker and a Redis that answer there, and
    stops both with exit status 0 on SIGTERM."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamcp.cli",
            "local-services",
            "--workdir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        found: dict[str, str] = {}
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while len(found) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            for name in ("KAFKA__BOOTSTRAP_SERVERS", "REDIS__URL"):
                marker = f"export STREAMCP_{name}="
                if marker in line:
                    found[name] = line.split("=", 1)[1].strip()
        assert len(found) == 2, found
        topics = AdminClient({"bootstrap.servers": found["KAFKA__BOOTSTRAP_SERVERS"]})
        assert topics.list_topics(timeout=10) is not None
        assert redis.Redis.from_url(found["REDIS__URL"]).ping()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
