"""The commands a workflow yields, besides step calls (see ``definition.StepCall``).

Each command has a ``kind`` and a ``name``; together they identify it in the history and
are what replay compares.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any, ClassVar

from squidmesh.core.definition import StepCall
from squidmesh.errors import DefinitionError

__all__ = [
    "BRANCH_KINDS",
    "Approval",
    "Command",
    "Decision",
    "First",
    "Join",
    "Log",
    "Now",
    "Patched",
    "Pause",
    "RandomValue",
    "Sleep",
    "Undo",
    "Uuid4",
    "WaitForEvent",
    "approval",
    "first",
    "join",
    "log",
    "now",
    "patched",
    "pause",
    "random",
    "sleep",
    "sleep_until",
    "undo",
    "uuid4",
    "wait_for_event",
]


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DefinitionError(f"{what} must be seconds or a timedelta, got {value!r}")
    return float(value)


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise DefinitionError(f"{what} needs a non-empty string name, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Sleep:
    seconds: float | None = None
    until: datetime | None = None
    kind: ClassVar[str] = "sleep"
    name: ClassVar[str] = "sleep"


@dataclasses.dataclass(frozen=True)
class Pause:
    name: str
    reason: str | None = None
    kind: ClassVar[str] = "pause"


@dataclasses.dataclass(frozen=True)
class Approval:
    name: str
    timeout: float | None = None
    kind: ClassVar[str] = "approval"


@dataclasses.dataclass(frozen=True)
class WaitForEvent:
    name: str
    timeout: float | None = None
    kind: ClassVar[str] = "event"


@dataclasses.dataclass(frozen=True)
class Join:
    commands: tuple[Any, ...]
    return_exceptions: bool = False
    kind: ClassVar[str] = "join"
    name: ClassVar[str] = "join"


@dataclasses.dataclass(frozen=True)
class First:
    commands: tuple[Any, ...]
    kind: ClassVar[str] = "first"
    name: ClassVar[str] = "first"


@dataclasses.dataclass(frozen=True)
class Log:
    message: str
    level: str = "info"
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    kind: ClassVar[str] = "log"
    name: ClassVar[str] = "log"


@dataclasses.dataclass(frozen=True)
class Undo:
    kind: ClassVar[str] = "undo"
    name: ClassVar[str] = "undo"


@dataclasses.dataclass(frozen=True)
class Now:
    kind: ClassVar[str] = "now"
    name: ClassVar[str] = "now"


@dataclasses.dataclass(frozen=True)
class Uuid4:
    kind: ClassVar[str] = "uuid4"
    name: ClassVar[str] = "uuid4"


@dataclasses.dataclass(frozen=True)
class RandomValue:
    kind: ClassVar[str] = "random"
    name: ClassVar[str] = "random"


@dataclasses.dataclass(frozen=True)
class Patched:
    change_id: str
    kind: ClassVar[str] = "patch"

    @property
    def name(self) -> str:
        return self.change_id


Command = (
    StepCall[Any]
    | Sleep
    | Pause
    | Approval
    | WaitForEvent
    | Join
    | First
    | Log
    | Undo
    | Now
    | Uuid4
    | RandomValue
    | Patched
)

#: Commands that may be branches of ``join`` and ``first``: they wait for something.
BRANCH_KINDS = frozenset({"step", "sleep", "pause", "approval", "event"})
COMMAND_TYPES = (
    StepCall,
    Sleep,
    Pause,
    Approval,
    WaitForEvent,
    Join,
    First,
    Log,
    Undo,
    Now,
    Uuid4,
    RandomValue,
    Patched,
)


@dataclasses.dataclass(frozen=True)
class Decision:
    """The result of ``yield sm.approval(...)``: a reviewer's decision."""

    approved: bool
    decision: str  # "approved" | "rejected"
    actor: str
    comment: str | None = None
    metadata: dict[str, Any] | None = None
    decided_at: str | None = None  # ISO 8601

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decision:
        return cls(
            approved=bool(data["approved"]),
            decision=str(data["decision"]),
            actor=str(data["actor"]),
            comment=data.get("comment"),
            metadata=data.get("metadata"),
            decided_at=data.get("decided_at"),
        )


# --------------------------------------------------------------------------- constructors


def sleep(duration: float | timedelta | None = None, *, seconds: float | None = None) -> Sleep:
    """Wait durably: ``yield sm.sleep(seconds=5)`` or ``yield sm.sleep(timedelta(hours=1))``."""
    if (duration is None) == (seconds is None):
        raise DefinitionError("sm.sleep needs exactly one of duration or seconds=")
    value = _seconds(duration if duration is not None else seconds, "sm.sleep duration")
    if value < 0:
        raise DefinitionError(f"sm.sleep duration must be >= 0, got {value}")
    return Sleep(seconds=value)


def sleep_until(when: datetime) -> Sleep:
    """Wait durably until an aware datetime."""
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise DefinitionError("sm.sleep_until needs a timezone-aware datetime")
    return Sleep(until=when)


def pause(name: str, *, reason: str | None = None) -> Pause:
    """Stop until an operator calls ``unblock_run``; the yield returns its ``data``."""
    return Pause(_name(name, "sm.pause"), reason)


def approval(name: str, *, timeout: float | timedelta | None = None) -> Approval:
    """Stop until ``approve_run`` or ``reject_run``; the yield returns a ``Decision``."""
    return Approval(
        _name(name, "sm.approval"),
        _seconds(timeout, "approval timeout") if timeout is not None else None,
    )


def wait_for_event(name: str, *, timeout: float | timedelta | None = None) -> WaitForEvent:
    """Stop until ``send_event(run_id, name, data)``; the yield returns ``data``."""
    return WaitForEvent(
        _name(name, "sm.wait_for_event"),
        _seconds(timeout, "event timeout") if timeout is not None else None,
    )


def _branches(commands: tuple[Any, ...], what: str, *, empty: bool = False) -> tuple[Any, ...]:
    if not commands and not empty:
        raise DefinitionError(f"{what} needs at least one command")
    for cmd in commands:
        if not isinstance(cmd, COMMAND_TYPES) or cmd.kind not in BRANCH_KINDS:
            raise DefinitionError(
                f"{what} branches must be steps, sleeps, pauses, approvals or event waits; "
                f"got {cmd!r}"
            )
    return commands


def join(*commands: Any, return_exceptions: bool = False) -> Join:
    """Run branches in parallel; the yield returns their results in argument order
    (``()`` at once for no branches, so ``sm.join(*calls)`` works on an empty list)."""
    return Join(_branches(commands, "sm.join", empty=True), bool(return_exceptions))


def first(*commands: Any) -> First:
    """Race branches; the yield returns ``(index, result)`` of the first to finish."""
    return First(_branches(commands, "sm.first"))


def log(message: str, *, level: str = "info", **fields: Any) -> Log:
    """Record a log line in the history; emitted once, never again on replay."""
    if level not in ("debug", "info", "warning", "error", "critical"):
        raise DefinitionError(f"sm.log level must be debug/info/warning/error/critical: {level!r}")
    return Log(str(message), level, dict(fields))


def undo() -> Undo:
    """Compensate the steps completed so far (newest first), then continue."""
    return Undo()


def now() -> Now:
    """The current time, recorded: the same value on replay."""
    return Now()


def uuid4() -> Uuid4:
    """A random UUID, recorded: the same value on replay."""
    return Uuid4()


def random() -> RandomValue:
    """A random float in [0, 1), recorded: the same value on replay."""
    return RandomValue()


def patched(change_id: str) -> Patched:
    """True for runs that reach this point on new code; False for runs recorded before."""
    return Patched(_name(change_id, "sm.patched"))
