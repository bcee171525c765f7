"""Step calls that workflow code created and never yielded.

Calling a step only builds a ``StepCall``; nothing runs until the workflow yields it. A
forgotten ``yield`` is therefore silent: the step never runs, or a ``StepCall`` ends up in
the run's result. The interpreter reports such calls as warnings on its ``Activation``
(the runtime writes each as a ``warning`` audit event; ``WorkflowTester`` raises).

What counts as never yielded. A call is a value: it may be built early and yielded
later, even several commands later (``calls = [charge(o) for o in orders]`` then one
``yield`` per call), so "not yielded by the next command" is no bug. A call is reported
once it can no longer be yielded:

- it became unreachable without being yielded (a bare ``charge(o)`` statement, a
  variable rebound, a loop's previous value). A weak reference tells: CPython frees an
  object when its last reference goes, at the same point of the code on every execution;
- or the workflow returned while the call was never yielded (still referenced, e.g. in
  the result, or a local that was never used). A workflow that fails or is suspended by
  an exception reports only the calls already unreachable: the others might have been
  meant for later.

Once per run and replay-safe, without reading back what was reported. A call found
unreachable is reported by the activation that *records* the next command (or ends the
run), in the same transaction as that command. When the interpreter replays a recorded
command instead, what it found was reported when that command was first recorded:
replaying the same code frees the same objects at the same points. Each (step,
file:line) is reported once per run, so a loop does not repeat its warning per
iteration; a replay learns which were reported from the calls it finds on the way.
"""

from __future__ import annotations

import contextvars
import dataclasses
import sys
import weakref
from typing import Any

__all__ = ["Tracker", "Unyielded", "activate", "created", "deactivate"]

CODE = "never_yielded"


@dataclasses.dataclass(frozen=True)
class Unyielded:
    """A step call created by workflow code at ``loc`` (file:line) and never yielded."""

    step: str
    loc: str | None

    def message(self) -> str:
        where = f" created at {self.loc}" if self.loc else ""
        return (
            f"step call {self.step}(...){where} was never yielded, so the step did not run: "
            f"write `yield {self.step}(...)` or `result = yield from {self.step}(...)`"
        )

    def audit(self) -> dict[str, Any]:
        """The warning as audit event fields: ``step``, ``comment`` and ``metadata``."""
        return {
            "step": self.step,
            "comment": self.message(),
            "metadata": {"code": CODE, "loc": self.loc},
        }


class _Ref(weakref.ref[Any]):
    """A weak reference to a step call, with where it was made (formatted only if lost)."""

    __slots__ = ("code", "key", "line", "step")
    key: int
    step: str
    code: Any
    line: int

    def unyielded(self) -> Unyielded:
        return Unyielded(self.step, f"{self.code.co_filename}:{self.line}")


class Tracker:
    """The step calls one workflow generator created, until each is yielded or lost.

    Cheap on the hot path (every step call of a workflow passes through ``created`` and
    ``yielded``): a weak reference and a dict entry; messages are built only for calls
    that are lost.
    """

    def __init__(self) -> None:
        #: id(call) -> its weak reference, while the call lives and was not yielded
        self._live: dict[int, _Ref] = {}
        self._lost: list[_Ref] = []
        self._reported: set[Unyielded] = set()
        self._on_lost = self._lost_call  # one bound method for every reference

    def created(self, call: Any, frame: Any) -> None:
        ref = _Ref(call, self._on_lost)
        ref.key = id(call)
        ref.step = call.step.name
        ref.code = frame.f_code
        ref.line = frame.f_lineno
        self._live[ref.key] = ref

    def _lost_call(self, ref: _Ref) -> None:
        # Called while the call is being freed, before its id can be reused.
        if self._live.get(ref.key) is ref:
            del self._live[ref.key]
            self._lost.append(ref)

    def yielded(self, command: Any) -> None:
        """``command`` (a step call, or a join/first of branches) reached the interpreter."""
        live = self._live
        if live:
            live.pop(id(command), None)
            if command.kind in ("join", "first"):
                for branch in command.commands:
                    live.pop(id(branch), None)

    def found(self) -> list[Unyielded]:
        """The calls lost since the last look, each (step, file:line) reported once."""
        if not self._lost:
            return []
        lost, self._lost = self._lost, []
        return self._once([ref.unyielded() for ref in lost])

    def replayed(self) -> None:
        """The calls lost so far were reported (or folded into an earlier report of the
        same line) by the activation that first recorded the command being replayed."""
        if self._lost:
            self._reported.update(ref.unyielded() for ref in self._lost)
            self._lost = []

    def remaining(self) -> list[Unyielded]:
        """Every call never yielded, lost or still referenced: for a workflow that returned."""
        lost, self._lost = self._lost, []
        return self._once([ref.unyielded() for ref in [*lost, *list(self._live.values())]])

    def _once(self, found: list[Unyielded]) -> list[Unyielded]:
        fresh = []
        for info in found:
            if info not in self._reported:
                self._reported.add(info)
                fresh.append(info)
        return fresh


_active: contextvars.ContextVar[Tracker | None] = contextvars.ContextVar(
    "squidmesh_unyielded", default=None
)


def activate(tracker: Tracker | None) -> contextvars.Token[Tracker | None]:
    """Track the step calls created from now on (the interpreter, around each resume)."""
    return _active.set(tracker)


def deactivate(token: contextvars.Token[Tracker | None]) -> None:
    _active.reset(token)


def created(call: Any) -> None:
    """Called by ``StepDefinition.__call__``: note a call made by workflow code."""
    tracker = _active.get()
    if tracker is None:
        return  # not inside a workflow being driven: tests, steps, module level
    # 0: this function, 1: StepDefinition.__call__, 2: the code that called the step.
    tracker.created(call, sys._getframe(2))
