"""streamcp: Kafka consumers with checkpoints in Redis.

A consumer loop hands events to handler plugins and writes each
topic-partition's checkpoint (the offset of the next event to process) to
Redis only after the handler succeeded for that event and every earlier one.
"""

from streamcp.config import Config, load_config
from streamcp.errors import (
    CheckpointStoreError,
    ConfigError,
    DeadLetterFailed,
    DecodeError,
    EventError,
    HandlerFailed,
    HandlerNotFound,
    HandlerTimeout,
    NonRetryable,
    ServiceError,
    StoreLost,
    StoreUnavailable,
    StreamcpError,
)
from streamcp.events import Batch, Event, TopicPartition
from streamcp.handlers import BatchFailed, Handler
from streamcp.store import (
    Checkpoint,
    CheckpointStore,
    CommitRequest,
    CommitResult,
    InMemoryCheckpointStore,
    Owner,
    Refusal,
)

__all__ = [
    "Batch",
    "BatchFailed",
    "Checkpoint",
    "CheckpointStore",
    "CheckpointStoreError",
    "CommitRequest",
    "CommitResult",
    "Config",
    "ConfigError",
    "DeadLetterFailed",
    "DecodeError",
    "Event",
    "EventError",
    "Handler",
    "HandlerFailed",
    "HandlerNotFound",
    "HandlerTimeout",
    "InMemoryCheckpointStore",
    "NonRetryable",
    "Owner",
    "Refusal",
    "ServiceError",
    "StoreLost",
    "StoreUnavailable",
    "StreamcpError",
    "TopicPartition",
    "load_config",
]
