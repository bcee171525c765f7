from __future__ import annotations

# Restart safety on the durable stores (SQLite file, PostgreSQL): a NEW Mesh on the same
# database (new store object and connections, empty interpreter cache, as after a process
# restart or on another machine) continues whatever the old one left behind. The old
# Mesh is either closed (a clean shutdown) or simply abandoned (a crash).
from datetime import timedelta

import pytest

import squidmesh as sm
from examples import ring_errand as example
from tests.runtime import flows
from tests.runtime.support import MeshFactory, claim_all, crash


def test_paused_run_continues_on_a_new_mesh(sql_mesh_factory: MeshFactory) -> None:
    first = sql_mesh_factory([example.ring_errand])
    run = first.start_run(example.ring_errand, {"ring_id": "one-ring"})
    sql_mesh_factory.clock.advance(5)
    first.drain()
    assert first.inspect_run(run.id).status is sm.RunStatus.PAUSED
    first.close()

    second = sql_mesh_factory([example.ring_errand])
    assert second.explain_run(run.id).reason == "paused_for_manual_action"
    second.unblock_run(run.id, actor="strider")
    # the second process dies without closing; a third one approves
    third = sql_mesh_factory([example.ring_errand])
    assert third.explain_run(run.id).reason == "paused_for_approval"
    third.approve_run(run.id, actor="gandalf", comment="go")
    done = third.inspect_run(run.id, include_history=True)
    assert done.status is sm.RunStatus.COMPLETED
    assert done.result == "Frodo crossed Moria on 11 lembas"
    assert done.step_runs is not None
    steps = [s for s in done.step_runs if s.kind == "step"]
    assert all(len(s.attempts) == 1 for s in steps)  # nothing ran twice
    assert done.audit_events is not None
    assert [e.type for e in done.audit_events].count("approved") == 1


def test_sleeping_run_wakes_on_a_new_mesh(sql_mesh_factory: MeshFactory) -> None:
    first = sql_mesh_factory([flows.sleeper])
    run = first.start_run(flows.sleeper)
    assert first.explain_run(run.id).reason == "waiting_for_timer"
    del first  # crash: no close()

    second = sql_mesh_factory([flows.sleeper])
    assert second.drain() == 0  # not due yet
    sql_mesh_factory.clock.advance(60)
    assert second.drain() >= 1
    done = second.inspect_run(run.id)
    assert (done.status, done.result) == (sm.RunStatus.COMPLETED, "rested")
    assert flows.CALLS["finish:sleeper"] == 1


def test_retrying_run_retries_on_a_new_mesh(sql_mesh_factory: MeshFactory) -> None:
    flows.FLAGS["flaky_failures"] = 1
    first = sql_mesh_factory([flows.flaky_flow])
    run = first.start_run(flows.flaky_flow)
    assert first.inspect_run(run.id).status is sm.RunStatus.RETRYING
    first.close()

    second = sql_mesh_factory([flows.flaky_flow], executor="database")
    assert second.explain_run(run.id).details["next_attempt_number"] == 2
    sql_mesh_factory.clock.advance(10)
    second.drain()
    done = second.inspect_run(run.id, include_history=True)
    assert (done.status, done.result) == (sm.RunStatus.COMPLETED, "ok after 2")
    assert done.step_runs is not None
    assert [a.status for a in done.step_runs[0].attempts] == ["failed", "completed"]
    assert flows.CALLS["flaky"] == 2


def test_queued_activation_survives_a_crash_before_any_work(
    sql_mesh_factory: MeshFactory,
) -> None:
    first = sql_mesh_factory([flows.chain], executor="database")
    run = first.start_run(flows.chain, {"item": "x"})
    assert first.inspect_run(run.id).status is sm.RunStatus.PENDING
    del first
    second = sql_mesh_factory([flows.chain])
    second.drain()
    assert second.inspect_run(run.id).result == {"a": 2, "b": 20, "c": 23}


class _Crash(BaseException):
    """Stands in for the process dying in the middle of a step attempt."""


def test_step_interrupted_by_a_crash_is_run_again(sql_mesh_factory: MeshFactory) -> None:
    first = sql_mesh_factory([flows.in_flight], executor="database")
    run = first.start_run(flows.in_flight)
    first.drain(limit=1)  # the activation: the step job is queued

    def die() -> None:
        raise _Crash

    flows.HOOKS["slow"] = die
    (job,) = claim_all(first.store, sql_mesh_factory.clock())  # leased for 5 minutes
    with pytest.raises(_Crash):
        first.perform(job)
    crash(first)
    flows.HOOKS.clear()

    second = sql_mesh_factory([flows.in_flight])
    sql_mesh_factory.clock.advance(timedelta(minutes=6).total_seconds())  # lease expired
    second.drain()
    why = second.explain_run(run.id)
    assert (why.reason, why.step) == ("paused_for_manual_action", "after")
    assert flows.CALLS["slow:a"] == 2  # at least once
    done = second.inspect_run(run.id, include_history=True)
    assert done.step_runs is not None
    lost, ok = done.step_runs[0].attempts
    assert (lost.number, lost.status, ok.number, ok.status) == (1, "failed", 2, "completed")
    assert lost.error is not None and lost.error["type"] == "squidmesh.errors.WorkerLost"
    assert "stopped before recording its outcome" in lost.error["message"]
