"""Every exception streamcp raises on purpose.

::

    StreamcpError
    ├── ConfigError               bad configuration; the CLI exits with status 2
    │   └── HandlerNotFound       no handler under that name
    ├── HandlerFailed             a handler raised for an event
    ├── CheckpointStoreError      the checkpoint store failed
    │   ├── StoreUnavailable      Redis did not answer
    │   └── StoreLost             checkpoints vanished for a group that had some
    ├── CommitRefused             (internal) the store refused a commit
    └── ServiceError              the service could not go on
"""

from __future__ import annotations

from streamcp.events import TopicPartition


class StreamcpError(Exception):
    """Root of every exception streamcp raises on purpose."""


class ConfigError(StreamcpError):
    """A configuration value is invalid; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class HandlerNotFound(ConfigError):
    """No handler is registered or importable under the given name."""


class HandlerFailed(StreamcpError):
    """A handler raised for an event; carries the event's position."""

    def __init__(
        self,
        topic_partition: TopicPartition,
        offset: int,
        handler: str,
        cause: BaseException,
    ) -> None:
        super().__init__(
            f"handler {handler!r} failed at {topic_partition} offset {offset}: "
            f"{type(cause).__name__}: {cause}"
        )
        self.topic_partition = topic_partition
        self.offset = offset
        self.handler = handler
        self.cause = cause


class CheckpointStoreError(StreamcpError):
    """The checkpoint store failed."""


class StoreUnavailable(CheckpointStoreError):
    """The checkpoint store did not answer; the call may be retried."""


class StoreLost(CheckpointStoreError):
    """A group that committed before has no checkpoints in the store."""


class ServiceError(StreamcpError):
    """The service cannot go on."""
