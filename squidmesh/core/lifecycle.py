"""The run lifecycle: every status a run may move to, from a table over status x event.

The runtime never assigns a status itself: it names what happened (a ``RunEvent``) and
``transition`` says where that leaves the run, or refuses a move the table does not
hold (a bug: nothing may revive a finished run). Statuses are ``RunStatus`` values here;
strings exist only where rows are stored.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from squidmesh.types import TERMINAL_STATUSES, RunStatus

__all__ = ["ENDINGS", "TRANSITIONS", "IllegalTransition", "RunEvent", "transition"]


class RunEvent(enum.Enum):
    """What happened to a run."""

    #: an activation starts (a pending run is running from now on)
    ACTIVATED = "activated"
    #: a step attempt begins (a run retrying that step is running again)
    STEP_STARTED = "step_started"
    #: the workflow waits on entries: its status says on what (``waiting`` argument)
    WAITS = "waits"
    #: compensations begin because the workflow asked (``sm.undo``)
    COMPENSATING = "compensating"
    #: an operator moved it on: approved or rejected, unblocked, resumed
    RESUMED = "resumed"
    #: the workflow code cannot go on (a bug or nondeterminism)
    SUSPENDED = "suspended"
    #: cancellation asked for while work is still in flight or compensations run
    CANCEL_REQUESTED = "cancel_requested"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class IllegalTransition(AssertionError):
    """A move the lifecycle does not allow: a defect in squidmesh, never a user error."""


#: the target ``WAITS`` stands for: the status the wait itself implies
_BY_WAIT = "by-wait"
#: the status does not change
_SAME = "same"

_ACTIVE = tuple(s for s in RunStatus if s not in TERMINAL_STATUSES)


def _from_every_active(target: RunStatus | str) -> dict[RunStatus, RunStatus | str]:
    return dict.fromkeys(_ACTIVE, target)


def _table() -> dict[RunEvent, dict[RunStatus, RunStatus | str]]:
    table: dict[RunEvent, dict[RunStatus, RunStatus | str]] = {
        RunEvent.ACTIVATED: {**_from_every_active(_SAME), RunStatus.PENDING: RunStatus.RUNNING},
        RunEvent.STEP_STARTED: {
            **_from_every_active(_SAME),
            RunStatus.RETRYING: RunStatus.RUNNING,
        },
        # A cancelling run stays cancelling whatever it waits on.
        RunEvent.WAITS: {**_from_every_active(_BY_WAIT), RunStatus.CANCELLING: _SAME},
        RunEvent.COMPENSATING: _from_every_active(RunStatus.RUNNING),
        RunEvent.RESUMED: _from_every_active(RunStatus.RUNNING),
        RunEvent.SUSPENDED: _from_every_active(RunStatus.SUSPENDED),
        RunEvent.CANCEL_REQUESTED: _from_every_active(RunStatus.CANCELLING),
        RunEvent.COMPLETED: _from_every_active(RunStatus.COMPLETED),
        RunEvent.FAILED: _from_every_active(RunStatus.FAILED),
        RunEvent.CANCELLED: _from_every_active(RunStatus.CANCELLED),
    }
    # No operator may move a run that is being cancelled back to running.
    del table[RunEvent.RESUMED][RunStatus.CANCELLING]
    return table


#: event -> status before -> status after (absent: the move is illegal). Terminal
#: statuses appear nowhere on the left: a finished run never moves again.
TRANSITIONS: Mapping[RunEvent, Mapping[RunStatus, RunStatus | str]] = _table()

#: what a run may end as, and the event that ends it so
ENDINGS: Mapping[RunStatus, RunEvent] = {
    RunStatus.COMPLETED: RunEvent.COMPLETED,
    RunStatus.FAILED: RunEvent.FAILED,
    RunStatus.CANCELLED: RunEvent.CANCELLED,
}


def transition(
    current: RunStatus | str, event: RunEvent, *, waiting: RunStatus | None = None
) -> RunStatus:
    """The status a run in ``current`` has after ``event`` (``waiting``: the status
    the entries a ``WAITS`` event waits on imply)."""
    before = RunStatus(current)
    target = TRANSITIONS[event].get(before)
    if target is None:
        raise IllegalTransition(f"a run that is {before.value} cannot be {event.value}")
    if target == _SAME:
        return before
    if target == _BY_WAIT:
        if waiting is None:
            raise IllegalTransition(f"{event.value} needs the status its wait implies")
        return waiting
    return RunStatus(target)
