from __future__ import annotations

# The Mesh API the operator console reads and acts through, on the memory, SQLite and
# PostgreSQL stores: list_runs' search filters, count_runs, and the actor every
# operator action records in the audit trail.
import uuid
from typing import Any

import pytest

import squidmesh as sm
from tests.runtime import flows
from tests.runtime.support import MeshFactory, fails_unchanged


def audit(mesh: sm.Mesh, run_id: Any) -> list[tuple[str, str | None]]:
    events = mesh.inspect_run(run_id, include_history=True).audit_events
    assert events is not None
    return [(e.type, e.actor) for e in events]


def test_list_runs_searches_by_trigger_step_key_and_id_prefix(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.chain, flows.gated])
    clock = mesh_factory.clock
    placed = mesh.start_run(flows.chain, {"item": "1"}, trigger="place", idempotency_key="k-1")
    clock.advance(1)
    plain = mesh.start_run(flows.chain, trigger="plain")
    clock.advance(1)
    held = mesh.start_run(flows.gated, idempotency_key="k-1")  # paused at "hold"
    clock.advance(1)
    voting = mesh.start_run(flows.gated)
    mesh.unblock_run(voting.id, actor="ops")  # paused at "vote"

    def ids(**kw: Any) -> list[uuid.UUID]:
        return [r.id for r in mesh.list_runs(**kw)]

    assert ids(trigger="plain") == [plain.id]
    assert ids(trigger="place", workflow=flows.chain) == [placed.id]
    assert ids(step="hold") == [held.id]
    assert ids(step="vote") == [voting.id]
    assert ids(step="vote", status="paused", workflow="gated") == [voting.id]
    assert ids(step="vote", status="running") == []
    assert ids(idempotency_key="k-1") == [held.id, placed.id]
    assert ids(idempotency_key="k-1", workflow="chain") == [placed.id]
    whole = str(voting.id)
    assert ids(id_prefix=whole) == [voting.id]
    assert ids(id_prefix=whole[:8]) == [voting.id]
    assert ids(id_prefix=whole.replace("-", "").upper()[:12]) == [voting.id]
    assert ids(id_prefix="not-hex") == []
    assert ids(trigger="nightly") == []
    page = mesh.list_runs(idempotency_key="k-1", limit=1)
    assert ids(idempotency_key="k-1", before=page[-1]) == [placed.id]

    fails_unchanged(mesh_factory, ValueError, mesh.list_runs, step="")
    fails_unchanged(mesh_factory, ValueError, mesh.list_runs, id_prefix="")


def test_count_runs_counts_every_status(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.chain, flows.gated])
    for item in ("a", "b", "c"):
        mesh.start_run(flows.chain, {"item": item})
    held = [mesh.start_run(flows.gated) for _ in range(2)]
    mesh.cancel_run(held[0].id)

    counts = mesh.count_runs()
    assert list(counts) == list(sm.RunStatus)  # every status, in the enum's order
    assert counts == {
        **dict.fromkeys(sm.RunStatus, 0),
        sm.RunStatus.COMPLETED: 3,
        sm.RunStatus.PAUSED: 1,
        sm.RunStatus.CANCELLED: 1,
    }
    assert counts["completed"] == 3  # RunStatus is a str: plain names work too
    assert mesh.count_runs(workflow=flows.gated)[sm.RunStatus.COMPLETED] == 0
    assert mesh.count_runs(workflow="gated")[sm.RunStatus.PAUSED] == 1
    assert mesh.count_runs(limit=2)[sm.RunStatus.COMPLETED] == 2  # stops at the limit
    fails_unchanged(mesh_factory, ValueError, mesh.count_runs, limit=0)


def test_every_operator_action_records_its_actor(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([flows.gated, flows.eventful, flows.buggy, flows.chain])
    run = mesh.start_run(flows.gated, actor="ana")
    mesh.unblock_run(run.id, actor="bo", comment="checked")
    mesh.approve_run(run.id, actor="cy")
    assert audit(mesh, run.id)[0] == ("run_started", "ana")
    assert ("unblocked", "bo") in audit(mesh, run.id)
    assert ("approved", "cy") in audit(mesh, run.id)

    waiting = mesh.start_run(flows.eventful)
    mesh.send_event(waiting.id, "go", {"n": 1}, actor="dee")  # buffered: not waiting yet
    mesh.unblock_run(waiting.id)
    assert mesh.inspect_run(waiting.id).result == {"got": {"n": 1}}
    assert ("event_received", "dee") in audit(mesh, waiting.id)

    flows.FLAGS["bug"] = True
    stuck = mesh.start_run(flows.buggy)
    flows.FLAGS["bug"] = False
    mesh.resume_run(stuck.id, actor="eve")
    assert ("resumed", "eve") in audit(mesh, stuck.id)

    done = mesh.start_run(flows.chain, {"item": "x"})
    again = mesh.replay_run(done.id, actor="fay")
    forked = mesh.fork_run(done.id, at_seq=1, actor="gus")
    assert ("replayed", "fay") in audit(mesh, again.id)
    assert ("forked", "gus") in audit(mesh, forked.id)
    assert {("replayed", "fay"), ("forked", "gus")} <= set(audit(mesh, done.id))

    later = mesh.start_run(flows.gated)
    mesh.cancel_run(later.id, actor="hal")
    assert ("cancel_requested", "hal") in audit(mesh, later.id)


@pytest.mark.parametrize("action", ["send_event", "resume_run"])
def test_the_actor_is_optional_where_it_always_was(mesh_factory: MeshFactory, action: str) -> None:
    mesh = mesh_factory([flows.eventful, flows.buggy])
    if action == "send_event":
        run = mesh.start_run(flows.eventful)
        mesh.send_event(run.id, "go")
        assert ("event_received", None) in audit(mesh, run.id)
    else:
        flows.FLAGS["bug"] = True
        run = mesh.start_run(flows.buggy)
        mesh.resume_run(run.id)
        assert ("resumed", None) in audit(mesh, run.id)
