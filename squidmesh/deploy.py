"""``check_deploy(mesh)``: would the code this Mesh holds break the runs in flight?

Before deploying new workflow code, build a ``Mesh`` with the *new* workflows on the
*production* database and call :func:`check_deploy` (or run ``squidmesh check-deploy``).
It replays the recorded history of every run that is not finished yet (``pending``,
``running``, ``retrying``, ``paused``, ``suspended``, ``cancelling``) against the
registered workflows, exactly as a worker would after the deploy, and reports every run
that would be suspended:

- ``nondeterminism``: the new code yields a different command at some ``seq`` than the
  one recorded (or returns while recorded commands remain);
- ``unregistered``: the run's workflow is not registered on the Mesh at all;
- ``payload_error``: the stored payload no longer satisfies the trigger's contract (or
  the trigger is gone);
- ``workflow_error``: the workflow code raises while replaying the recorded history.

Nothing is written: each run gets a fresh interpreter on a copy of its history, steps
never execute (the interpreter only records commands) and logs are not emitted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from squidmesh.core.arguments import count
from squidmesh.core.records import ErrorRecord
from squidmesh.errors import PayloadError, SquidmeshError, UnknownTriggerError
from squidmesh.mesh import Mesh
from squidmesh.runtime.replaying import run_history, run_interpreter
from squidmesh.storage.base import RunRecord
from squidmesh.types import RunStatus

__all__ = ["ACTIVE_STATUSES", "DeployProblem", "DeployReport", "check_deploy"]

#: The statuses of runs that a deploy can still affect (every non-terminal status).
ACTIVE_STATUSES: tuple[str, ...] = tuple(s.value for s in RunStatus if not s.is_terminal)


@dataclasses.dataclass(frozen=True)
class DeployProblem:
    """One run that the registered code would break.

    ``kind`` is ``nondeterminism``, ``unregistered``, ``payload_error`` or
    ``workflow_error``; ``seq``, ``expected`` (what the code yields now) and
    ``recorded`` (what the history holds) are set for ``nondeterminism``.
    """

    run_id: str
    workflow: str
    status: str
    kind: str
    message: str
    seq: int | None = None
    expected: str | None = None
    recorded: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DeployReport:
    """What :func:`check_deploy` found: ``checked`` runs, the ``problems`` among them."""

    checked: int
    problems: tuple[DeployProblem, ...]

    @property
    def ok(self) -> bool:
        """True when every checked run replays cleanly against the registered code."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "ok": self.ok,
            "problems": [p.to_json() for p in self.problems],
        }


def check_deploy(
    mesh: Mesh,
    *,
    statuses: Iterable[str] = ACTIVE_STATUSES,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> DeployReport:
    """Replay every run with one of ``statuses`` against ``mesh``'s workflows; no writes.

    ``progress`` is called with the number of runs checked so far after every
    ``batch_size`` runs (and once at the end).
    """
    count(batch_size, what="batch_size")
    wanted = tuple(dict.fromkeys(statuses))
    unknown = sorted(set(wanted) - set(ACTIVE_STATUSES))
    if unknown:
        raise ValueError(
            f"check_deploy checks runs in flight only; not a non-terminal status: "
            f"{', '.join(unknown)} (valid: {', '.join(ACTIVE_STATUSES)})"
        )
    mesh.schema_gate.ready()
    checked = 0
    problems: list[DeployProblem] = []
    for status in wanted:
        for batch in _pages(mesh, status, batch_size):
            for run in batch:
                problem = _check_run(mesh, run)
                if problem is not None:
                    problems.append(problem)
                checked += 1
                if progress is not None and checked % batch_size == 0:
                    progress(checked)
    if progress is not None and checked % batch_size:
        progress(checked)
    return DeployReport(checked=checked, problems=tuple(problems))


def _pages(mesh: Mesh, status: str, size: int) -> Iterator[list[RunRecord]]:
    """Runs with ``status``, newest first, ``size`` at a time (keyset pagination)."""
    cursor: RunRecord | None = None
    while True:
        with mesh.store.transaction() as tx:
            page = tx.list_runs(
                status=status,
                limit=size,
                before=cursor.created_at if cursor is not None else None,
                before_id=cursor.id if cursor is not None else None,
            )
        if not page:
            return
        yield page
        if len(page) < size:
            return
        cursor = page[-1]


def _check_run(mesh: Mesh, run: RunRecord) -> DeployProblem | None:
    def problem(kind: str, message: str, **extra: Any) -> DeployProblem:
        return DeployProblem(
            run_id=run.id,
            workflow=run.workflow,
            status=run.status,
            kind=kind,
            message=" ".join(message.split()),
            **extra,
        )

    workflow = mesh.workflows.get(run.workflow)
    if workflow is None:
        return problem(
            "unregistered",
            f"workflow {run.workflow!r} is not registered on this Mesh "
            f"(registered: {', '.join(sorted(mesh.workflows)) or 'none'})",
        )
    with mesh.store.transaction() as tx:
        entries = tx.load_entries(run.id)
    history = run_history(run, entries)
    interpreter = run_interpreter(run, workflow)
    try:
        act = interpreter.advance(history, now=mesh.clock())
    except (PayloadError, UnknownTriggerError) as exc:
        return problem("payload_error", f"the stored payload no longer loads: {exc}")
    except SquidmeshError as exc:
        return problem("workflow_error", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a bug in replay itself: report it, keep checking others
        return problem("workflow_error", f"{type(exc).__name__}: {exc}")
    finally:
        interpreter.close()
    if act.outcome != "suspended":
        return None
    error = act.error or ErrorRecord("")
    if act.reason == "nondeterminism":
        found = error.details
        details: dict[str, Any] = found if isinstance(found, dict) else {}
        seq = details.get("seq")
        return problem(
            "nondeterminism",
            error.message or "nondeterminism",
            seq=int(seq) if seq is not None else None,
            expected=_opt_str(details.get("expected")),
            recorded=_opt_str(details.get("recorded")),
        )
    return problem(
        "workflow_error",
        f"{error.type or 'error'}: {error.message or act.reason}",
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
