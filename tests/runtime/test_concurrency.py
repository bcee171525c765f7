from __future__ import annotations

# Concurrent operators and redelivered jobs.
#
# PostgreSQL: several Meshes (one per thread, as several processes would have) act on the
# same run at once; the run's row lock must let exactly one of them win.
# All stores: ``mesh.perform(job)`` is idempotent, so a duplicate or stale delivery of a
# job changes nothing at all (whole-database snapshot comparison).
import threading
from collections.abc import Callable
from typing import Any

import squidmesh as sm
from tests.runtime import flows
from tests.runtime.support import MeshFactory, assert_same, claim_all

THREADS = 8


def race(
    factory: MeshFactory, workflows: list[Any], action: Callable[[sm.Mesh, int], Any]
) -> list[Any]:
    """Run ``action(mesh, index)`` on THREADS Meshes at once; return results or exceptions."""
    meshes = [factory(workflows, executor="database") for _ in range(THREADS)]
    for mesh in meshes:
        mesh.list_runs(limit=1)  # connect before the race starts
    barrier = threading.Barrier(THREADS)
    outcomes: list[Any] = [None] * THREADS

    def worker(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = action(meshes[index], index)
        except BaseException as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def test_concurrent_approvals_exactly_one_wins(pg_mesh_factory: MeshFactory) -> None:
    mesh = pg_mesh_factory([flows.approval_only], executor="database")
    run = mesh.start_run(flows.approval_only)
    mesh.drain()
    assert mesh.inspect_run(run.id).status is sm.RunStatus.PAUSED

    outcomes = race(
        pg_mesh_factory,
        [flows.approval_only],
        lambda m, i: m.approve_run(run.id, actor=f"voter-{i}"),
    )
    winners = [o for o in outcomes if isinstance(o, sm.Run)]
    losers = [o for o in outcomes if isinstance(o, sm.InvalidTransitionError)]
    assert len(winners) == 1, outcomes
    assert len(losers) == THREADS - 1, outcomes
    assert all(e.action == "approve_run" and e.status == "running" for e in losers)

    mesh.drain()
    done = mesh.inspect_run(run.id, include_history=True)
    assert (done.status, done.result) == (sm.RunStatus.COMPLETED, "approved")
    assert done.audit_events is not None
    approved = [e for e in done.audit_events if e.type == "approved"]
    assert len(approved) == 1
    assert flows.CALLS["finish:approval_only"] == 1


def test_concurrent_starts_with_one_idempotency_key(pg_mesh_factory: MeshFactory) -> None:
    outcomes = race(
        pg_mesh_factory,
        [flows.chain],
        lambda m, i: m.start_run(flows.chain, {"item": "x"}, idempotency_key="only-once"),
    )
    assert all(isinstance(o, sm.Run) for o in outcomes), outcomes
    assert len({o.id for o in outcomes}) == 1
    mesh = pg_mesh_factory([flows.chain])
    assert len(mesh.list_runs()) == 1


def test_concurrent_cancels_and_unblocks(pg_mesh_factory: MeshFactory) -> None:
    mesh = pg_mesh_factory([flows.gated], executor="database")
    run = mesh.start_run(flows.gated)
    mesh.drain()

    def act(m: sm.Mesh, index: int) -> Any:
        if index % 2:
            return m.unblock_run(run.id, actor=f"op-{index}")
        return m.cancel_run(run.id, actor=f"op-{index}")

    outcomes = race(pg_mesh_factory, [flows.gated], act)
    assert all(isinstance(o, (sm.Run, sm.InvalidTransitionError)) for o in outcomes), outcomes
    # whatever the interleaving: one cancel wins (a pause or an approval can be cancelled),
    # the other cancels see it cancelled, at most one unblock got in before it
    cancels = [o for i, o in enumerate(outcomes) if i % 2 == 0]
    assert sum(isinstance(o, sm.Run) for o in cancels) == 1, outcomes
    final = mesh.inspect_run(run.id, include_history=True)
    assert final.status is sm.RunStatus.CANCELLED
    assert final.audit_events is not None
    types = [e.type for e in final.audit_events]
    assert types.count("cancel_requested") == types.count("cancelled") == 1
    assert types.count("unblocked") == sum(
        isinstance(o, sm.Run) for i, o in enumerate(outcomes) if i % 2
    )
    assert types.count("unblocked") <= 1


def test_redelivered_and_stale_step_jobs_change_nothing(mesh_factory: MeshFactory) -> None:
    flows.FLAGS["flaky_failures"] = 1
    mesh = mesh_factory([flows.flaky_flow], executor="database")
    clock = mesh_factory.clock
    run = mesh.start_run(flows.flaky_flow)
    (activate,) = claim_all(mesh.store, clock())
    mesh.perform(activate)
    (step1,) = claim_all(mesh.store, clock())
    assert (step1.kind, step1.seq, step1.attempt) == ("step", 0, 1)

    mesh.perform(step1)  # attempt 1 fails; attempt 2 is queued 10 s later
    assert mesh.inspect_run(run.id).status is sm.RunStatus.RETRYING
    after_first = mesh_factory.snapshot()
    mesh.perform(step1)  # redelivered: attempt 1 again
    mesh.perform(step1.to_json())  # as JSON, the way a host executor hands it back
    mesh.perform(activate)  # a late activation
    assert_same(after_first, mesh_factory.snapshot())
    assert flows.CALLS["flaky"] == 1

    clock.advance(10)
    (step2,) = claim_all(mesh.store, clock())
    assert step2.attempt == 2
    mesh.perform(step2)
    assert mesh.inspect_run(run.id).result == "ok after 2"
    after_second = mesh_factory.snapshot()
    fresh = mesh_factory([flows.flaky_flow], executor="database")  # cold cache too
    for redelivered in (step2, step1, activate):
        mesh.perform(redelivered)
        fresh.perform(redelivered)
    stale = sm.Job("step", str(run.id), 0, 1)  # an old attempt number
    mesh.perform(stale)
    mesh.perform(sm.Job("step", str(run.id), 0, 3))  # an attempt that never was
    mesh.perform(sm.Job("step", str(run.id), 7, 1))  # a seq that does not exist
    mesh.perform(sm.Job("activate", "2c4c4c4c-0000-4000-8000-000000000000"))  # unknown run
    assert_same(after_second, mesh_factory.snapshot())
    assert flows.CALLS["flaky"] == 2


def test_redelivered_compensation_job_runs_once(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.failing], executor="database")
    clock = mesh_factory.clock
    run = mesh.start_run(flows.failing)
    mesh.drain(limit=2)  # activation and step: the workflow fails, compensation queued
    (compensate,) = claim_all(mesh.store, clock())
    assert compensate.kind == "compensate"
    mesh.perform(compensate)
    assert mesh.inspect_run(run.id).status is sm.RunStatus.FAILED
    snap = mesh_factory.snapshot()
    mesh.perform(compensate)
    mesh_factory([flows.failing]).perform(compensate)
    assert_same(snap, mesh_factory.snapshot())
    assert flows.CALLS["undo_book"] == 1
