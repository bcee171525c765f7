from __future__ import annotations

# perform(job) is idempotent (SPEC section 6), also while the step runs: a duplicate
# delivery of a running attempt must not start another attempt while the first may still
# be alive (broker executors deliver at least once). Only when the process running it is
# gone is the attempt lost; and a lost attempt that returns late changes nothing.
import threading
from typing import Any

import pytest

import squidmesh as sm
from tests.runtime.support import MeshFactory, claim_all, crash

STATE: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    STATE.clear()
    STATE.update(calls=0, started=threading.Event(), release=threading.Event())


@sm.step
def blocks() -> str:
    STATE["calls"] += 1
    call = STATE["calls"]
    if call == 1:
        STATE["started"].set()
        assert STATE["release"].wait(30)
    return f"call {call}"


@sm.workflow
def blocking() -> Any:
    return (yield blocks())


def _start(mesh_factory: MeshFactory) -> tuple[sm.Mesh, Any, sm.Job]:
    mesh = mesh_factory([blocking], executor="database")
    run = mesh.start_run(blocking)
    assert mesh.drain(limit=1) == 1  # the activation: the step's job is queued
    (job,) = claim_all(mesh.store, mesh_factory.clock())
    return mesh, run, job


def test_a_duplicate_delivery_of_a_running_attempt_does_not_run_it_again(
    mesh_factory: MeshFactory,
) -> None:
    mesh, run, job = _start(mesh_factory)
    running = threading.Thread(target=mesh.perform, args=(job,))
    running.start()
    try:
        assert STATE["started"].wait(30)
        other = mesh_factory([blocking], executor="database")  # another consumer
        mesh.perform(job)  # delivered twice...
        other.perform(job.to_json())  # ...and three times, elsewhere
        assert STATE["calls"] == 1
        assert mesh.inspect_run(run.id).status == "running"
        # Each duplicate was handed back to look again later, not dropped.
        later = [j for j in mesh_factory.jobs() if j["id"] != job.id]
        assert len(later) == 2
        assert all(j["run_at"] > mesh_factory.clock() for j in later)
    finally:
        STATE["release"].set()
        running.join(30)
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.result == "call 1"
    mesh_factory.clock.advance(31)
    mesh.drain()  # the deferred deliveries come back: the attempt is done, nothing runs
    assert STATE["calls"] == 1
    # (the original delivery's row is the test's own claim: perform() without a lease, as
    # a broker calls it, leaves queue rows to their owner)
    assert [j for j in mesh_factory.jobs() if j["id"] != job.id] == []
    assert done.step_runs is not None
    assert [(a.number, a.status) for a in done.step_runs[0].attempts] == [(1, "completed")]


def test_an_attempt_recorded_lost_that_returns_late_changes_nothing(
    mesh_factory: MeshFactory,
) -> None:
    first, run, job = _start(mesh_factory)
    running = threading.Thread(target=first.perform, args=(job,))
    running.start()
    try:
        assert STATE["started"].wait(30)
        crash(first)  # its process is gone as far as anyone else can tell
        second = mesh_factory([blocking], executor="database")
        second.perform(job)  # redelivered: attempt 1 is lost, attempt 2 is queued...
        second.drain()  # ...and runs here
        assert second.inspect_run(run.id).result == "call 2"
    finally:
        STATE["release"].set()  # the "dead" body returns after all, and lands late
        running.join(30)
    done = second.inspect_run(run.id, include_history=True)
    assert done.status == "completed" and done.result == "call 2"
    assert done.step_runs is not None
    attempts = done.step_runs[0].attempts
    assert [(a.number, a.status) for a in attempts] == [(1, "failed"), (2, "completed")]
    assert attempts[0].error is not None
    assert attempts[0].error["type"] == "squidmesh.errors.WorkerLost"
