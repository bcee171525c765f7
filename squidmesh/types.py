"""Small shared vocabulary: statuses and JSON aliases."""

from __future__ import annotations

import enum
from typing import Any, TypeAlias

__all__ = ["JSON", "TERMINAL_STATUSES", "EntryStatus", "JSONDict", "RunStatus"]

JSON: TypeAlias = bool | int | float | str | list[Any] | dict[str, Any] | None
JSONDict: TypeAlias = dict[str, Any]


class RunStatus(str, enum.Enum):
    """The status of a run. A ``str`` so it compares and serializes as its value."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FAILED = "failed"
    COMPLETED = "completed"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.COMPLETED})


class EntryStatus(str, enum.Enum):
    """The status of one history entry (one yielded command)."""

    PENDING = "pending"  # scheduled, not started (a step waiting for a worker or a retry)
    RUNNING = "running"  # a step attempt in flight, or a wait that has not resolved
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value
