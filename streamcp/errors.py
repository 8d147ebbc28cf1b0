"""Every exception streamcp raises on purpose.

::

    StreamcpError
    ├── ConfigError               bad configuration; the CLI exits with status 2
    │   ├── HandlerNotFound       no handler under that name
    │   └── RequestRefused        a replay or runs request refused before it ran
    ├── HandlerFailed             a handler's failure stopped the service
    ├── DecodeError               an event's key or value could not be decoded
    ├── HandlerTimeout            a handler call overran its timeout
    ├── DeadLetterFailed          the dead-letter topic did not take an event
    ├── NotADeadLetter            a record to redrive lacks streamcp's headers
    ├── CheckpointStoreError      the checkpoint store failed
    │   ├── StoreUnavailable      Redis did not answer
    │   └── StoreLost             checkpoints vanished for a group that had some
    ├── ServiceError              the service could not go on
    └── ReplayError               a replay run could not go on

    NonRetryable                  raised (or subclassed) by handlers: do not
                                  retry this error, apply the policy at once
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


class RequestRefused(ConfigError):
    """A replay or runs request is refused before anything runs.

    ``field`` names the option at fault (``--from``, ``--resume``).
    """


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


class EventError(StreamcpError):
    """An error about one event; carries its position."""

    def __init__(self, topic: str, partition: int, offset: int, message: str) -> None:
        super().__init__(f"{topic}[{partition}] offset {offset}: {message}")
        self.topic = topic
        self.partition = partition
        self.offset = offset


class DecodeError(EventError):
    """An event's key or value could not be decoded by the handler's codec."""


class HandlerTimeout(EventError):
    """A handler call overran the handler's timeout; its result is ignored."""


class DeadLetterFailed(EventError):
    """The broker did not acknowledge the dead-letter record of an event."""


class NotADeadLetter(EventError):  # reads as what the record is
    """A record of a topic being redriven is not a streamcp dead-letter record.

    It lacks the ``streamcp.original.*`` headers (or carries malformed
    ones); the position is the record's own, in the dead-letter topic, and
    ``reason`` says what is missing.
    """

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        super().__init__(
            topic, partition, offset, f"not a streamcp dead-letter record: {reason}"
        )
        self.reason = reason


class NonRetryable(Exception):  # reads as what the handler means
    """Raise (or subclass) in a handler: retrying this error cannot help.

    The handler's failure policy applies at once. Chain the real cause with
    ``raise NonRetryable("...") from exc``.
    """


class ReplayError(StreamcpError):
    """A replay run could not go on (stalled, fenced, a broker error)."""
