"""What workflow and step code can ask about where it runs.

``current_run()`` is available inside workflow code, ``step_context()`` inside a running
step. Both are context variables set by whoever drives the code (the interpreter or the
runtime), so they work across threads and event loops without globals.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["CurrentRun", "StepContext", "current_run", "step_context"]


@dataclasses.dataclass(frozen=True)
class CurrentRun:
    """Facts about the run whose workflow code is executing."""

    run_id: str
    workflow: str
    trigger: str
    schedule: dict[str, Any] | None
    is_replaying: bool
    history_length: int


@dataclasses.dataclass(frozen=True)
class StepContext:
    """Facts about the step attempt that is executing."""

    run_id: str
    step: str
    seq: int
    attempt: int
    connection: Any = None
    _heartbeat: Callable[[Any], None] | None = dataclasses.field(default=None, repr=False)
    _session_factory: Callable[[], Any] | None = dataclasses.field(default=None, repr=False)

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts of this step call: ``"{run_id}:{seq}"``."""
        return f"{self.run_id}:{self.seq}"

    def heartbeat(self, details: Any = None) -> None:
        """Tell the runtime this attempt is alive (extends its lease)."""
        if self._heartbeat is not None:
            self._heartbeat(details)

    def session(self) -> Any:
        """An ORM Session bound to ``connection`` (``transaction=True`` steps only)."""
        if self._session_factory is None:
            raise RuntimeError(
                f"step {self.step} (run {self.run_id}) has no database session: declare the "
                "step with transaction=True to share the runtime's transaction"
            )
        return self._session_factory()


_current_run: contextvars.ContextVar[CurrentRun | None] = contextvars.ContextVar(
    "squidmesh_current_run", default=None
)
_step_context: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "squidmesh_step_context", default=None
)


def current_run() -> CurrentRun:
    """The run whose workflow code is executing. Only valid inside a workflow."""
    value = _current_run.get()
    if value is None:
        raise RuntimeError(
            "sm.current_run() was called outside workflow code: it is only available "
            "while squidmesh drives a workflow generator"
        )
    return value


def step_context() -> StepContext:
    """The step attempt that is executing. Only valid inside a running step."""
    value = _step_context.get()
    if value is None:
        raise RuntimeError(
            "sm.step_context() was called outside a running step: call it from the body "
            "of an @sm.step function while squidmesh executes it"
        )
    return value


def set_current_run(value: CurrentRun | None) -> contextvars.Token[CurrentRun | None]:
    return _current_run.set(value)


def reset_current_run(token: contextvars.Token[CurrentRun | None]) -> None:
    _current_run.reset(token)


def set_step_context(value: StepContext | None) -> contextvars.Token[StepContext | None]:
    return _step_context.set(value)


def reset_step_context(token: contextvars.Token[StepContext | None]) -> None:
    _step_context.reset(token)
