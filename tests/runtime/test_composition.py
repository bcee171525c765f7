from __future__ import annotations

# Composition (SPEC section 16) on memory, SQLite and PostgreSQL: child runs created in
# the parent's transaction exactly once, their outcomes flowing back, cancellation down
# the tree, join(limit=...), continue-as-new and published state. Real worker processes
# running children elsewhere are in tests/worker/test_composition_processes.py.
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

import squidmesh as sm
from tests.runtime import family, flows
from tests.runtime.support import MeshFactory, fails_unchanged, peek_jobs
from tests.support import writes

ACTIVE = {"pending", "running", "retrying", "paused", "cancelling"}


class Refusing(sm.DatabaseExecutor):
    """Refuses every job while ``flows.FLAGS["refuse"]`` is set (the change rolls back)."""

    def enqueue(self, jobs: Sequence[sm.Job], *, connection: Any) -> None:
        if flows.FLAGS.get("refuse"):
            raise RuntimeError("broker down")
        super().enqueue(jobs, connection=connection)


def _runs(mesh: sm.Mesh, workflow: str | None = None) -> list[sm.Run]:
    return mesh.list_runs(workflow=workflow, limit=10_000)


def _children(mesh: sm.Mesh, run_id: Any) -> tuple[sm.ChildRun, ...]:
    children = mesh.inspect_run(run_id, include_history=True).children
    assert children is not None
    return children


def _entry(mesh: sm.Mesh, run_id: Any, seq: int) -> sm.StepRun:
    runs = mesh.inspect_run(run_id, include_history=True).step_runs
    assert runs is not None
    return runs[seq]


# --------------------------------------------------------------------------- children


def test_a_child_result_flows_back_and_the_child_knows_its_parent(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS)
    parent = mesh.start_run(family.one_child, {"items": [21]})
    done = mesh.inspect_run(parent.id, include_history=True)
    assert done.status == "completed" and done.result == 42
    (child,) = done.children or ()
    assert child.workflow == "kid" and child.status == "completed" and not child.detached
    assert child.seq == 0
    child_run = mesh.inspect_run(child.run_id)
    assert child_run.parent_run_id == parent.id
    assert child_run.payload == {"n": 21, "fail": False, "review": False}
    assert child_run.result == 42
    entry = _entry(mesh, parent.id, 0)
    assert (entry.kind, entry.name, entry.status, entry.output) == ("child", "kid", "completed", 42)
    assert flows.CALLS["work:21"] == 1 and flows.CALLS["work:100"] == 1


def test_the_child_run_is_created_in_the_parents_transaction_exactly_once(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS, executor=Refusing())
    parent = mesh.start_run(family.one_child, {"items": [3], "review": True})
    (row,) = peek_jobs(mesh.store)
    activation = sm.Job(**row)
    # The executor refuses the jobs of the change that records the child entry: the
    # whole change rolls back, the child run with it.
    flows.FLAGS["refuse"] = True
    fails_unchanged(mesh_factory, sm.DispatchError, mesh.perform, activation)
    assert [r.workflow for r in _runs(mesh)] == ["one_child"]
    flows.FLAGS["refuse"] = False
    mesh.perform(activation)
    (child,) = _runs(mesh, "kid")
    assert child.parent_run_id == parent.id and child.status == "pending"
    entry = _entry(mesh, parent.id, 0)
    assert entry.kind == "child" and entry.status == "running"
    # ...and its first activation was queued in that same change (the parent's own job
    # stays: perform() without a worker's lease leaves the job row to its deliverer).
    queued = {(j["kind"], j["run_id"]) for j in peek_jobs(mesh.store)}
    assert queued == {("activate", str(child.id)), ("activate", str(parent.id))}
    # A duplicate delivery, and a delivery to a restarted process (cold replay), record
    # and create nothing more.
    mesh.perform(activation)
    mesh_factory(family.WORKFLOWS, executor="database").perform(activation)
    assert [r.id for r in _runs(mesh, "kid")] == [child.id]
    assert len(mesh.inspect_run(parent.id, include_history=True).step_runs or ()) == 1


def test_children_may_be_performed_by_a_mesh_that_does_not_have_the_parent(
    mesh_factory: MeshFactory,
) -> None:
    parents = mesh_factory([family.one_child], executor="database")
    kids = mesh_factory([family.kid], executor="database")
    run = parents.start_run(family.one_child, {"items": [5]})
    parents.drain()  # records the child entry and creates the child run
    assert [r.status for r in _runs(parents, "kid")] == ["pending"]
    # The child's job was postponed (5 s) by the process without its workflow; a
    # process that has it runs it.
    assert kids.drain() == 0
    mesh_factory.clock.advance(5)
    kids.drain()
    assert [r.status for r in _runs(kids, "kid")] == ["completed"]
    assert parents.inspect_run(run.id).status == "running"
    # The child's ending queued the parent's activation, which the child's process
    # postponed in turn: the parent's process takes it.
    mesh_factory.clock.advance(5)
    parents.drain()
    assert parents.inspect_run(run.id).result == 10


def test_a_failed_child_throws_child_failed_with_its_run_id_and_error(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS)
    run = mesh.start_run(family.catching)
    result = mesh.inspect_run(run.id).result
    (child,) = _runs(mesh, "kid")
    assert child.status == "failed"
    assert result == {
        "child_run_id": str(child.id),
        "status": "failed",
        "type": "squidmesh.errors.Fail",
        "message": "kid 4 refuses",
        "is_fail": True,
        "is_step_failed": True,
    }


def test_an_uncaught_child_failure_fails_the_parent_and_compensates_it(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS)
    run = mesh.inspect_run(mesh.start_run(family.uncaught).id)
    (child,) = _runs(mesh, "kid")
    assert run.status == "failed" and run.reason == "step_failed"
    assert run.error is not None and run.error["type"] == "squidmesh.errors.ChildFailed"
    assert run.error["details"]["child_run_id"] == str(child.id)
    assert run.error["details"]["error"]["message"] == "kid 4 refuses"
    # the child compensated its own step when it failed; the parent its step
    assert flows.CALLS["undo:4"] == 1 and flows.CALLS["undo:1"] == 1
    why = mesh.explain_run(run.id)
    assert why.reason == "step_failed" and why.step == "kid"


def test_a_payload_that_does_not_fit_fails_the_entry_and_starts_nothing(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS)
    run = mesh.start_run(family.bad_payload)
    result = mesh.inspect_run(run.id).result
    assert result["child_run_id"] is None and result["status"] == "not_started"
    assert result["type"] == "squidmesh.errors.PayloadError"
    assert "workflow kid, trigger manual" in result["message"]
    assert "n" in result["message"] and "extra" in result["message"]
    assert _runs(mesh, "kid") == []


def test_a_child_cancelled_by_an_operator_fails_the_parents_entry(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS)
    run = mesh.start_run(family.one_child, {"items": [6], "review": True})
    (child,) = _runs(mesh, "kid")
    why = mesh.explain_run(run.id)
    assert why.reason == "waiting_for_child"
    assert why.details["child_run_id"] == str(child.id)
    assert why.details["child_reason"] == "paused_for_approval"
    assert why.details["child_step"] == "kid_review"
    assert "approve_run" in why.details["child_next_actions"]
    mesh.cancel_run(child.id, actor="ops", reason="not needed")
    parent = mesh.inspect_run(run.id)
    assert parent.status == "failed" and parent.error is not None
    assert parent.error["details"]["status"] == "cancelled"
    assert "not needed" in parent.error["details"]["error"]["message"]


def test_detached_children_return_their_id_and_outlive_a_cancelled_parent(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS)
    run = mesh.start_run(family.detaching)
    (child,) = _runs(mesh, "kid")
    assert mesh.inspect_run(run.id).status == "paused"  # not waiting for the child
    (listed,) = _children(mesh, run.id)
    assert listed.detached and listed.run_id == child.id
    assert _entry(mesh, run.id, 0).output == str(child.id)
    mesh.cancel_run(run.id)
    assert mesh.inspect_run(run.id).status == "cancelled"
    assert mesh.inspect_run(child.id).status == "paused"  # left alone
    mesh.approve_run(child.id, actor="ops")
    assert mesh.inspect_run(child.id).result == 14


def test_cancelling_a_parent_cancels_its_children_first_with_compensation(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS, executor="database")
    run = mesh.start_run(family.fan_out, {"items": [1, 2], "review": True})
    mesh.drain()
    kids = _runs(mesh, "kid")
    assert sorted(k.status for k in kids) == ["paused", "paused"]
    mesh.cancel_run(run.id, actor="ops", reason="stop")
    # The children are cancelling (their compensations are queued); the parent waits.
    assert {mesh.inspect_run(k.id).status for k in kids} == {"cancelling"}
    assert mesh.inspect_run(run.id).status == "cancelling"
    why = mesh.explain_run(run.id)
    assert why.reason == "waiting_for_cancellation"
    assert sorted(why.details["children"]) == sorted(str(k.id) for k in kids)
    mesh.drain()
    assert {mesh.inspect_run(k.id).status for k in kids} == {"cancelled"}
    assert flows.CALLS["undo:1"] == 1 and flows.CALLS["undo:2"] == 1
    assert mesh.inspect_run(run.id).status == "cancelled"
    # In that order: each child's end is recorded before the parent's.
    ended = max(mesh.inspect_run(k.id).updated_at for k in kids)
    assert mesh.inspect_run(run.id).updated_at >= ended
    audit = mesh.inspect_run(kids[0].id, include_history=True).audit_events or ()
    request = next(a for a in audit if a.type == "cancel_requested")
    assert request.actor == "ops" and f"parent run {run.id}" in str(request.comment)
    assert request.metadata == {"compensate": True}


def test_cancelling_goes_down_three_generations(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory(family.WORKFLOWS)
    top = mesh.start_run(family.grandparent)
    (middle,) = _runs(mesh, "one_child")
    (bottom,) = _runs(mesh, "kid")
    why = mesh.explain_run(top.id)
    assert why.reason == "waiting_for_child"
    assert why.details["child_reason"] == "waiting_for_child"
    assert why.details["child_details"]["child_reason"] == "paused_for_approval"
    mesh.cancel_run(top.id)
    statuses = [mesh.inspect_run(r).status for r in (top.id, middle.id, bottom.id)]
    assert statuses == ["cancelled", "cancelled", "cancelled"]
    assert flows.CALLS["undo:9"] == 1


def test_the_loser_of_first_is_cancelled(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory(family.WORKFLOWS, executor="database")
    run = mesh.start_run(family.racing)
    mesh.drain()
    (child,) = _runs(mesh, "kid")
    assert mesh.inspect_run(child.id).status == "paused"
    mesh_factory.clock.advance(61)
    mesh.drain()
    assert mesh.inspect_run(run.id).result == [1, None]
    assert mesh.inspect_run(child.id).status == "cancelled"
    assert flows.CALLS["undo:1"] == 1


def test_a_keyed_child_reuses_a_run_that_has_ended(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory(family.WORKFLOWS)
    first = mesh.start_run(family.keyed)
    assert mesh.inspect_run(first.id).result == 10
    (child,) = _runs(mesh, "kid")
    assert child.idempotency_key == "kid-5"
    again = mesh.replay_run(first.id)
    assert mesh.inspect_run(again.id).result == 10
    assert [r.id for r in _runs(mesh, "kid")] == [child.id]  # not run again
    assert flows.CALLS["work:5"] == 1
    (reused,) = _children(mesh, again.id)
    assert reused.run_id == child.id


def test_replay_of_a_parent_runs_new_children_and_fork_reuses_recorded_ones(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS)
    source = mesh.start_run(family.one_child, {"items": [8]})
    (child,) = _runs(mesh, "kid")
    replayed = mesh.replay_run(source.id)
    assert mesh.inspect_run(replayed.id).result == 16
    new_children = _children(mesh, replayed.id)
    assert len(new_children) == 1 and new_children[0].run_id != child.id
    assert flows.CALLS["work:8"] == 2
    forked = mesh.fork_run(source.id, at_seq=1)  # after the child, before work(100)
    assert mesh.inspect_run(forked.id).result == 16
    assert flows.CALLS["work:8"] == 2  # the fork took the child's recorded result...
    assert _entry(mesh, forked.id, 0).output == 16
    # ...and lists the source's child run it reused; no child run was started for it
    assert [c.run_id for c in _children(mesh, forked.id)] == [child.id]
    assert len(_runs(mesh, "kid")) == 2


def test_a_parent_suspended_while_its_child_ended_settles_on_resume(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS, executor="database")
    run = mesh.start_run(family.one_child, {"items": [2], "review": True})
    mesh.drain()
    (child,) = _runs(mesh, "kid")
    # Suspend the parent by hand (as a workflow bug would), then let the child end.
    with mesh.store.transaction() as tx:
        record = tx.lock_run(str(run.id))
        assert record is not None
        record.status = "suspended"
        writes.update_run(tx, record)
    mesh.runner.engine.evict(str(run.id))
    mesh.approve_run(child.id, actor="ops")
    mesh.drain()
    assert mesh.inspect_run(child.id).status == "completed"
    assert mesh.inspect_run(run.id).status == "suspended"
    mesh.resume_run(run.id)
    mesh.drain()
    assert mesh.inspect_run(run.id).result == 4


# --------------------------------------------------------------------------- join(limit)


def _active_children(mesh: sm.Mesh) -> int:
    return sum(1 for r in _runs(mesh, "kid") if r.status in ACTIVE)


def test_join_limit_keeps_at_most_n_children_in_flight_results_in_order(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS, executor="database")
    items = [5, 3, 8, 1, 9, 2, 7]
    run = mesh.start_run(family.fan_out, {"items": items, "limit": 3})
    most = 0
    while mesh.drain(limit=1):
        most = max(most, _active_children(mesh))
    assert most == 3
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status == "completed" and done.result == [2 * n for n in items]
    assert done.published == {"total": 2 * sum(items)}
    # the branches started in argument order
    children = done.children or ()
    assert [c.seq for c in children] == list(range(1, 8))
    started = sorted(children, key=lambda c: (c.created_at, c.seq or 0))
    assert [c.seq for c in started] == list(range(1, 8))
    # one history entry per branch in the parent; each child's steps in its own history
    assert len(done.step_runs or ()) == 1 + len(items) + 1


def test_join_limit_waiting_branches_are_shown_and_explained(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory(family.WORKFLOWS)
    run = mesh.start_run(family.fan_out, {"items": [1, 2, 3, 4], "limit": 2, "review": True})
    assert _active_children(mesh) == 2
    why = mesh.explain_run(run.id)
    assert why.reason == "waiting_for_join" and why.details["limit"] == 2
    held = [b for b in why.details["branches"] if b.get("held")]
    assert [b["seq"] for b in held] == [3, 4]
    assert all("child_run_id" in b for b in why.details["branches"] if not b.get("held"))
    steps = mesh.inspect_run(run.id, include_history=True).steps or ()
    assert [s.status for s in steps if s.kind == "child"] == ["waiting"] * 4
    (first, _second) = (r for r in _runs(mesh, "kid") if r.status == "paused")
    mesh.approve_run(first.id, actor="ops")
    assert _active_children(mesh) == 2  # the third branch took the free slot
    for _ in range(3):
        waiting = next(r for r in _runs(mesh, "kid") if r.status == "paused")
        mesh.approve_run(waiting.id, actor="ops")
    assert mesh.inspect_run(run.id).result == [2, 4, 6, 8]


def test_a_failed_branch_cancels_the_children_in_flight_and_never_starts_the_rest(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS, executor="database")
    run = mesh.start_run(family.fan_out, {"items": [1, 2, 3, 4, 5], "limit": 2, "fail": [1]})
    mesh.drain()
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status == "failed"
    assert done.error is not None and done.error["type"] == "squidmesh.errors.ChildFailed"
    # Branches not started when the first one failed never start; none is left running.
    statuses = [s.status for s in done.step_runs or () if s.kind == "child"]
    assert statuses[0] == "failed" and statuses[-1] == "cancelled"
    started = done.children or ()
    assert 2 <= len(started) < 5
    assert all(mesh.inspect_run(c.run_id).status.is_terminal for c in started)
    assert len(_runs(mesh, "kid")) == len(started)


def test_join_of_nothing_returns_an_empty_tuple_at_once() -> None:
    from squidmesh.testing import WorkflowTester

    @sm.workflow
    def nothing(payload: Any) -> Any:
        found = yield sm.join(limit=3)
        return list(found)

    assert WorkflowTester(nothing).start().result == []


# --------------------------------------------------------------------------- continue-as-new


def test_continue_as_new_ends_the_run_and_starts_the_next_atomically(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS)
    first = mesh.start_run(family.looping, {"until": 2})
    for _ in range(3):
        mesh_factory.clock.advance(5)
        mesh.drain()
    chain = [mesh.inspect_run(first.id, include_history=True)]
    while chain[-1].continued_as_run_id is not None:
        chain.append(mesh.inspect_run(chain[-1].continued_as_run_id, include_history=True))
    assert [r.status for r in chain] == ["completed"] * 3
    assert [r.reason for r in chain] == ["continued_as_new", "continued_as_new", "completed"]
    assert [r.payload for r in chain] == [{"round": i, "until": 2} for i in range(3)]
    assert [r.result for r in chain] == [None, None, 2]
    assert chain[1].continued_from_run_id == chain[0].id
    assert chain[2].continued_from_run_id == chain[1].id
    # every run starts with an empty history: bounded, however long the loop runs
    assert [len(r.step_runs or ()) for r in chain] == [4, 4, 3]
    assert [r.published for r in chain] == [{"round": 0}, {"round": 1}, {"round": 2}]
    assert all(r.workflow == "looping" and r.trigger == "manual" for r in chain)
    why = mesh.explain_run(chain[0].id)
    assert why.reason == "continued_as_new"
    assert why.details["continued_as_run_id"] == str(chain[1].id)


def test_a_child_that_continues_as_new_gives_its_parent_the_last_result(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS)
    run = mesh.start_run(family.looping_parent)
    for _ in range(3):
        assert mesh.explain_run(run.id).reason == "waiting_for_child"
        mesh_factory.clock.advance(5)
        mesh.drain()
    assert mesh.inspect_run(run.id).result == 2
    chain = _children(mesh, run.id)
    assert [c.status for c in chain] == ["completed"] * 3
    assert [c.seq for c in chain] == [0, 0, 0] and not any(c.detached for c in chain)


# --------------------------------------------------------------------------- published state


def test_published_state_is_readable_mid_run_and_never_published_again(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS)
    run = mesh.start_run(family.publishing)
    assert mesh.inspect_run(run.id).status == "paused"
    expected = {"progress": {"done": 1, "of": 2}, "status": "waiting for a person"}
    assert mesh.inspect_run(run.id).published == expected
    assert mesh.get_published(run.id) == expected
    assert mesh.get_published(run.id, "status") == "waiting for a person"
    assert mesh.get_published(run.id, "nothing") is None
    with pytest.raises(sm.InvalidArgumentError):
        mesh.get_published(run.id, "")
    with pytest.raises(sm.RunNotFoundError):
        mesh.get_published(uuid.uuid4())
    # a restarted process replays the history: the publications are not repeated
    again = mesh_factory(family.WORKFLOWS)
    again.approve_run(run.id, actor="ops")
    done = again.inspect_run(run.id, include_history=True)
    assert done.result == "ok"
    assert done.published == {"progress": {"done": 2, "of": 2}, "status": "waiting for a person"}
    kinds = [s.kind for s in done.step_runs or ()]
    assert kinds.count("publish") == 4


def test_replay_of_a_parent_is_refused_when_a_child_did_something_irreversible(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory([*family.WORKFLOWS, family.launcher, family.launch_child])
    source = mesh.start_run(family.launcher)
    assert mesh.inspect_run(source.id).status == "completed"
    refused = fails_unchanged(mesh_factory, sm.UnsafeReplayError, mesh.replay_run, source.id)
    assert refused.steps == ["launch_child:fire"]
    again = mesh.replay_run(source.id, allow_irreversible=True)
    assert mesh.inspect_run(again.id).status == "completed"
    assert flows.CALLS["fire"] == 2


def test_a_keyed_child_still_running_elsewhere_is_not_waited_for(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory([*family.WORKFLOWS, family.keyed_review, family.keyed_detached])
    first = mesh.start_run(family.keyed_review)
    (child,) = _runs(mesh, "kid")
    assert mesh.explain_run(first.id).reason == "waiting_for_child"
    second = mesh.inspect_run(mesh.start_run(family.keyed_review).id)
    assert second.status == "completed"
    assert second.result["status"] == "not_started"
    assert second.result["child"] == str(child.id)
    assert "already running" in second.result["why"] and str(first.id) in second.result["why"]
    # a detached child with the key is that run, as start_run(idempotency_key=...) would be
    detached = mesh.start_run(family.keyed_detached)
    assert mesh.inspect_run(detached.id).result == str(child.id)
    assert len(_runs(mesh, "kid")) == 1
    mesh.approve_run(child.id, actor="ops")
    assert mesh.inspect_run(first.id).result == 12


def test_continue_as_new_is_one_change_with_the_next_runs_start(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory(family.WORKFLOWS, executor=Refusing())
    run = mesh.start_run(family.looping, {"until": 1})
    mesh.drain()  # publish, work, then the 5 s sleep
    mesh_factory.clock.advance(5)
    (row,) = [j for j in peek_jobs(mesh.store) if j["run_id"] == str(run.id)]
    wake = sm.Job(**row)
    flows.FLAGS["refuse"] = True  # the change that completes the run and starts the next
    fails_unchanged(mesh_factory, sm.DispatchError, mesh.perform, wake)
    assert [r.id for r in _runs(mesh, "looping")] == [run.id]
    flows.FLAGS["refuse"] = False
    mesh.perform(wake)
    done = mesh.inspect_run(run.id)
    assert done.reason == "continued_as_new" and done.continued_as_run_id is not None
    assert mesh.inspect_run(done.continued_as_run_id).status == "pending"
    mesh.perform(wake)  # delivered again: nothing more
    assert len(_runs(mesh, "looping")) == 2
