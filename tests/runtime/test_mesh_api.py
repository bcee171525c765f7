from __future__ import annotations

# Every ``sm.Mesh`` method, success and error paths (SPEC section 4), and explain_run's
# reasons (SPEC section 5), on the memory, SQLite and PostgreSQL stores.
#
# Error paths are checked with ``fails_unchanged``: the call must raise the documented
# error AND leave the whole database (runs, history, attempts, audit, events, jobs)
# exactly as it was.
import dataclasses
import uuid
from datetime import timedelta
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.testing import replay
from tests.runtime import flows
from tests.runtime.support import T0, MeshFactory, fails_unchanged

BOGUS = str(uuid.uuid4())


def audit_types(mesh: sm.Mesh, run_id: Any) -> list[str]:
    events = mesh.inspect_run(run_id, include_history=True).audit_events
    assert events is not None
    return [e.type for e in events]


def status(mesh: sm.Mesh, run_id: Any) -> sm.RunStatus:
    return mesh.inspect_run(run_id).status


# --------------------------------------------------------------------------- start_run


def test_start_run_validates_resolves_defaults_and_runs(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.chain])
    run = mesh.start_run(flows.chain, {"item": "rope", "qty": 2}, trigger="place")
    assert isinstance(run, sm.Run)
    assert isinstance(run.id, uuid.UUID)
    assert (run.workflow, run.trigger) == ("chain", "place")
    assert run.payload == {"item": "rope", "qty": 2, "note": "none"}  # defaults resolved
    assert run.created_at == T0
    assert run.status is sm.RunStatus.COMPLETED  # inline: start_run returns what is stored now
    assert run.replayed_from_run_id is None and run.forked_from_run_id is None

    done = mesh.inspect_run(run.id)
    assert done.status is sm.RunStatus.COMPLETED
    assert done.result == {"a": 3, "b": 30, "c": 33}
    assert done.payload == run.payload
    assert done.error is None and done.current_steps == ()

    by_name = mesh.start_run("chain", {"item": "x"})  # name + default trigger
    assert by_name.trigger == "place"
    assert mesh.inspect_run(str(by_name.id)).result == {"a": 2, "b": 20, "c": 23}
    plain = mesh.start_run("chain", trigger="plain")  # a trigger without payload model
    assert plain.payload == {}
    assert mesh.inspect_run(plain.id).status is sm.RunStatus.COMPLETED


def test_start_run_errors_persist_nothing(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.chain])
    mesh.start_run(flows.chain, {"item": "seed"})  # the database is not empty

    err = fails_unchanged(mesh_factory, sm.PayloadError, mesh.start_run, flows.chain, {})
    assert err.missing_fields == ["item"]
    err = fails_unchanged(
        mesh_factory, sm.PayloadError, mesh.start_run, "chain", {"item": "x", "colour": "red"}
    )
    assert err.unknown_fields == ["colour"]
    err = fails_unchanged(
        mesh_factory, sm.PayloadError, mesh.start_run, "chain", {"item": "x", "qty": "many"}
    )
    assert list(err.invalid_types) == ["qty"]
    err = fails_unchanged(mesh_factory, sm.PayloadError, mesh.start_run, "chain", None)
    assert err.missing_fields == ["item"]
    err = fails_unchanged(
        mesh_factory, sm.PayloadError, mesh.start_run, "chain", {"x": 1}, trigger="plain"
    )
    assert err.unknown_fields == ["x"]
    fails_unchanged(mesh_factory, sm.UnknownWorkflowError, mesh.start_run, "nope", {})
    fails_unchanged(mesh_factory, sm.UnknownWorkflowError, mesh.start_run, flows.gated)
    fails_unchanged(
        mesh_factory, sm.UnknownTriggerError, mesh.start_run, "chain", {"item": "x"}, trigger="t"
    )
    assert issubclass(sm.PayloadError, sm.SquidmeshError)


def test_idempotency_key_returns_the_existing_run(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.chain, flows.gated])
    first = mesh.start_run(flows.chain, {"item": "a"}, idempotency_key="order-1")
    again = mesh.start_run(flows.chain, {"item": "a"}, idempotency_key="order-1")
    other_payload = mesh.start_run("chain", {"item": "b", "qty": 5}, idempotency_key="order-1")
    assert again.id == first.id == other_payload.id
    assert again.idempotency_key == "order-1"
    assert [r.id for r in mesh.list_runs()] == [first.id]
    assert flows.CALLS["step_one"] == 1  # the run was not started twice

    # keys are per workflow
    gated = mesh.start_run(flows.gated, idempotency_key="order-1")
    assert gated.id != first.id
    assert len(mesh.list_runs()) == 2
    before = mesh_factory.snapshot()
    assert mesh.start_run(flows.gated, idempotency_key="order-1").id == gated.id
    assert mesh_factory.snapshot() == before
    fails_unchanged(mesh_factory, ValueError, mesh.start_run, flows.gated, idempotency_key="")


# --------------------------------------------------------------------------- unknown runs


@pytest.mark.parametrize(
    "bad", [BOGUS, "not-a-uuid", "", 42], ids=["unknown", "malformed", "empty", "int"]
)
def test_unknown_or_malformed_run_ids(mesh_factory: MeshFactory, bad: Any) -> None:
    mesh = mesh_factory([flows.gated])
    mesh.start_run(flows.gated)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("inspect_run", {}),
        ("inspect_run", {"include_history": True}),
        ("explain_run", {}),
        ("cancel_run", {}),
        ("approve_run", {"actor": "gandalf"}),
        ("reject_run", {"actor": "gandalf"}),
        ("unblock_run", {}),
        ("send_event", {"name": "go"}),
        ("resume_run", {}),
        ("replay_run", {}),
        ("fork_run", {"at_seq": 0}),
        ("export_history", {}),
    ]
    for method, kwargs in calls:
        err = fails_unchanged(
            mesh_factory, sm.RunNotFoundError, getattr(mesh, method), bad, **kwargs
        )
        assert str(bad) in str(err) or bad == ""


# --------------------------------------------------------------------------- reviews


@sm.workflow
def gate_and_timer() -> Any:
    _, decision = yield sm.join(sm.sleep(seconds=60), sm.approval("sign_off"))
    return decision.approved


def test_explain_names_the_approval_a_join_waits_on_beside_a_timer(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory([gate_and_timer])
    run = mesh.start_run(gate_and_timer)
    why = mesh.explain_run(run.id)
    assert (why.status, why.reason, why.step) == (
        sm.RunStatus.PAUSED,
        "paused_for_approval",
        "sign_off",
    )
    assert why.next_actions == ("approve_run", "reject_run", "cancel_run")
    mesh.approve_run(run.id, actor="ann")  # the action explain offered works
    mesh_factory.clock.advance(61)
    mesh.drain()
    assert mesh.inspect_run(run.id).result is True


def test_pause_and_approval_happy_path_with_audit(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.gated])
    run = mesh.start_run(flows.gated)
    assert status(mesh, run.id) is sm.RunStatus.PAUSED
    why = mesh.explain_run(run.id)
    assert (why.reason, why.step) == ("paused_for_manual_action", "hold")
    assert why.next_actions == ("unblock_run", "cancel_run")
    assert why.details["reason"] == "operator check"
    assert mesh.inspect_run(run.id).current_steps == ("hold",)

    mesh.unblock_run(run.id, actor="ops", comment="checked", metadata={"ticket": 7}, data=[1, 2])
    why = mesh.explain_run(run.id)
    assert (why.status, why.reason, why.step) == (
        sm.RunStatus.PAUSED,
        "paused_for_approval",
        "vote",
    )
    assert why.next_actions == ("approve_run", "reject_run", "cancel_run")
    assert why.evidence["step_run"]["name"] == "vote"

    mesh.approve_run(run.id, actor="gandalf", comment="go", metadata={"votes": 9})
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status is sm.RunStatus.COMPLETED
    assert done.result == {"data": [1, 2], "approved": True, "actor": "gandalf"}
    assert done.audit_events is not None
    reviews = [(e.type, e.step, e.actor, e.comment, e.metadata) for e in done.audit_events]
    assert ("unblocked", "hold", "ops", "checked", {"ticket": 7}) in reviews
    assert ("approved", "vote", "gandalf", "go", {"votes": 9}) in reviews
    assert [t for t in audit_types(mesh, run.id) if t in ("paused", "unblocked", "approved")] == [
        "paused",
        "unblocked",
        "paused",
        "approved",
    ]


def test_reject_is_a_decision_not_a_failure(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.approval_only])
    run = mesh.start_run(flows.approval_only)
    mesh.reject_run(run.id, actor="elrond", comment="too risky")
    done = mesh.inspect_run(run.id, include_history=True)
    assert (done.status, done.result) == (sm.RunStatus.COMPLETED, "rejected")
    assert done.audit_events is not None
    (rejected,) = [e for e in done.audit_events if e.type == "rejected"]
    assert (rejected.actor, rejected.comment, rejected.step) == ("elrond", "too risky", "vote")


def test_review_errors_change_nothing(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.approval_only])
    run = mesh.start_run(flows.approval_only)
    for actor in (None, "", "   ", 42):
        fails_unchanged(mesh_factory, sm.ReviewError, mesh.approve_run, run.id, actor=actor)
        fails_unchanged(mesh_factory, sm.ReviewError, mesh.reject_run, run.id, actor=actor)
    fails_unchanged(
        mesh_factory, sm.ReviewError, mesh.approve_run, run.id, actor="a", metadata=["x"]
    )
    # ReviewError is checked before the run is looked up
    fails_unchanged(mesh_factory, sm.ReviewError, mesh.approve_run, BOGUS, actor="")
    assert status(mesh, run.id) is sm.RunStatus.PAUSED


def test_invalid_transitions_change_nothing(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.gated])
    run = mesh.start_run(flows.gated)  # paused at the pause "hold"

    err = fails_unchanged(
        mesh_factory, sm.InvalidTransitionError, mesh.approve_run, run.id, actor="x"
    )
    assert (err.status, err.action) == ("paused", "approve_run")
    err = fails_unchanged(
        mesh_factory, sm.InvalidTransitionError, mesh.reject_run, run.id, actor="x"
    )
    assert (err.status, err.action) == ("paused", "reject_run")
    err = fails_unchanged(mesh_factory, sm.InvalidTransitionError, mesh.resume_run, run.id)
    assert (err.status, err.action) == ("paused", "resume_run")

    mesh.unblock_run(run.id)  # now paused at the approval "vote"
    err = fails_unchanged(mesh_factory, sm.InvalidTransitionError, mesh.unblock_run, run.id)
    assert (err.status, err.action) == ("paused", "unblock_run")

    mesh.approve_run(run.id, actor="gandalf")
    assert status(mesh, run.id) is sm.RunStatus.COMPLETED
    err = fails_unchanged(
        mesh_factory, sm.InvalidTransitionError, mesh.approve_run, run.id, actor="gandalf"
    )
    assert (err.status, err.action) == ("completed", "approve_run")
    err = fails_unchanged(mesh_factory, sm.InvalidTransitionError, mesh.cancel_run, run.id)
    assert (err.status, err.action) == ("completed", "cancel_run")
    err = fails_unchanged(mesh_factory, sm.InvalidTransitionError, mesh.resume_run, run.id)
    assert (err.status, err.action) == ("completed", "resume_run")
    err = fails_unchanged(mesh_factory, sm.InvalidTransitionError, mesh.unblock_run, run.id)
    assert err.action == "unblock_run"
    err = fails_unchanged(
        mesh_factory, sm.InvalidTransitionError, mesh.send_event, run.id, "go", {"late": True}
    )
    assert (err.status, err.action) == ("completed", "send_event")
    assert audit_types(mesh, run.id).count("approved") == 1


def test_double_approval_while_the_next_step_is_queued(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.approval_only], executor="database")
    run = mesh.start_run(flows.approval_only)
    mesh.drain()
    assert status(mesh, run.id) is sm.RunStatus.PAUSED
    mesh.approve_run(run.id, actor="one")
    assert status(mesh, run.id) is sm.RunStatus.RUNNING  # the step job is queued
    err = fails_unchanged(
        mesh_factory, sm.InvalidTransitionError, mesh.approve_run, run.id, actor="two"
    )
    assert (err.status, err.action) == ("running", "approve_run")
    mesh.drain()
    assert mesh.inspect_run(run.id).result == "approved"
    assert audit_types(mesh, run.id).count("approved") == 1


# --------------------------------------------------------------------------- replay / fork


def test_replay_run_new_run_same_payload(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.chain])
    source = mesh.start_run(flows.chain, {"item": "x", "qty": 4})
    mesh_factory.clock.advance(1)
    again = mesh.replay_run(source.id)
    assert again.id != source.id
    assert again.replayed_from_run_id == source.id
    assert (again.workflow, again.trigger, again.payload) == (
        source.workflow,
        source.trigger,
        source.payload,
    )
    done = mesh.inspect_run(again.id)
    assert done.status is sm.RunStatus.COMPLETED
    assert done.result == mesh.inspect_run(source.id).result
    assert flows.CALLS["step_one"] == 2
    assert "replayed" in audit_types(mesh, source.id)
    assert "replayed" in audit_types(mesh, again.id)


def test_replay_run_refused_after_irreversible_steps(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.irreversible_flow])
    source = mesh.start_run(flows.irreversible_flow)
    assert status(mesh, source.id) is sm.RunStatus.COMPLETED
    err = fails_unchanged(mesh_factory, sm.UnsafeReplayError, mesh.replay_run, source.id)
    assert list(err.steps) == ["launch", "announce"]
    why = mesh.explain_run(source.id)
    assert why.reason == "completed"
    assert "replay_run" not in why.next_actions
    assert why.next_actions == ("fork_run",)
    assert why.details["replay"] == {
        "allowed": False,
        "blocked_by": ["launch", "announce"],
        "required_override": "allow_irreversible",
    }
    fails_unchanged(
        mesh_factory, sm.UnsafeReplayError, mesh.replay_run, source.id, allow_irreversible=1
    )

    again = mesh.replay_run(source.id, allow_irreversible=True)
    assert again.replayed_from_run_id == source.id
    assert status(mesh, again.id) is sm.RunStatus.COMPLETED
    assert flows.CALLS["launch"] == 2


def test_replay_and_fork_need_the_workflow(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.chain])
    run = mesh.start_run(flows.chain, {"item": "x"})
    stranger = mesh_factory([flows.other])
    fails_unchanged(mesh_factory, sm.UnknownWorkflowError, stranger.replay_run, run.id)
    fails_unchanged(mesh_factory, sm.UnknownWorkflowError, stranger.fork_run, run.id, at_seq=1)


def test_fork_run_reuses_recorded_results_before_at_seq(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.chain])
    source = mesh.start_run(flows.chain, {"item": "x", "qty": 1})
    assert flows.CALLS == {"step_one": 1, "step_two": 1, "step_three": 1}

    fork = mesh.fork_run(source.id, at_seq=1)
    assert fork.forked_from_run_id == source.id and fork.replayed_from_run_id is None
    done = mesh.inspect_run(fork.id, include_history=True)
    assert done.status is sm.RunStatus.COMPLETED
    assert done.result == {"a": 2, "b": 20, "c": 23}
    # seq 0 came from the source's history: step_one did NOT run again
    assert flows.CALLS == {"step_one": 1, "step_two": 2, "step_three": 2}
    assert done.step_runs is not None
    assert [(s.seq, s.name, s.status, s.output) for s in done.step_runs] == [
        (0, "step_one", "completed", 2),
        (1, "step_two", "completed", 20),
        (2, "step_three", "completed", 23),
    ]
    assert done.step_runs[0].attempts == ()  # copied, not attempted in the fork
    assert len(done.step_runs[1].attempts) == 1
    assert "forked" in audit_types(mesh, source.id) and "forked" in audit_types(mesh, fork.id)

    whole = mesh.fork_run(source.id, at_seq=3)  # everything reused: nothing runs
    assert mesh.inspect_run(whole.id).result == {"a": 2, "b": 20, "c": 23}
    assert flows.CALLS == {"step_one": 1, "step_two": 2, "step_three": 2}
    fresh = mesh.fork_run(source.id, at_seq=0)  # nothing reused: everything runs
    assert mesh.inspect_run(fresh.id).status is sm.RunStatus.COMPLETED
    assert flows.CALLS == {"step_one": 2, "step_two": 3, "step_three": 3}

    for bad in (-1, 4, "1", None):
        fails_unchanged(mesh_factory, ValueError, mesh.fork_run, source.id, at_seq=bad)


def test_fork_run_of_a_paused_run_before_the_pause(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.gated])
    source = mesh.start_run(flows.gated)
    mesh.unblock_run(source.id, data="from source")
    # seq 1 (the approval) has no result yet: forking after it is refused
    fails_unchanged(mesh_factory, ValueError, mesh.fork_run, source.id, at_seq=2)
    fork = mesh.fork_run(source.id, at_seq=1)  # reuses the unblock data
    assert status(mesh, fork.id) is sm.RunStatus.PAUSED
    assert mesh.explain_run(fork.id).reason == "paused_for_approval"
    mesh.approve_run(fork.id, actor="a")
    assert mesh.inspect_run(fork.id).result["data"] == "from source"
    assert status(mesh, source.id) is sm.RunStatus.PAUSED  # the source is untouched


# --------------------------------------------------------------------------- list / export


def test_list_runs_newest_first_with_filters(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.chain, flows.gated])
    clock = mesh_factory.clock
    r1 = mesh.start_run(flows.chain, {"item": "1"})
    clock.advance(1)
    r2 = mesh.start_run(flows.gated)
    clock.advance(1)
    r3 = mesh.start_run(flows.chain, {"item": "3"})
    clock.advance(1)
    r4 = mesh.start_run(flows.gated)

    def ids(**kw: Any) -> list[uuid.UUID]:
        return [r.id for r in mesh.list_runs(**kw)]

    assert ids() == [r4.id, r3.id, r2.id, r1.id]
    assert ids(status="paused") == [r4.id, r2.id]
    assert ids(status=sm.RunStatus.COMPLETED) == [r3.id, r1.id]
    assert ids(status="failed") == []
    assert ids(workflow="chain") == [r3.id, r1.id]
    assert ids(workflow=flows.gated) == [r4.id, r2.id]
    assert ids(workflow="nobody") == []
    assert ids(limit=2) == [r4.id, r3.id]
    assert ids(before=r3) == [r2.id, r1.id]
    assert ids(before=mesh.inspect_run(r3.id)) == [r2.id, r1.id]
    assert ids(before=T0 + timedelta(seconds=2)) == [r2.id, r1.id]
    assert ids(status="completed", workflow=flows.chain, limit=1) == [r3.id]
    page = mesh.list_runs(limit=2)
    assert ids(limit=2, before=page[-1]) == [r2.id, r1.id]
    listed = mesh.list_runs(workflow="chain")[0]
    inspected = mesh.inspect_run(r3.id)
    # inspect_run also reads the run's published state; list_runs leaves it unread (None)
    assert listed.published is None and inspected.published == {}
    assert listed == dataclasses.replace(inspected, published=None)

    fails_unchanged(mesh_factory, ValueError, mesh.list_runs, status="sleepy")
    fails_unchanged(mesh_factory, ValueError, mesh.list_runs, limit=0)


def test_export_history_replays_with_the_testing_api(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.chain, flows.gated, flows.shifty_v1])
    run = mesh.start_run(flows.chain, {"item": "x"})
    history = mesh.export_history(run.id)
    assert history["run_id"] == str(run.id)
    assert (history["workflow"], history["outcome"]) == ("chain", "completed")
    assert history["result"] == {"a": 2, "b": 20, "c": 23}
    assert [e["name"] for e in history["entries"]] == ["step_one", "step_two", "step_three"]
    act = replay(flows.chain, history)
    assert act.outcome == "completed" and act.result == history["result"]

    paused = mesh.start_run(flows.gated)
    open_history = mesh.export_history(paused.id)
    assert open_history["outcome"] is None
    assert replay(flows.gated, open_history).waiting_on == (0,)

    shifty = mesh.start_run(flows.shifty_v1)
    with pytest.raises(sm.NondeterminismError):
        replay(flows.shifty_v2, mesh.export_history(shifty.id))


# --------------------------------------------------------------------------- events


def test_send_event_buffered_before_the_wait(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.eventful])
    run = mesh.start_run(flows.eventful)
    mesh.send_event(run.id, "go", {"n": 1})
    assert status(mesh, run.id) is sm.RunStatus.PAUSED  # buffered, nothing else moved
    events = mesh.inspect_run(run.id, include_history=True).audit_events
    assert events is not None
    (received,) = [e for e in events if e.type == "event_received"]
    assert received.step == "go" and (received.metadata or {}).get("buffered") is True
    mesh.unblock_run(run.id)
    done = mesh.inspect_run(run.id)
    assert (done.status, done.result) == (sm.RunStatus.COMPLETED, {"got": {"n": 1}})
    # the buffered event was consumed, not delivered twice
    assert mesh_factory.snapshot()["runs"][str(run.id)]["events"] == []


def test_send_event_delivered_while_waiting(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.eventful])
    run = mesh.start_run(flows.eventful)
    mesh.unblock_run(run.id)
    why = mesh.explain_run(run.id)
    assert (why.status, why.reason, why.step) == (sm.RunStatus.RUNNING, "waiting_for_event", "go")
    assert why.details["event"] == "go"
    assert why.next_actions == ("send_event", "wait_for_event", "cancel_run")
    fails_unchanged(mesh_factory, ValueError, mesh.send_event, run.id, "")
    mesh.send_event(run.id, "unrelated", 1)  # buffered for later, the wait goes on
    assert mesh.explain_run(run.id).details["buffered_events"] == 1
    mesh.send_event(run.id, "go", ["payload"])
    assert mesh.inspect_run(run.id).result == {"got": ["payload"]}


def test_event_wait_times_out_on_the_virtual_clock(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.event_with_timeout])
    run = mesh.start_run(flows.event_with_timeout)
    why = mesh.explain_run(run.id)
    assert why.reason == "waiting_for_event"
    assert why.details["timeout_at"] == (T0 + timedelta(seconds=30)).isoformat()
    mesh_factory.clock.advance(29)
    assert mesh.drain() == 0
    mesh_factory.clock.advance(1)
    assert mesh.drain() == 1
    assert mesh.inspect_run(run.id).result == "timed out"
    assert "timed_out" in audit_types(mesh, run.id)


# --------------------------------------------------------------------------- cancel


def test_cancel_while_paused(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.gated])
    run = mesh.start_run(flows.gated)
    mesh.cancel_run(run.id, actor="ops", reason="not needed")
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status is sm.RunStatus.CANCELLED
    assert done.step_runs is not None and done.step_runs[0].status == "cancelled"
    assert done.audit_events is not None
    cancel = [(e.type, e.actor, e.comment) for e in done.audit_events if "cancel" in e.type]
    assert cancel == [("cancel_requested", "ops", "not needed"), ("cancelled", "ops", "not needed")]
    why = mesh.explain_run(run.id)
    assert why.reason == "cancelled" and why.next_actions == ("replay_run", "fork_run")
    err = fails_unchanged(mesh_factory, sm.InvalidTransitionError, mesh.cancel_run, run.id)
    assert (err.status, err.action) == ("cancelled", "cancel_run")
    fails_unchanged(mesh_factory, sm.InvalidTransitionError, mesh.unblock_run, run.id)


def test_cancel_while_a_step_is_in_flight(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.in_flight], executor="database")
    run = mesh.start_run(flows.in_flight)
    seen: dict[str, Any] = {}

    def inside_the_step() -> None:
        seen["running"] = mesh.explain_run(run.id)
        mesh.cancel_run(run.id, actor="ops", reason="stop")
        seen["status"] = status(mesh, run.id)
        seen["cancelling"] = mesh.explain_run(run.id)
        try:
            mesh.cancel_run(run.id)
        except sm.InvalidTransitionError as exc:
            seen["again"] = (exc.status, exc.action)

    flows.HOOKS["slow"] = inside_the_step
    assert mesh.drain() == 2  # the activation, then the step (which cancels its run)

    running = seen["running"]
    assert (running.status, running.reason, running.step) == ("running", "step_running", "slow")
    assert running.next_actions == ("wait_for_step", "cancel_run")
    assert running.evidence["attempt"]["number"] == 1
    assert running.evidence["attempt"]["status"] == "running"
    assert seen["status"] is sm.RunStatus.CANCELLING
    assert seen["cancelling"].reason == "waiting_for_cancellation"
    assert seen["cancelling"].next_actions == ("wait_for_cancellation",)
    assert seen["cancelling"].details["in_flight"] == ["slow"]
    assert seen["again"] == ("cancelling", "cancel_run")

    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status is sm.RunStatus.CANCELLED
    assert done.step_runs is not None
    assert [(s.name, s.status) for s in done.step_runs] == [("slow", "completed")]
    assert done.step_runs[0].attempts[0].status == "completed"
    assert flows.CALLS["slow:a"] == 1
    assert [t for t in audit_types(mesh, run.id) if "cancel" in t] == [
        "cancel_requested",
        "cancelled",
    ]
    assert mesh.drain() == 0
    assert mesh_factory.jobs() == []


def test_cancel_with_compensation(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.undoable], executor="database")
    run = mesh.start_run(flows.undoable)
    mesh.drain()
    assert status(mesh, run.id) is sm.RunStatus.PAUSED
    mesh.cancel_run(run.id, actor="ops", compensate=True)
    why = mesh.explain_run(run.id)
    assert (why.status, why.reason) == (sm.RunStatus.CANCELLING, "compensating")
    mesh.drain()
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status is sm.RunStatus.CANCELLED
    assert done.step_runs is not None
    booked = done.step_runs[0]
    assert booked.name == "book"
    assert booked.compensation is not None
    assert booked.compensation["status"] == "completed"
    assert booked.compensation["output"] == "unbooked booking-car"
    assert flows.CALLS["undo_book"] == 1
    assert [t for t in audit_types(mesh, run.id) if "cancel" in t or "compens" in t] == [
        "cancel_requested",
        "compensation_started",
        "compensated",
        "cancelled",
    ]
    assert mesh.explain_run(run.id).reason == "cancelled"


def test_cancel_without_compensation_leaves_completed_steps(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.undoable])
    run = mesh.start_run(flows.undoable)
    mesh.cancel_run(run.id)
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status is sm.RunStatus.CANCELLED
    assert done.step_runs is not None and done.step_runs[0].compensation is None
    assert flows.CALLS["undo_book"] == 0


# --------------------------------------------------------------------------- suspend / resume


def test_workflow_bug_suspends_and_resume_continues_after_the_fix(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory([flows.buggy])
    run = mesh.start_run(flows.buggy)
    stuck = mesh.inspect_run(run.id)
    assert stuck.status is sm.RunStatus.SUSPENDED
    assert stuck.error is not None and "ZeroDivisionError" in stuck.error["type"]
    why = mesh.explain_run(run.id)
    assert why.reason == "workflow_error"
    assert why.next_actions == ("resume_run", "cancel_run")
    assert "the workflow code has a bug" in why.details["error"]["message"]
    assert "ZeroDivisionError" in (why.details["error"]["traceback"] or "")
    assert "suspended" in audit_types(mesh, run.id)

    mesh.resume_run(run.id)  # still broken: suspended again, nothing lost
    assert status(mesh, run.id) is sm.RunStatus.SUSPENDED

    flows.FLAGS["bug"] = False  # "deploy the fix"
    mesh.resume_run(run.id)
    done = mesh.inspect_run(run.id)
    assert (done.status, done.result) == (sm.RunStatus.COMPLETED, ["done buggy-1", "done buggy-2"])
    assert done.error is None
    assert flows.CALLS["finish:buggy-1"] == 1  # recorded before the bug: not run again
    assert audit_types(mesh, run.id).count("resumed") == 2


def test_cancel_a_suspended_run(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.buggy])
    run = mesh.start_run(flows.buggy)
    mesh.cancel_run(run.id)
    assert status(mesh, run.id) is sm.RunStatus.CANCELLED
    err = fails_unchanged(mesh_factory, sm.InvalidTransitionError, mesh.resume_run, run.id)
    assert err.status == "cancelled"


def test_nondeterminism_after_a_code_change_suspends(mesh_factory: MeshFactory) -> None:
    old = mesh_factory([flows.shifty_v1])
    run = old.start_run(flows.shifty_v1)
    assert old.explain_run(run.id).reason == "waiting_for_timer"
    recorded = old.inspect_run(run.id, include_history=True).step_runs
    assert recorded is not None and len(recorded) == 2
    old.close()

    new = mesh_factory([flows.shifty_v2])  # the changed code, same workflow name
    mesh_factory.clock.advance(10)
    new.drain()
    stuck = new.inspect_run(run.id, include_history=True)
    assert stuck.status is sm.RunStatus.SUSPENDED
    why = new.explain_run(run.id)
    assert why.reason == "nondeterminism"
    assert why.next_actions == ("resume_run", "cancel_run")
    assert why.details["seq"] == 0
    assert "step_three" in why.details["expected"]
    assert "step_one" in why.details["recorded"]
    assert "flows.py" in why.details["expected"]  # file:line of the new code
    assert why.details["error"]["type"].endswith("NondeterminismError")
    # the history is intact: nothing recorded was lost or added
    assert stuck.step_runs is not None
    assert [(s.seq, s.name, s.output) for s in stuck.step_runs] == [
        (s.seq, s.name, s.output) for s in recorded
    ]
    assert flows.CALLS["step_three"] == 0
    assert "suspended" in audit_types(new, run.id)

    fixed = mesh_factory([flows.shifty_v1])  # roll the code back, then resume
    fixed.resume_run(run.id)
    done = fixed.inspect_run(run.id)
    assert (done.status, done.result) == (sm.RunStatus.COMPLETED, "v1")
    assert flows.CALLS["step_one"] == 1 and flows.CALLS["step_two"] == 1


# --------------------------------------------------------------------------- explain_run


def test_explain_waiting_reasons(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.sleeper, flows.joiner, flows.flaky_flow])

    sleeping = mesh.start_run(flows.sleeper)
    why = mesh.explain_run(sleeping.id)
    assert (why.status, why.reason, why.step) == (
        sm.RunStatus.RUNNING,
        "waiting_for_timer",
        "sleep",
    )
    assert why.details["wake_at"] == (T0 + timedelta(seconds=60)).isoformat()
    assert why.next_actions == ("wait_for_timer", "cancel_run")
    assert why.evidence["run"]["id"] == str(sleeping.id)

    joining = mesh.start_run(flows.joiner)
    why = mesh.explain_run(joining.id)
    assert (why.status, why.reason) == (sm.RunStatus.RUNNING, "waiting_for_join")
    assert why.details["branches"] == [
        {"seq": 1, "kind": "step", "name": "quick", "status": "completed"},
        {"seq": 2, "kind": "event", "name": "other", "status": "running"},
    ]
    assert "cancel_run" in why.next_actions

    flows.FLAGS["flaky_failures"] = 1
    retrying = mesh.start_run(flows.flaky_flow)
    why = mesh.explain_run(retrying.id)
    assert (why.status, why.reason, why.step) == (
        sm.RunStatus.RETRYING,
        "waiting_for_retry",
        "flaky",
    )
    assert why.details["next_attempt_number"] == 2
    assert why.details["next_attempt_at"] == (T0 + timedelta(seconds=10)).isoformat()
    assert why.details["max_attempts"] == 3
    assert "flaky failure 1" in why.details["last_error"]["message"]
    assert why.next_actions == ("wait_for_retry", "cancel_run")
    assert why.evidence["step_run"]["name"] == "flaky"
    assert why.evidence["attempt"]["number"] == 1
    assert why.evidence["attempt"]["status"] == "failed"

    mesh_factory.clock.advance(60)
    mesh.drain()
    assert mesh.inspect_run(sleeping.id).result == "rested"
    assert mesh.inspect_run(retrying.id).result == "ok after 2"
    mesh.send_event(joining.id, "other", "b")
    assert mesh.inspect_run(joining.id).result == ["quick", "b"]


def test_explain_dispatch_reasons(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.chain], executor="database")
    run = mesh.start_run(flows.chain, {"item": "x"})
    why = mesh.explain_run(run.id)
    assert (why.status, why.reason, why.step) == (sm.RunStatus.PENDING, "pending_dispatch", None)
    assert why.next_actions == ("wait_for_step", "cancel_run")
    assert mesh.drain(limit=1) == 1  # the activation: step_one is now queued
    why = mesh.explain_run(run.id)
    assert (why.status, why.reason, why.step) == (
        sm.RunStatus.RUNNING,
        "step_scheduled",
        "step_one",
    )
    assert why.details == {"attempt": 1}
    assert why.next_actions == ("wait_for_step", "cancel_run")
    assert why.evidence["step_run"]["status"] == "pending"
    assert why.evidence["attempt"] is None
    mesh.drain()
    assert mesh.explain_run(run.id).reason == "completed"


def test_explain_failure_reasons(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.flaky_flow, flows.doomed, flows.failing])

    flows.FLAGS["flaky_failures"] = 99
    exhausted = mesh.start_run(flows.flaky_flow)
    for _ in range(2):
        mesh_factory.clock.advance(10)
        mesh.drain()
    why = mesh.explain_run(exhausted.id)
    assert (why.status, why.reason, why.step) == (sm.RunStatus.FAILED, "retry_exhausted", "flaky")
    assert why.details["max_attempts"] == 3 and why.details["latest_attempt_number"] == 3
    assert why.next_actions == ("replay_run", "fork_run")
    assert why.details["replay"]["allowed"] is True
    failed = mesh.inspect_run(exhausted.id, include_history=True)
    assert failed.step_runs is not None
    assert [a.status for a in failed.step_runs[0].attempts] == ["failed"] * 3
    assert [a.number for a in failed.step_runs[0].attempts] == [1, 2, 3]

    doomed = mesh.start_run(flows.doomed)
    why = mesh.explain_run(doomed.id)
    assert (why.reason, why.step) == ("step_failed", "doomed_step")
    assert why.details["error"]["message"] == "the bridge is out"
    assert flows.CALLS["doomed_step"] == 1  # NonRetryable: no second attempt

    failing = mesh.start_run(flows.failing)
    why = mesh.explain_run(failing.id)
    assert (why.status, why.reason, why.step) == (sm.RunStatus.FAILED, "workflow_failed", None)
    assert why.details["error"]["message"] == "the trip is off"
    assert why.details["error"]["details"] == {"why": "weather"}
    done = mesh.inspect_run(failing.id, include_history=True)
    assert done.step_runs is not None and done.step_runs[0].compensation is not None
    assert done.step_runs[0].compensation["status"] == "completed"
    (seen_failure,) = flows.FLAGS["undo_failures_seen"]
    assert seen_failure["message"] == "the trip is off"  # compensations get the failure

    flows.FLAGS["undo_fails"] = True
    broken = mesh.start_run(flows.failing)
    why = mesh.explain_run(broken.id)
    assert (why.status, why.reason) == (sm.RunStatus.FAILED, "compensation_failed")
    (failure,) = why.details["failures"]
    assert failure["step"] == "book" and "lost the booking" in failure["error"]["message"]
    assert "compensation_failed" in audit_types(mesh, broken.id)


def test_explain_workflow_unavailable(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.gated, flows.chain])
    paused = mesh.start_run(flows.gated)
    done = mesh.start_run(flows.chain, {"item": "x"})
    stranger = mesh_factory([flows.other])
    why = stranger.explain_run(paused.id)
    assert (why.status, why.reason) == (sm.RunStatus.PAUSED, "workflow_unavailable")
    assert why.details["workflow"] == "gated"
    assert why.next_actions == ("cancel_run",)
    fails_unchanged(
        mesh_factory, sm.UnknownWorkflowError, stranger.approve_run, paused.id, actor="a"
    )
    fails_unchanged(mesh_factory, sm.UnknownWorkflowError, stranger.unblock_run, paused.id)
    # a finished run explains normally, but cannot be replayed without its code
    why = stranger.explain_run(done.id)
    assert why.reason == "completed" and "replay_run" not in why.next_actions
    assert why.details["replay"]["allowed"] is False
    stranger.cancel_run(paused.id)  # the one offered action works
    assert status(stranger, paused.id) is sm.RunStatus.CANCELLED


def test_cancel_while_an_in_flight_step_fails_and_would_retry(
    mesh_factory: MeshFactory,
) -> None:
    # The step lands as a failed attempt with retries left: the run was being cancelled,
    # so it is cancelled when the attempt lands, not after the (10 minute) retry backoff.
    mesh = mesh_factory([flows.in_flight_flaky], executor="database")
    run = mesh.start_run(flows.in_flight_flaky)
    flows.HOOKS["slow"] = lambda: mesh.cancel_run(run.id, actor="ops")
    assert mesh.drain() == 2
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status is sm.RunStatus.CANCELLED
    assert done.step_runs is not None
    assert [a.status for a in done.step_runs[0].attempts] == ["failed"]
    assert flows.CALLS["slow_flaky:a"] == 1
    mesh_factory.clock.advance(600)
    mesh.drain()
    assert flows.CALLS["slow_flaky:a"] == 1  # no attempt after the cancellation
    assert status(mesh, run.id) is sm.RunStatus.CANCELLED


def test_event_sent_before_the_first_activation_is_buffered(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.early_event], executor="database")
    run = mesh.start_run(flows.early_event)
    mesh.send_event(run.id, "go", {"early": True})
    assert status(mesh, run.id) is sm.RunStatus.PENDING
    mesh.drain()
    assert mesh.inspect_run(run.id).result == {"early": True}


def test_explain_compensating_after_a_failure(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.failing], executor="database")
    run = mesh.start_run(flows.failing)
    assert mesh.drain(limit=2) == 2  # activation, then the step; the workflow then fails
    why = mesh.explain_run(run.id)
    assert why.reason == "compensating"
    assert why.details["pending"] == ["book"]
    mesh.drain()
    assert mesh.explain_run(run.id).reason == "workflow_failed"


def test_values_that_are_not_json_are_refused_and_change_nothing(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory([flows.gated, flows.eventful])
    paused = mesh.start_run(flows.gated)
    fails_unchanged(mesh_factory, TypeError, mesh.unblock_run, paused.id, data=object())
    mesh.unblock_run(paused.id)
    fails_unchanged(
        mesh_factory, TypeError, mesh.approve_run, paused.id, actor="a", metadata={"x": object()}
    )
    waiting = mesh.start_run(flows.eventful)
    fails_unchanged(mesh_factory, TypeError, mesh.send_event, waiting.id, "go", object())
    mesh.unblock_run(waiting.id)
    fails_unchanged(mesh_factory, TypeError, mesh.send_event, waiting.id, "go", object())
    mesh.send_event(waiting.id, "go", 3)
    assert mesh.inspect_run(waiting.id).result == {"got": 3}


def test_approval_times_out_on_the_virtual_clock(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.approval_with_timeout])
    run = mesh.start_run(flows.approval_with_timeout)
    why = mesh.explain_run(run.id)
    assert why.reason == "paused_for_approval"
    assert why.details["timeout_at"] == (T0 + timedelta(seconds=60)).isoformat()
    mesh_factory.clock.advance(60)
    mesh.drain()
    assert mesh.inspect_run(run.id).result == "nobody decided"
    assert "timed_out" in audit_types(mesh, run.id)
    err = fails_unchanged(
        mesh_factory, sm.InvalidTransitionError, mesh.approve_run, run.id, actor="late"
    )
    assert err.status == "completed"


def test_fork_inside_a_join_is_refused(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.joiner])
    run = mesh.start_run(flows.joiner)
    mesh.send_event(run.id, "other", 1)
    fails_unchanged(mesh_factory, ValueError, mesh.fork_run, run.id, at_seq=2)
    fork = mesh.fork_run(run.id, at_seq=0)
    assert mesh.explain_run(fork.id).reason == "waiting_for_join"
    assert flows.CALLS["quick"] == 2


def test_list_runs_pages_through_runs_created_at_the_same_instant(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory([flows.gated])
    started = {mesh.start_run(flows.gated).id for _ in range(5)}  # the clock stands still
    seen: list[uuid.UUID] = []
    page = mesh.list_runs(limit=2)
    while page:
        seen.extend(r.id for r in page)
        page = mesh.list_runs(limit=2, before=page[-1])
    assert len(seen) == len(set(seen)) and set(seen) == started


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10", 2**63, 2**64])
def test_counts_a_database_cannot_take_are_refused_by_name(
    mesh_factory: MeshFactory, bad: Any
) -> None:
    """A limit past 64 bits once reached the driver as an OverflowError (found by the
    API fuzz test): every count is checked before anything is read or written."""
    mesh = mesh_factory([flows.chain])
    mesh.start_run(flows.chain, {"item": "x"})
    calls = {
        "list_runs limit": lambda: mesh.list_runs(limit=bad),
        "count_runs limit": lambda: mesh.count_runs(limit=bad),
        "prune batch_size": lambda: mesh.prune(timedelta(days=1), batch_size=bad),
        "drain limit": lambda: mesh.drain(limit=bad),
    }
    for what, call in calls.items():
        err = fails_unchanged(mesh_factory, sm.InvalidArgumentError, call)
        assert what in str(err), err
    # The largest count a database takes is fine.
    assert len(mesh.list_runs(limit=2**63 - 1)) == 1
