"""The HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

:class:`Health` holds the signals the polling loop writes (it iterated,
the broker's and Redis's state) and answers liveness and readiness from
them; :class:`HealthServer` serves them with the metrics on a stdlib
``ThreadingHTTPServer`` in a daemon thread. Nothing here calls Kafka or
Redis: a probe never waits for a dependency and never slows the loop.

* ``/healthz`` is 200 while the loop iterated within the liveness bound. A
  slow handler does not fail it: handlers run on worker threads and the
  loop keeps polling.
* ``/readyz`` is 200 while the broker and Redis answered at their last
  check; an instance with no partition assigned is ready all the same.
  It is 503 before the first check and once the service is stopping.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import structlog

from streamcp.metrics import Metrics

Clock = Callable[[], float]
DependencyState = Literal["unknown", "up", "down"]

log = structlog.get_logger("streamcp.health")


class Health:
    """Liveness and readiness of one service instance.

    Written by the loop's thread, read by the HTTP threads; every field is
    replaced whole, so no lock is needed. ``kafka_stale_s`` bounds how old
    the broker's last report may be before it counts as down.
    """

    def __init__(
        self,
        *,
        liveness_timeout_s: float,
        kafka_stale_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._liveness_timeout_s = liveness_timeout_s
        self._kafka_stale_s = kafka_stale_s
        self._clock = clock
        self._iterated_at = clock()
        self._kafka: DependencyState = "unknown"
        self._kafka_at = 0.0
        self._redis: DependencyState = "unknown"
        self._stopping = False

    def iterated(self) -> None:
        """The polling loop went round once."""
        self._iterated_at = self._clock()

    def kafka(self, up: bool) -> None:
        self._kafka = "up" if up else "down"
        self._kafka_at = self._clock()

    def redis(self, up: bool) -> None:
        self._redis = "up" if up else "down"

    def stopping(self) -> None:
        self._stopping = True

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        since = self._clock() - self._iterated_at
        alive = since <= self._liveness_timeout_s
        return alive, {
            "status": "alive" if alive else "stalled",
            "last_iteration_s_ago": round(since, 3),
            "liveness_timeout_s": self._liveness_timeout_s,
        }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        kafka = self._kafka
        if kafka == "up" and self._clock() - self._kafka_at > self._kafka_stale_s:
            kafka = "unknown"
        ready = kafka == "up" and self._redis == "up" and not self._stopping
        status = "stopping" if self._stopping else ("ready" if ready else "unready")
        return ready, {"status": status, "kafka": kafka, "redis": self._redis}


class HealthServer:
    """Serves metrics and probes at ``host:port`` until :meth:`close`.

    Port 0 binds a free port; :attr:`address` tells which. :meth:`start`
    raises ``OSError`` when the address cannot be bound.
    """

    def __init__(self, host: str, port: int, metrics: Metrics, health: Health) -> None:
        self._requested = (host, port)
        self._metrics = metrics
        self._health = health
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the requested address before :meth:`start`)."""
        if self._server is None:
            return self._requested
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> tuple[str, int]:
        server = ThreadingHTTPServer(
            self._requested, _handler(self._metrics, self._health)
        )
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="streamcp-http", daemon=True
        )
        self._thread.start()
        return self.address

    def close(self) -> None:
        """Stop serving and free the port; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)


def _handler(metrics: Metrics, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "streamcp"

        def do_GET(self) -> None:  # the stdlib's name for it
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, content_type = metrics.exposition()
                self._send(200, body, content_type)
            elif path == "/healthz":
                self._send_json(*health.liveness())
            elif path == "/readyz":
                self._send_json(*health.readiness())
            else:
                self._send(
                    404,
                    b"not found: try /metrics, /healthz or /readyz\n",
                    "text/plain; charset=utf-8",
                )

        def _send_json(self, ok: bool, body: dict[str, Any]) -> None:
            self._send(
                200 if ok else 503,
                json.dumps(body).encode() + b"\n",
                "application/json",
            )

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes arrive every few seconds: not worth a line each.
            return

    return Handler
