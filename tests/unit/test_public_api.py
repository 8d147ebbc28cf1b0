"""The public API is what streamcp exports in __all__, pinned by this test."""

from __future__ import annotations

import streamcp

EXPECTED = {
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
}


def test_all_is_pinned() -> None:
    """__all__ holds exactly the names the project promises."""
    assert set(streamcp.__all__) == EXPECTED


def test_every_exported_name_exists() -> None:
    """Each name in __all__ is importable from the package."""
    for name in streamcp.__all__:
        assert hasattr(streamcp, name), name
