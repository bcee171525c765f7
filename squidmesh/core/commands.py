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
from typing import Any, ClassVar, Literal, NoReturn, TypeVar, overload

import pydantic

from squidmesh.core.definition import StepCall, WorkflowDefinition
from squidmesh.core.yielding import Yieldable
from squidmesh.errors import DefinitionError, StepFailed, TimedOut

__all__ = [
    "BRANCH_KINDS",
    "Approval",
    "Child",
    "Command",
    "ContinueAsNew",
    "Decision",
    "First",
    "Join",
    "Log",
    "Now",
    "Patched",
    "Pause",
    "Publish",
    "RandomValue",
    "Sleep",
    "StartChild",
    "Undo",
    "Uuid4",
    "WaitForEvent",
    "Yieldable",
    "approval",
    "child",
    "continue_as_new",
    "first",
    "join",
    "log",
    "now",
    "patched",
    "pause",
    "publish",
    "random",
    "sleep",
    "sleep_until",
    "start_child",
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
W = TypeVar("W")

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
    #: at most this many branches in flight at once (None: all of them)
    limit: int | None = None
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


@dataclasses.dataclass(frozen=True, eq=False)
class Child(Yieldable[T_co]):
    """Run another workflow as a child and wait for its result (``sm.child``)."""

    #: the child's ``WorkflowDefinition``, or the name of a workflow registered with the Mesh
    workflow: Any
    payload: Any = None
    trigger: str | None = None
    key: str | None = None
    kind: ClassVar[str] = "child"

    @property
    def name(self) -> str:
        return _workflow_name(self.workflow)

    @property
    def definition(self) -> WorkflowDefinition[Any] | None:
        return self.workflow if isinstance(self.workflow, WorkflowDefinition) else None


@dataclasses.dataclass(frozen=True, eq=False)
class StartChild(Yieldable[uuid.UUID]):
    """Start a detached child run and go on at once (``sm.start_child``)."""

    workflow: Any
    payload: Any = None
    trigger: str | None = None
    key: str | None = None
    kind: ClassVar[str] = "start_child"

    @property
    def name(self) -> str:
        return _workflow_name(self.workflow)

    @property
    def definition(self) -> WorkflowDefinition[Any] | None:
        return self.workflow if isinstance(self.workflow, WorkflowDefinition) else None


@dataclasses.dataclass(frozen=True, eq=False)
class ContinueAsNew(Yieldable[NoReturn]):
    """End this run and start the next one with an empty history."""

    #: the next run's payload; None keeps this run's payload
    payload: Any = None
    kind: ClassVar[str] = "continue_as_new"
    name: ClassVar[str] = "continue_as_new"


@dataclasses.dataclass(frozen=True, eq=False)
class Publish(Yieldable[None]):
    """Record a named value readable while the run is active (``sm.publish``)."""

    name: str
    value: Any = None
    kind: ClassVar[str] = "publish"


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
    | Child[Any]
    | StartChild
    | ContinueAsNew
    | Publish
)

#: Commands that may be branches of ``join`` and ``first``: they wait for something.
BRANCH_KINDS = frozenset({"step", "sleep", "pause", "approval", "event", "child"})
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
    Child,
    StartChild,
    ContinueAsNew,
    Publish,
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
                f"{what} branches must be steps, sleeps, pauses, approvals, event waits or "
                "sm.child runs; "
                f"got {cmd!r}"
            )
    return commands


@overload
def join(*, return_exceptions: bool = False, limit: int | None = None) -> Join[tuple[()]]: ...


@overload
def join(
    a: Yieldable[A], /, *, return_exceptions: Literal[False] = False, limit: int | None = None
) -> Join[tuple[A]]: ...


@overload
def join(
    a: Yieldable[A],
    b: Yieldable[B],
    /,
    *,
    return_exceptions: Literal[False] = False,
    limit: int | None = None,
) -> Join[tuple[A, B]]: ...


@overload
def join(
    a: Yieldable[A],
    b: Yieldable[B],
    c: Yieldable[C],
    /,
    *,
    return_exceptions: Literal[False] = False,
    limit: int | None = None,
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
    limit: int | None = None,
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
    limit: int | None = None,
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
    limit: int | None = None,
) -> Join[tuple[A, B, C, D, E, F]]: ...


@overload
def join(
    a: Yieldable[A], /, *, return_exceptions: Literal[True], limit: int | None = None
) -> Join[tuple[A | _Failure]]: ...


@overload
def join(
    a: Yieldable[A],
    b: Yieldable[B],
    /,
    *,
    return_exceptions: Literal[True],
    limit: int | None = None,
) -> Join[tuple[A | _Failure, B | _Failure]]: ...


@overload
def join(
    a: Yieldable[A],
    b: Yieldable[B],
    c: Yieldable[C],
    /,
    *,
    return_exceptions: Literal[True],
    limit: int | None = None,
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
    limit: int | None = None,
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
    limit: int | None = None,
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
    limit: int | None = None,
) -> Join[
    tuple[A | _Failure, B | _Failure, C | _Failure, D | _Failure, E | _Failure, F | _Failure]
]: ...


@overload
def join(
    *commands: Yieldable[A], return_exceptions: Literal[False] = False, limit: int | None = None
) -> Join[tuple[A, ...]]: ...


@overload
def join(
    *commands: Yieldable[A], return_exceptions: Literal[True], limit: int | None = None
) -> Join[tuple[A | _Failure, ...]]: ...


@overload
def join(
    *commands: Yieldable[Any], return_exceptions: bool, limit: int | None = None
) -> Join[tuple[Any, ...]]: ...


def join(*commands: Any, return_exceptions: bool = False, limit: int | None = None) -> Join[Any]:
    """Run branches in parallel; the yield returns their results in argument order.

    Typed per position for up to six branches (``yield from sm.join(a(), b())`` is a
    ``tuple[A, B]``); beyond, or for ``sm.join(*calls)``, a ``tuple[X, ...]`` of the
    branches' common type. With ``return_exceptions=True`` a failed branch's position
    holds its ``StepFailed`` (or ``TimedOut``) instead of raising. No branches at all
    (``sm.join(*[])``) gives ``()`` at once.

    ``limit=N`` keeps at most N branches in flight: the first N start at once, and each
    time one finishes the next in argument order starts (a fan-out over thousands of
    items that must not run all at once). Results stay in argument order.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DefinitionError(f"sm.join limit must be a positive integer or None, got {limit!r}")
    return Join(_branches(commands, "sm.join", empty=True), bool(return_exceptions), limit)


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


def _workflow_name(workflow: Any) -> str:
    if isinstance(workflow, WorkflowDefinition):
        return workflow.name
    if isinstance(workflow, str) and workflow:
        return workflow
    raise DefinitionError(
        f"a child run needs an @sm.workflow (or a registered workflow's name), got {workflow!r}"
    )


def _child_options(
    what: str, workflow: Any, payload: Any, trigger: Any, key: Any
) -> tuple[Any, str | None, str | None]:
    _workflow_name(workflow)
    if trigger is not None and (not isinstance(trigger, str) or not trigger):
        raise DefinitionError(f"{what} trigger= must be a trigger name, got {trigger!r}")
    if key is not None and (not isinstance(key, str) or not key):
        raise DefinitionError(f"{what} key= must be a non-empty string, got {key!r}")
    if isinstance(payload, pydantic.BaseModel):
        payload = payload.model_dump(mode="json")
    return payload, trigger, key


@overload
def child(
    workflow: WorkflowDefinition[W],
    payload: Any = None,
    *,
    trigger: str | None = None,
    key: str | None = None,
) -> Child[W]: ...


@overload
def child(
    workflow: str, payload: Any = None, *, trigger: str | None = None, key: str | None = None
) -> Child[Any]: ...


def child(
    workflow: Any, payload: Any = None, *, trigger: str | None = None, key: str | None = None
) -> Child[Any]:
    """Run ``workflow`` as a child run and wait: the yield returns the child's result.

    The child run is created in the same transaction as the parent's state change that
    records this command (exactly once, even on replay or redelivery) and may run on any
    worker. ``payload`` is validated against the child's ``trigger`` (its default trigger
    when None) like any start; a payload that does not fit, or a child that fails or is
    cancelled, throws ``sm.ChildFailed`` in here. ``key`` is the child run's idempotency
    key: a run of that workflow with that key that has already ended is not run again,
    its outcome is this child's. ``yield from sm.child(wf)`` is typed as ``wf``'s
    annotated result.
    """
    payload, trigger, key = _child_options("sm.child", workflow, payload, trigger, key)
    return Child(workflow, payload, trigger, key)


def start_child(
    workflow: Any, payload: Any = None, *, trigger: str | None = None, key: str | None = None
) -> StartChild:
    """Start ``workflow`` as a detached child run; the yield returns its run id at once.

    The parent does not wait for it, and cancelling the parent leaves it running. With
    ``key``, a run of that workflow with that idempotency key is reused, as ``start_run``
    would.
    """
    payload, trigger, key = _child_options("sm.start_child", workflow, payload, trigger, key)
    return StartChild(workflow, payload, trigger, key)


def continue_as_new(payload: Any = None) -> ContinueAsNew:
    """End this run (``completed``, reason ``continued_as_new``) and start a fresh run of
    the same workflow and trigger with an empty history, in the same transaction.

    ``payload`` is the next run's payload (validated against the trigger); None keeps
    this run's payload. Nothing after the ``yield`` runs: a loop that runs forever
    continues as new every so often to keep its history bounded.
    """
    if isinstance(payload, pydantic.BaseModel):
        payload = payload.model_dump(mode="json")
    return ContinueAsNew(payload)


def publish(name: str, value: Any) -> Publish:
    """Record ``value`` (JSON) under ``name``: readable while the run is active through
    ``Run.published``, ``mesh.get_published``, the console and the CLI. Recorded in the
    history, so replay never publishes again; the latest value of a name wins."""
    if isinstance(value, pydantic.BaseModel):
        value = value.model_dump(mode="json")
    return Publish(_name(name, "sm.publish"), value)


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
