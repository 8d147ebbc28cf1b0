"""What happens when a handler fails: retries, then the handler's policy.

:class:`FailurePolicy` is the frozen policy of one handler; the dispatcher
applies it. A failed event is retried with exponential backoff and full
jitter, up to ``attempts`` calls in all, unless its error is not worth
retrying (:class:`~streamcp.errors.NonRetryable`, a type the handler lists
in ``non_retryable``, or an event that cannot be decoded). After the last
attempt:

``pause``        the partition stops at the failed event (its checkpoint stays
                 there), recorded in the checkpoint store; the default, which
                 loses nothing.
``dead-letter``  the event goes to the dead-letter topic; the checkpoint moves
                 past it only after the broker acknowledged that record. If
                 the produce fails, the partition is paused instead.
``skip``         logged, counted, and passed over.
``stop``         the service commits what succeeded and exits with status 1.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from streamcp.codecs import Codec, codec_by_name
from streamcp.errors import ConfigError, DecodeError, NonRetryable

OnFailure = Literal["pause", "dead-letter", "skip", "stop"]
ON_FAILURE_CHOICES: tuple[OnFailure, ...] = ("pause", "dead-letter", "skip", "stop")


@dataclass(frozen=True, kw_only=True)
class FailurePolicy:
    """Retries and the action after the last attempt, for one handler."""

    attempts: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    on_failure: OnFailure = "pause"
    dead_letter_topic: str | None = None
    timeout_s: float | None = None
    key_codec: Codec = field(default_factory=lambda: codec_by_name("bytes", "key"))
    value_codec: Codec = field(default_factory=lambda: codec_by_name("bytes", "value"))
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigError(
                "handler.retry_attempts",
                f"must be a positive integer, got {self.attempts!r}",
            )
        for name, value in (
            ("retry_backoff_s", self.backoff_s),
            ("retry_max_backoff_s", self.max_backoff_s),
        ):
            if not isinstance(value, int | float) or value < 0:
                raise ConfigError(
                    f"handler.{name}", f"must be 0 or positive seconds, got {value!r}"
                )
        if self.on_failure not in ON_FAILURE_CHOICES:
            raise ConfigError(
                "handler.on_failure",
                f"must be one of {', '.join(ON_FAILURE_CHOICES)}, "
                f"got {self.on_failure!r}",
            )
        if self.timeout_s is not None and (
            not isinstance(self.timeout_s, int | float) or self.timeout_s <= 0
        ):
            raise ConfigError(
                "handler.timeout_s", f"must be positive seconds, got {self.timeout_s!r}"
            )

    def retryable(self, error: BaseException) -> bool:
        if isinstance(error, NonRetryable | DecodeError):
            return False
        return not isinstance(error, self.non_retryable)

    def delay_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Backoff before the next call after ``attempt`` failed calls.

        Full jitter: uniform between 0 and min(max, base * 2**(attempt-1)),
        so that many partitions retrying at once do not call in step.
        """
        ceiling = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return float(ceiling * rand())

    def dead_letter_topic_for(self, topic: str) -> str:
        return self.dead_letter_topic or f"{topic}.dlq"
