from __future__ import annotations

# A worker lands a step of a run it holds in its cache without locking the run: the
# write itself checks the run's version. These tests make another Mesh (another cache,
# as another process would be) change the run while the step runs, and check the
# landing notices and lands again under the lock instead of overwriting that change.
from collections.abc import Callable
from typing import Any

import squidmesh as sm
from squidmesh.runtime.perform import Lease
from tests.runtime.support import MeshFactory, claim_all

HOOK: list[Callable[[], Any]] = []


@sm.step
def first() -> int:
    return 1


@sm.step
def meddled() -> int:
    for hook in HOOK:
        hook()
    return 2


@sm.step
def third() -> int:
    return 3


@sm.workflow
def three_steps():
    a = yield first()
    b = yield meddled()
    c = yield third()
    return a + b + c


def run_with_lease(mesh: sm.Mesh, factory: MeshFactory) -> None:
    """Drive jobs as a worker does: a lease, so landings are optimistic and eager."""
    lease = Lease("test-worker", 300)
    while True:
        jobs = claim_all(mesh.store, factory.clock())
        if not jobs:
            return
        for job in jobs:
            nxt: sm.Job | None = job
            while nxt is not None:
                nxt = mesh.runner.perform(nxt, lease)


def test_uncontended_run_lands_optimistically(mesh_factory: MeshFactory) -> None:
    HOOK.clear()
    mesh = mesh_factory([three_steps], executor="database")
    run = mesh.start_run(three_steps)
    run_with_lease(mesh, mesh_factory)
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status is sm.RunStatus.COMPLETED
    assert done.result == 6
    assert [len(s.attempts) for s in done.step_runs or ()] == [1, 1, 1]


def test_a_cancel_from_elsewhere_during_the_step_is_not_overwritten(
    mesh_factory: MeshFactory,
) -> None:
    worker_mesh = mesh_factory([three_steps], executor="database")
    operator_mesh = mesh_factory([three_steps], executor="database")
    run = worker_mesh.start_run(three_steps)
    HOOK[:] = [lambda: operator_mesh.cancel_run(run.id, actor="ops", reason="stop")]
    try:
        run_with_lease(worker_mesh, mesh_factory)
    finally:
        HOOK.clear()
    done = worker_mesh.inspect_run(run.id, include_history=True)
    # The cancel arrived while `meddled` was in flight: it finished, then the run was
    # cancelled; `third` never started.
    assert done.status is sm.RunStatus.CANCELLED
    names = [(s.name, s.status) for s in done.step_runs or ()]
    assert ("meddled", "completed") in names
    assert all(name != "third" for name, _ in names)
    types = [e.type for e in done.audit_events or ()]
    assert types.count("cancel_requested") == 1 and types.count("cancelled") == 1


def test_an_approval_elsewhere_is_not_lost(mesh_factory: MeshFactory) -> None:
    @sm.workflow(name="gate_and_step")
    def gate_and_step():
        decision, value = yield sm.join(sm.approval("ok"), meddled())
        return [decision.approved, value]

    worker_mesh = mesh_factory([gate_and_step], executor="database")
    operator_mesh = mesh_factory([gate_and_step], executor="database")
    run = worker_mesh.start_run(gate_and_step)
    HOOK[:] = [lambda: operator_mesh.approve_run(run.id, actor="ops")]
    try:
        run_with_lease(worker_mesh, mesh_factory)
    finally:
        HOOK.clear()
    done = worker_mesh.inspect_run(run.id)
    assert done.status is sm.RunStatus.COMPLETED
    assert done.result == [True, 2]
