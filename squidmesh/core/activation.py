"""What an activation of a workflow decided, and the events buffered for a run.

``Activation`` is the interpreter's answer (its outcome is one of ``WAITING``,
``COMPLETED``, ``FAILED``, ``SUSPENDED``, ``CANCELLED``) as plain values ready to
persist; ``compensation_plan`` lists the completed steps whose compensations are due.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from squidmesh.core.definition import StepPolicy
from squidmesh.core.history import Entry, History
from squidmesh.core.records import ErrorRecord
from squidmesh.types import EntryStatus

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "SUSPENDED",
    "WAITING",
    "Activation",
    "BufferedEvent",
    "ChildStart",
    "compensation_plan",
]

WAITING = "waiting"
COMPLETED = "completed"
FAILED = "failed"
SUSPENDED = "suspended"
CANCELLED = "cancelled"

_DONE = EntryStatus.COMPLETED.value


@dataclasses.dataclass(frozen=True)
class BufferedEvent:
    """An event sent to a run before it waited for it."""

    id: int
    name: str
    data: Any


@dataclasses.dataclass(frozen=True)
class ChildStart:
    """A child run this activation asks for: the ``sm.child``/``sm.start_child`` command
    recorded (or released from a ``join(limit=...)``) at ``seq``. The runtime validates
    its payload, creates the run in the same transaction and records its id in the
    entry's ``meta["run_id"]``."""

    seq: int
    command: Any


@dataclasses.dataclass
class Activation:
    """What one activation of a workflow decided. Plain values, ready to persist.

    ``new_entries`` were appended to the history (some already resolved: logs, recorded
    values); ``updates`` are earlier entries this activation changed (cancelled branches,
    resolved joins, compensations requested). ``compensate`` lists step seqs whose
    compensations must now run, in that order.
    """

    outcome: str = WAITING
    new_entries: list[Entry] = dataclasses.field(default_factory=list)
    updates: list[Entry] = dataclasses.field(default_factory=list)
    waiting_on: tuple[int, ...] = ()
    result: Any = None
    error: ErrorRecord | None = None
    reason: str | None = None
    compensate: tuple[int, ...] = ()
    consumed_events: tuple[int, ...] = ()
    #: problems in the workflow's code found by this activation (step calls never
    #: yielded), each as audit event fields (``step``, ``comment``, ``metadata``): the
    #: runtime records them as ``warning`` audit events, never as history entries
    warnings: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: child runs to create now, in yield order (see ``ChildStart``)
    children: list[ChildStart] = dataclasses.field(default_factory=list)
    #: earlier entries started by this activation: branches of a ``join(limit=...)``
    #: released as others finished (steps among them need a job, like new entries)
    started: list[Entry] = dataclasses.field(default_factory=list)
    #: set when the workflow yielded ``sm.continue_as_new``: {"payload": next payload}
    continued: dict[str, Any] | None = None

    @property
    def logs(self) -> list[Entry]:
        """Log lines first recorded by this activation: emit these, and only these."""
        return [e for e in self.new_entries if e.kind == "log"]

    def touch(self, entry: Entry) -> None:
        if entry not in self.new_entries and entry not in self.updates:
            self.updates.append(entry)


def compensation_plan(history: History) -> list[int]:
    """Completed steps with a compensation not yet run, newest completion first."""
    todo = [
        e
        for e in history.entries
        if e.kind == "step"
        and e.status == _DONE
        and e.compensation is None
        and StepPolicy.from_json(e.meta).compensate
    ]
    todo.sort(key=lambda e: e.order if e.order is not None else -1, reverse=True)
    return [e.seq for e in todo]
