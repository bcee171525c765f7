"""What replay needs of a stored run: its history over loaded entries, and a fresh
interpreter. Storage keeps rows; building the interpreter is the runtime's business."""

from __future__ import annotations

from squidmesh.core.definition import WorkflowDefinition
from squidmesh.core.history import Entry, History
from squidmesh.core.replay import Interpreter
from squidmesh.storage.base import RunRecord
from squidmesh.types import TERMINAL_STATUSES, RunStatus

__all__ = ["run_history", "run_interpreter"]


def run_history(run: RunRecord, entries: list[Entry]) -> History:
    """The run's history over ``entries``, with what replay needs to know of the run."""
    terminal = RunStatus(run.status) in TERMINAL_STATUSES
    return History(
        entries,
        run_id=run.id,
        workflow=run.workflow,
        trigger=run.trigger,
        payload=run.payload,
        schedule=run.schedule,
        outcome=run.status if terminal else None,
        result=run.result if terminal else None,
    )


def run_interpreter(
    run: RunRecord, workflow: WorkflowDefinition, *, max_value_bytes: int | None = None
) -> Interpreter:
    """A fresh interpreter for ``run`` (it replays from seq 0 on first advance)."""
    return Interpreter(
        workflow,
        run_id=run.id,
        trigger=run.trigger,
        payload=run.payload,
        schedule=run.schedule,
        max_value_bytes=max_value_bytes,
    )
