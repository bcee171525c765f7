from __future__ import annotations

# Work for a run whose workflow this process does not register (a worker deployed with
# fewer workflows, or code removed): it is handed back for a process that has it, with
# backoff, never dropped (the run would be stuck) and never held for a lease period
# over and over. Compensations need only the record and run anywhere their function can
# be imported.
from typing import Any

import squidmesh as sm
from tests.runtime.support import MeshFactory

CALLS: list[str] = []


def release(*, input: Any, output: Any, failure: Any) -> str:
    CALLS.append("release")
    return f"released {output}"


@sm.step(compensate=release)
def hold(x: int) -> int:
    return x


@sm.step
def refuse() -> None:
    raise sm.NonRetryable("refused")


@sm.workflow
def booking() -> Any:
    yield hold(3)
    yield refuse()


@sm.step
def tick() -> str:
    return "tick"


@sm.workflow
def ticking() -> Any:
    return (yield tick())


def test_a_job_for_an_unregistered_workflow_is_postponed_not_lost(
    mesh_factory: MeshFactory, caplog: Any
) -> None:
    owner = mesh_factory([ticking], executor="database")
    run = owner.start_run(ticking)
    stranger = mesh_factory([], executor="database")  # a worker without the workflow

    assert stranger.drain() == 1
    assert "is not registered in this process" in caplog.text
    (queued,) = mesh_factory.jobs()
    assert queued["kind"] == "activate" and queued["data"] == {"postponed": 1}
    assert queued["run_at"] > mesh_factory.clock()  # backing off, not spinning
    assert owner.inspect_run(run.id).status == "pending"

    mesh_factory.clock.advance(6)
    owner.drain()
    assert owner.inspect_run(run.id).result == "tick"
    assert mesh_factory.jobs() == []


def test_a_compensation_runs_where_the_workflow_is_not_registered(
    mesh_factory: MeshFactory,
) -> None:
    CALLS.clear()
    owner = mesh_factory([booking], executor="database")
    run = owner.start_run(booking)
    assert owner.drain(limit=3) == 3  # activation, hold, refuse: compensation scheduled
    assert owner.explain_run(run.id).reason == "compensating"

    stranger = mesh_factory([], executor="database")
    stranger.drain()
    done = owner.inspect_run(run.id, include_history=True)
    assert done.status == "failed"
    assert CALLS == ["release"]
    assert done.step_runs is not None
    compensation = done.step_runs[0].compensation
    assert compensation is not None
    assert (compensation["status"], compensation["output"]) == ("completed", "released 3")
    assert mesh_factory.jobs() == []
