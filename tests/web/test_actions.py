from __future__ import annotations

# The console's actions through its ASGI app: each next action reaches the Mesh with
# the host's actor; actions the run does not offer, and actions the Mesh refuses, show
# the message and change nothing; starting runs from the workflow form.
import json
import re
from typing import Any

import pytest

import squidmesh as sm
from tests.runtime.support import snapshot
from tests.web import flows
from tests.web.conftest import Console, post


def audit(env: Console, run_id: Any) -> list[tuple[str, str | None, str | None]]:
    events = env.mesh.inspect_run(run_id, include_history=True).audit_events or ()
    return [(e.type, e.actor, e.comment) for e in events]


def new_run(response: Any) -> str:
    """The run a redirect after an action leads to."""
    found = re.fullmatch(r"/runs/([0-9a-f-]{36})\?done=\w+", response.headers["location"])
    assert found is not None, response.headers["location"]
    return found.group(1)


def paused(env: Console, item: str = "rope") -> sm.Run:
    return env.mesh.start_run(flows.review, {"item": item})


def test_unblock_then_approve_with_the_actor_and_comments(env: Console) -> None:
    run = paused(env)
    client = env.client()
    moved = post(
        client,
        f"/runs/{run.id}/actions/unblock_run",
        {"comment": "3 boxes", "data": '{"boxes": 3}'},
    )
    assert moved.status_code == 303
    assert moved.headers["location"] == f"/runs/{run.id}?done=unblock_run"
    assert "Unblocked." in client.get(moved.headers["location"]).text
    env.actor = "bo"
    approved = post(client, f"/runs/{run.id}/actions/approve_run", {"comment": "fine"})
    assert approved.status_code == 303
    done = env.mesh.inspect_run(run.id)
    assert done.status is sm.RunStatus.COMPLETED
    assert done.result["checked"] == {"boxes": 3}
    assert ("unblocked", "ana", "3 boxes") in audit(env, run.id)
    assert ("approved", "bo", "fine") in audit(env, run.id)


def test_the_script_gets_json_back(env: Console) -> None:
    run = paused(env)
    client = env.client()
    headers = {"accept": "application/json"}
    ok = post(client, f"/runs/{run.id}/actions/unblock_run", headers=headers)
    assert ok.status_code == 200
    assert ok.json() == {
        "ok": True,
        "message": "Unblocked.",
        "location": f"/runs/{run.id}?done=unblock_run",
    }
    refused = post(client, f"/runs/{run.id}/actions/unblock_run", headers=headers)
    assert refused.status_code == 409
    assert refused.json()["ok"] is False
    assert "what it allows now: approve_run, reject_run, cancel_run" in refused.json()["message"]


def test_reject_cancel_and_compensate(env: Console) -> None:
    run = paused(env)
    client = env.client()
    env.mesh.unblock_run(run.id)
    assert post(client, f"/runs/{run.id}/actions/reject_run", {"comment": "no"}).status_code == 303
    assert env.mesh.inspect_run(run.id).result == {
        "prepared": "1 x rope prepared",
        "refused_by": "ana",
    }

    other = paused(env, "lamp")
    cancelled = post(
        client,
        f"/runs/{other.id}/actions/cancel_run",
        {"comment": "wrong lamp", "compensate": "yes"},
    )
    assert cancelled.status_code == 303
    assert env.mesh.inspect_run(other.id).status is sm.RunStatus.CANCELLED
    request = [e for e in audit(env, other.id) if e[0] == "cancel_requested"]
    assert request == [("cancel_requested", "ana", "wrong lamp")]
    events = env.mesh.inspect_run(other.id, include_history=True).audit_events or ()
    assert [e.metadata for e in events if e.type == "cancel_requested"] == [{"compensate": True}]


def test_send_event_resume_and_fork(env: Console) -> None:
    client = env.client()
    waiting = env.mesh.start_run(flows.waiter)
    sent = post(
        client, f"/runs/{waiting.id}/actions/send_event", {"name": "go", "data": '{"n": 1}'}
    )
    assert sent.status_code == 303
    assert env.mesh.inspect_run(waiting.id).result == {"got": {"n": 1}}
    assert ("event_received", "ana", None) in audit(env, waiting.id)

    flows.FLAGS["bug"] = True
    stuck = env.mesh.start_run(flows.buggy)
    flows.FLAGS["bug"] = False
    assert post(client, f"/runs/{stuck.id}/actions/resume_run").status_code == 303
    assert env.mesh.inspect_run(stuck.id).result == "fixed"
    assert ("resumed", "ana", None) in audit(env, stuck.id)

    done = env.mesh.start_run(flows.rocket)
    forked = post(client, f"/runs/{done.id}/actions/fork_run", {"at_seq": "1"})
    assert forked.status_code == 303
    fork = env.mesh.inspect_run(new_run(forked), include_history=True)
    assert fork.forked_from_run_id == done.id and fork.status is sm.RunStatus.COMPLETED
    assert fork.step_runs is not None and fork.step_runs[0].output == "launched at moon"
    assert ("forked", "ana", None) in audit(env, fork.id)


def test_replay_past_irreversible_steps_needs_two_confirmations(env: Console) -> None:
    done = env.mesh.start_run(flows.rocket)
    client = env.client()
    page = client.get(f"/runs/{done.id}").text
    assert 'data-action="replay_run" data-override="allow_irreversible"' in page
    assert "launch completed and cannot be undone" in page
    before = snapshot(env.mesh.store)

    plain = post(client, f"/runs/{done.id}/actions/replay_run")
    assert plain.status_code == 409  # replay_run is not a next action of this run
    assert snapshot(env.mesh.store) == before

    first = post(client, f"/runs/{done.id}/actions/replay_run", {"allow_irreversible": "yes"})
    assert first.status_code == 200
    assert "Replay past irreversible steps?" in first.text
    assert 'name="confirmed" value="yes"' in first.text
    assert snapshot(env.mesh.store) == before  # the first confirmation changes nothing

    second = post(
        client,
        f"/runs/{done.id}/actions/replay_run",
        {"allow_irreversible": "yes", "confirmed": "yes"},
    )
    assert second.status_code == 303
    replay = env.mesh.inspect_run(new_run(second))
    assert replay.replayed_from_run_id == done.id and replay.status is sm.RunStatus.COMPLETED
    assert len(env.mesh.list_runs(workflow=flows.rocket)) == 2
    assert ("replayed", "ana", None) in audit(env, replay.id)


def test_replay_when_it_is_allowed(env: Console) -> None:
    run = paused(env)
    env.mesh.cancel_run(run.id)
    client = env.client()
    replayed = post(client, f"/runs/{run.id}/actions/replay_run")
    assert replayed.status_code == 303
    new = env.mesh.inspect_run(new_run(replayed))
    assert new.replayed_from_run_id == run.id and new.payload == run.payload


@pytest.mark.parametrize(
    ("action", "data", "status", "message"),
    [
        ("approve_run", {}, 409, "what it allows now: unblock_run, cancel_run"),
        ("resume_run", {}, 409, "it is paused"),
        ("fork_run", {"at_seq": "0"}, 409, "what it allows now"),
        ("launch_missiles", {}, 409, "what it allows now"),
        ("unblock_run", {"data": "{not json"}, 422, "data is not valid JSON"),
    ],
)
def test_refused_actions_show_the_message_and_change_nothing(
    env: Console, action: str, data: dict[str, str], status: int, message: str
) -> None:
    run = paused(env)
    client = env.client()
    before = snapshot(env.mesh.store)
    response = post(client, f"/runs/{run.id}/actions/{action}", data)
    assert response.status_code == status
    assert message in response.text
    assert "data-error" in response.text  # the run's page again, with the message
    assert snapshot(env.mesh.store) == before


def test_a_refusal_by_the_mesh_shows_its_message(env: Console) -> None:
    done = env.mesh.start_run(flows.rocket)
    client = env.client()
    before = snapshot(env.mesh.store)
    response = post(client, f"/runs/{done.id}/actions/fork_run", {"at_seq": "99"})
    assert response.status_code == 422
    assert "fork_run at_seq must be between 0 and 2, got 99" in response.text
    assert snapshot(env.mesh.store) == before
    gone = post(client, "/runs/00000000-0000-4000-8000-000000000000/actions/cancel_run")
    assert gone.status_code == 404 and "not found" in gone.text


def test_start_a_run_from_the_workflow_form(env: Console) -> None:
    client = env.client()
    started = post(
        client,
        "/workflows/review/start",
        {
            "trigger": "api",
            "field.item": "lamp",
            "field.qty": "3",
            "field.rush": "true",
            "field.size": "",
            "field.due": "2030-02-01",
            "field.tags": '["red", "big"]',
            "idempotency_key": "order-9",
        },
    )
    assert started.status_code == 303
    run = env.mesh.inspect_run(new_run(started))
    assert (run.trigger, run.idempotency_key) == ("api", "order-9")
    assert run.payload == {
        "item": "lamp",
        "qty": 3,
        "rush": True,
        "size": "m",  # left blank: the model's default
        "due": "2030-02-01",
        "tags": ["red", "big"],
    }
    assert audit(env, run.id)[0] == ("run_started", "ana", None)

    raw = post(client, "/workflows/review/start", {"payload_json": json.dumps({"item": "x"})})
    assert raw.status_code == 303
    assert env.mesh.inspect_run(new_run(raw)).payload["item"] == "x"


def test_an_invalid_payload_shows_its_fields_and_starts_nothing(env: Console) -> None:
    client = env.client()
    before = snapshot(env.mesh.store)
    response = post(client, "/workflows/review/start", {"trigger": "desk", "field.qty": "lots"})
    assert response.status_code == 422
    assert "missing" in response.text and "item" in response.text
    assert "expected int" in response.text
    assert 'value="lots"' in response.text  # what was typed is kept
    bad_json = post(client, "/workflows/review/start", {"field.item": "a", "field.tags": "[oops"})
    assert bad_json.status_code == 422 and "tags: not valid JSON" in bad_json.text
    unknown = post(client, "/workflows/review/start", {"trigger": "nightly", "field.item": "a"})
    assert unknown.status_code == 422 and "no trigger" in unknown.text
    assert snapshot(env.mesh.store) == before
    assert post(client, "/workflows/nobody/start").status_code == 404
