"""Retry policies and the arithmetic of the next delay."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from squidmesh.errors import DefinitionError

__all__ = ["Backoff", "Retry", "RetryDecision"]


@dataclass(frozen=True)
class Backoff:
    """How long to wait after failed attempt ``n`` before attempt ``n + 1``."""

    kind: str  # "exponential" | "fixed"
    min: float
    max: float

    @classmethod
    def exponential(cls, min: float = 1.0, max: float = 60.0) -> Backoff:
        """Wait ``min * 2**(n-1)`` seconds after failed attempt ``n``, capped at ``max``."""
        if min < 0 or max < min:
            raise DefinitionError(
                f"Backoff.exponential needs 0 <= min <= max, got min={min}, max={max}"
            )
        return cls("exponential", float(min), float(max))

    @classmethod
    def fixed(cls, seconds: float) -> Backoff:
        """Wait the same ``seconds`` after every failed attempt."""
        if seconds < 0:
            raise DefinitionError(f"Backoff.fixed needs seconds >= 0, got {seconds}")
        return cls("fixed", float(seconds), float(seconds))

    def delay(self, failed_attempt: int) -> float:
        if self.kind == "fixed":
            return self.min
        # Cap the exponent so enormous attempt counts cannot overflow a float.
        exponent = min(max(failed_attempt - 1, 0), 62)
        return float(min(self.min * (2**exponent), self.max))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "min": self.min, "max": self.max}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Backoff:
        return cls(str(data["kind"]), float(data["min"]), float(data["max"]))


@dataclass(frozen=True)
class RetryDecision:
    """What happens after a failed attempt: retry after ``delay`` seconds, or give up."""

    retry: bool
    delay: float = 0.0
    reason: str = ""  # why it gave up: "exhausted" | "non_retryable"


@dataclass(frozen=True)
class Retry:
    """A step's retry policy. ``max_attempts`` counts every attempt, the first included."""

    max_attempts: int = 1
    backoff: Backoff | None = None
    non_retryable: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise DefinitionError(
                f"Retry(max_attempts=...) must be an int >= 1, got {self.max_attempts!r}"
            )
        object.__setattr__(self, "non_retryable", tuple(self.non_retryable))

    def is_non_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self.non_retryable)

    def decide(
        self, failed_attempt: int, *, retryable: bool, requested_delay: float | None = None
    ) -> RetryDecision:
        """Decide what follows failed attempt number ``failed_attempt`` (1-based).

        ``retryable`` is False for errors that must not be retried (NonRetryable, listed
        types, encoding errors). ``requested_delay`` comes from ``RetryLater(after=...)``
        and replaces the backoff delay.
        """
        if not retryable:
            return RetryDecision(False, reason="non_retryable")
        if failed_attempt >= self.max_attempts:
            return RetryDecision(False, reason="exhausted")
        if requested_delay is not None:
            return RetryDecision(True, delay=max(0.0, requested_delay))
        delay = self.backoff.delay(failed_attempt) if self.backoff else 0.0
        return RetryDecision(True, delay=delay)

    @property
    def non_retryable_names(self) -> tuple[str, ...]:
        """The qualified names of ``non_retryable``, as a step call records them."""
        return tuple(f"{t.__module__}.{t.__qualname__}" for t in self.non_retryable)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "backoff": self.backoff.to_json() if self.backoff else None,
            "non_retryable": list(self.non_retryable_names),
        }
