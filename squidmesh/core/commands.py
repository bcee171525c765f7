"""The commands a workflow yields, besides step calls (see ``definition.StepCall``).

Each command has a ``kind`` and a ``name``; together they identify it in the history and
are what replay compares. Each is a ``Yieldable[T]``: ``x = yield from cmd`` gives ``x``
the type ``T`` of what the command evaluates to (see ``yielding``); ``x = yield cmd``
works the same at run time, with ``x`` typed ``Any``.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal, TypeVar, overload

from squidmesh.core.definition import StepCall
from squidmesh.core.yielding import Yieldable
from squidmesh.errors import DefinitionError, StepFailed, TimedOut

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
    "Yieldable",
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


T_co = TypeVar("T_co", covariant=True)
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")
E = TypeVar("E")
F = TypeVar("F")

#: what a failed branch is in ``sm.join(..., return_exceptions=True)``'s tuple
_Failure = StepFailed | TimedOut

#: what ``yield from sm.undo()`` returns: one outcome per compensation run, in order
UndoOutcome = dict[str, Any]


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


@dataclasses.dataclass(frozen=True)
class Sleep(Yieldable[None]):
    seconds: float | None = None
    until: datetime | None = None
    kind: ClassVar[str] = "sleep"
    name: ClassVar[str] = "sleep"


@dataclasses.dataclass(frozen=True)
class Pause(Yieldable[Any]):
    name: str
    reason: str | None = None
    kind: ClassVar[str] = "pause"


@dataclasses.dataclass(frozen=True)
class Approval(Yieldable[Decision]):
    name: str
    timeout: float | None = None
    kind: ClassVar[str] = "approval"


@dataclasses.dataclass(frozen=True)
class WaitForEvent(Yieldable[Any]):
    name: str
    timeout: float | None = None
    kind: ClassVar[str] = "event"


@dataclasses.dataclass(frozen=True)
class Join(Yieldable[T_co]):
    commands: tuple[Any, ...]
    return_exceptions: bool = False
    kind: ClassVar[str] = "join"
    name: ClassVar[str] = "join"


@dataclasses.dataclass(frozen=True)
class First(Yieldable[T_co]):
    commands: tuple[Any, ...]
    kind: ClassVar[str] = "first"
    name: ClassVar[str] = "first"


@dataclasses.dataclass(frozen=True)
class Log(Yieldable[None]):
    message: str
    level: str = "info"
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    kind: ClassVar[str] = "log"
    name: ClassVar[str] = "log"


@dataclasses.dataclass(frozen=True)
class Undo(Yieldable[list[UndoOutcome]]):
    kind: ClassVar[str] = "undo"
    name: ClassVar[str] = "undo"


@dataclasses.dataclass(frozen=True)
class Now(Yieldable[datetime]):
    kind: ClassVar[str] = "now"
    name: ClassVar[str] = "now"


@dataclasses.dataclass(frozen=True)
class Uuid4(Yieldable[uuid.UUID]):
    kind: ClassVar[str] = "uuid4"
    name: ClassVar[str] = "uuid4"


@dataclasses.dataclass(frozen=True)
class RandomValue(Yieldable[float]):
    kind: ClassVar[str] = "random"
    name: ClassVar[str] = "random"


@dataclasses.dataclass(frozen=True)
class Patched(Yieldable[bool]):
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
    | Join[Any]
    | First[Any]
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


@overload
def join(*, return_exceptions: bool = False) -> Join[tuple[()]]: ...


@overload
def join(a: Yieldable[A], /, *, return_exceptions: Literal[False] = False) -> Join[tuple[A]]: ...


@overload
def join(
    a: Yieldable[A], b: Yieldable[B], /, *, return_exceptions: Literal[False] = False
) -> Join[tuple[A, B]]: ...


@overload
def join(
    a: Yieldable[A],
    b: Yieldable[B],
    c: Yieldable[C],
    /,
    *,
    return_exceptions: Literal[False] = False,
) -> Join[tuple[A, B, C]]: ...


@overload
def join(
    a: Yieldable[A],
    b: Yieldable[B],
    c: Yieldable[C],
    d: Yieldable[D],
    /,
    *,
    return_exceptions: Literal[False] = False,
) -> Join[tuple[A, B, C, D]]: ...


@overload
def join(
    a: Yieldable[A],
    b: Yieldable[B],
    c: Yieldable[C],
    d: Yieldable[D],
    e: Yieldable[E],
    /,
    *,
    return_exceptions: Literal[False] = False,
) -> Join[tuple[A, B, C, D, E]]: ...


@overload
def join(
    a: Yieldable[A],
    b: Yieldable[B],
    c: Yieldable[C],
    d: Yieldable[D],
    e: Yieldable[E],
    f: Yieldable[F],
    /,
    *,
    return_exceptions: Literal[False] = False,
) -> Join[tuple[A, B, C, D, E, F]]: ...


@overload
def join(a: Yieldable[A], /, *, return_exceptions: Literal[True]) -> Join[tuple[A | _Failure]]: ...


@overload
def join(
    a: Yieldable[A], b: Yieldable[B], /, *, return_exceptions: Literal[True]
) -> Join[tuple[A | _Failure, B | _Failure]]: ...


@overload
def join(
    a: Yieldable[A], b: Yieldable[B], c: Yieldable[C], /, *, return_exceptions: Literal[True]
) -> Join[tuple[A | _Failure, B | _Failure, C | _Failure]]: ...


@overload
def join(
    a: Yieldable[A],
    b: Yieldable[B],
    c: Yieldable[C],
    d: Yieldable[D],
    /,
    *,
    return_exceptions: Literal[True],
) -> Join[tuple[A | _Failure, B | _Failure, C | _Failure, D | _Failure]]: ...


@overload
def join(
    a: Yieldable[A],
    b: Yieldable[B],
    c: Yieldable[C],
    d: Yieldable[D],
    e: Yieldable[E],
    /,
    *,
    return_exceptions: Literal[True],
) -> Join[tuple[A | _Failure, B | _Failure, C | _Failure, D | _Failure, E | _Failure]]: ...


@overload
def join(
    a: Yieldable[A],
    b: Yieldable[B],
    c: Yieldable[C],
    d: Yieldable[D],
    e: Yieldable[E],
    f: Yieldable[F],
    /,
    *,
    return_exceptions: Literal[True],
) -> Join[
    tuple[A | _Failure, B | _Failure, C | _Failure, D | _Failure, E | _Failure, F | _Failure]
]: ...


@overload
def join(
    *commands: Yieldable[A], return_exceptions: Literal[False] = False
) -> Join[tuple[A, ...]]: ...


@overload
def join(
    *commands: Yieldable[A], return_exceptions: Literal[True]
) -> Join[tuple[A | _Failure, ...]]: ...


@overload
def join(*commands: Yieldable[Any], return_exceptions: bool) -> Join[tuple[Any, ...]]: ...


def join(*commands: Any, return_exceptions: bool = False) -> Join[Any]:
    """Run branches in parallel; the yield returns their results in argument order.

    Typed per position for up to six branches (``yield from sm.join(a(), b())`` is a
    ``tuple[A, B]``); beyond, or for ``sm.join(*calls)``, a ``tuple[X, ...]`` of the
    branches' common type. With ``return_exceptions=True`` a failed branch's position
    holds its ``StepFailed`` (or ``TimedOut``) instead of raising. No branches at all
    (``sm.join(*[])``) gives ``()`` at once.
    """
    return Join(_branches(commands, "sm.join", empty=True), bool(return_exceptions))


@overload
def first(a: Yieldable[A], /) -> First[tuple[int, A]]: ...


@overload
def first(a: Yieldable[A], b: Yieldable[B], /) -> First[tuple[int, A | B]]: ...


@overload
def first(a: Yieldable[A], b: Yieldable[B], c: Yieldable[C], /) -> First[tuple[int, A | B | C]]: ...


@overload
def first(
    a: Yieldable[A], b: Yieldable[B], c: Yieldable[C], d: Yieldable[D], /
) -> First[tuple[int, A | B | C | D]]: ...


@overload
def first(
    a: Yieldable[A], b: Yieldable[B], c: Yieldable[C], d: Yieldable[D], e: Yieldable[E], /
) -> First[tuple[int, A | B | C | D | E]]: ...


@overload
def first(
    a: Yieldable[A],
    b: Yieldable[B],
    c: Yieldable[C],
    d: Yieldable[D],
    e: Yieldable[E],
    f: Yieldable[F],
    /,
) -> First[tuple[int, A | B | C | D | E | F]]: ...


@overload
def first(*commands: Yieldable[A]) -> First[tuple[int, A]]: ...


def first(*commands: Any) -> First[Any]:
    """Race branches; the yield returns ``(index, result)`` of the first to finish.

    Typed ``tuple[int, A | B | ...]`` for up to six branches, ``tuple[int, X]`` (the
    branches' common type) beyond.
    """
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
