from __future__ import annotations

# The sweeper (squidmesh/runtime/sweeper.py) on every store: an active run whose job was
# lost is found and its outstanding work dispatched again, once; runs waiting on people
# or events are left alone.
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.runtime.sweeper import Sweeper
from tests.runtime.support import MeshFactory, crash
from tests.support import writes


class WorkerDied(BaseException):
    """Escapes the step runner like a worker dying mid-step: the attempt stays running."""


CALLS: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


@sm.step
def hop(x: int) -> int:
    CALLS["hop"] = CALLS.get("hop", 0) + 1
    return x + 1


@sm.step
def dies_once(x: int) -> int:
    CALLS["dies_once"] = CALLS.get("dies_once", 0) + 1
    if CALLS["dies_once"] == 1:
        raise WorkerDied()
    return x * 2


def unbook(*, input: Any, output: Any, failure: Any) -> str:
    CALLS["unbook"] = CALLS.get("unbook", 0) + 1
    return f"unbooked {output}"


@sm.step(compensate=unbook)
def book(x: int) -> int:
    return x


@sm.step
def refuse() -> None:
    raise sm.NonRetryable("no")


@sm.workflow
def two_hops() -> Any:
    a = yield hop(1)
    return (yield hop(a))


@sm.workflow
def dying() -> Any:
    return (yield dies_once(4))


@sm.workflow
def napping() -> Any:
    yield sm.sleep(seconds=10)
    return (yield hop(0))


@sm.workflow
def reviewed() -> Any:
    decision = yield sm.approval("review")
    return decision.approved


@sm.workflow
def saga() -> Any:
    yield book(7)
    yield refuse()


def _lose_jobs(mesh: sm.Mesh, run_id: Any) -> int:
    """Delete every job of the run, as a bug that dropped them would have."""
    with mesh.store.transaction() as tx:
        queued = tx.load_jobs(str(run_id))
        for row in queued:
            writes.delete_job(tx, int(row.job.id or 0))
    return len(queued)


def _sweeper(mesh: sm.Mesh) -> Sweeper:
    return mesh.runner.sweeper(grace=0)


def _audit_types(mesh: sm.Mesh, run_id: Any) -> list[str]:
    run = mesh.inspect_run(run_id, include_history=True)
    return [event.type for event in run.audit_events or ()]


def test_a_pending_step_whose_job_was_lost_runs_again(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([two_hops], executor="database")
    run = mesh.start_run(two_hops)
    assert mesh.drain(limit=1) == 1  # the activation: step hop(1) is scheduled
    assert _lose_jobs(mesh, run.id) == 1
    mesh_factory.clock.advance(1)
    assert mesh.drain() == 0  # nothing moves it any more

    assert _sweeper(mesh).sweep() == 1
    assert "reactivated" in _audit_types(mesh, run.id)
    assert _sweeper(mesh).sweep() == 0  # it has a job again: nothing more to do
    mesh.drain()
    done = mesh.inspect_run(run.id)
    assert done.status == "completed" and done.result == 3
    assert CALLS["hop"] == 2


def test_a_running_attempt_whose_job_was_lost_is_recovered(mesh_factory: MeshFactory) -> None:
    first = mesh_factory([dying], executor="database")
    run = first.start_run(dying)
    with pytest.raises(WorkerDied):
        first.drain()  # attempt 1 begins, then the "worker" dies with it running
    crash(first)
    mesh = mesh_factory([dying], executor="database")
    assert _lose_jobs(mesh, run.id) == 1
    mesh_factory.clock.advance(1)

    assert _sweeper(mesh).sweep() == 1
    mesh.drain()
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status == "completed" and done.result == 8
    assert done.step_runs is not None
    attempts = done.step_runs[0].attempts
    assert [(a.number, a.status) for a in attempts] == [(1, "failed"), (2, "completed")]
    assert attempts[0].error is not None
    assert attempts[0].error["type"] == "squidmesh.errors.WorkerLost"


def test_a_timer_whose_job_was_lost_fires_again(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([napping], executor="database")
    run = mesh.start_run(napping)
    mesh.drain()
    assert mesh.explain_run(run.id).reason == "waiting_for_timer"
    assert _lose_jobs(mesh, run.id) == 1
    mesh_factory.clock.advance(11)
    assert mesh.drain() == 0

    assert _sweeper(mesh).sweep() == 1
    mesh.drain()
    assert mesh.inspect_run(run.id).status == "completed"


def test_a_compensation_whose_job_was_lost_runs_again(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([saga], executor="database")
    run = mesh.start_run(saga)
    assert mesh.drain(limit=3) == 3  # activation, book, refuse: compensation scheduled
    assert mesh.explain_run(run.id).reason == "compensating"
    assert _lose_jobs(mesh, run.id) == 1
    mesh_factory.clock.advance(1)

    assert _sweeper(mesh).sweep() == 1
    mesh.drain()
    done = mesh.inspect_run(run.id)
    assert done.status == "failed"
    assert CALLS["unbook"] == 1


def test_runs_waiting_on_people_are_left_alone(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([reviewed], executor="database")
    run = mesh.start_run(reviewed)
    mesh.drain()
    assert mesh.inspect_run(run.id).status == "paused"
    mesh_factory.clock.advance(60)
    before = mesh_factory.snapshot()

    sweeper = _sweeper(mesh)
    assert sweeper.sweep() == 0
    assert sweeper.sweep() == 0
    assert mesh_factory.snapshot() == before
    mesh.approve_run(run.id, actor="ann")
    mesh.drain()
    assert mesh.inspect_run(run.id).result is True
