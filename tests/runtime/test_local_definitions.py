from __future__ import annotations

# Steps and compensations defined inside a function (closures) cannot be imported by
# reference; the engine finds them by replaying the run's history with the workflow,
# which yields them again. This matters once the run's live interpreter is gone: after
# the run failed, or in another process.
from typing import Any

import squidmesh as sm
from tests.runtime.support import MeshFactory

UNDONE: list[str] = []


def make_workflow() -> sm.WorkflowDefinition:
    def give_back(input: dict[str, Any], output: Any, failure: Any) -> str:
        UNDONE.append(output)
        return f"returned {output}"

    @sm.step(compensate=give_back)
    def borrow(item: str) -> str:
        return item

    @sm.step
    def explode() -> None:
        raise sm.NonRetryable("the bridge is out")

    @sm.workflow(name="borrowing")
    def borrowing(payload=None):
        yield borrow("rope")
        yield explode()

    return borrowing


def test_a_closure_compensation_runs_after_a_restart(mesh_factory: MeshFactory) -> None:
    UNDONE.clear()
    workflow = make_workflow()
    first = mesh_factory([workflow], executor="database")
    run = first.start_run(workflow)
    # Perform jobs until the failure schedules the compensation, then "restart": a new
    # Mesh with an empty interpreter cache performs the compensation job.
    for _ in range(10):
        if first.inspect_run(run.id).reason == "compensating":
            break
        first.drain(limit=1)
    assert first.inspect_run(run.id).reason == "compensating"
    second = mesh_factory([make_workflow()], executor="database")
    second.drain()
    done = second.inspect_run(run.id, include_history=True)
    assert done.status is sm.RunStatus.FAILED and done.reason == "step_failed"
    borrowed = next(s for s in done.step_runs or () if s.name == "borrow")
    assert borrowed.compensation is not None
    assert borrowed.compensation["status"] == "completed"
    assert borrowed.compensation["output"] == "returned rope"
    assert UNDONE == ["rope"]
