from __future__ import annotations

# The FastAPI example (examples/fastapi_app) against a fresh PostgreSQL database, through
# ``fastapi.testclient.TestClient``: the app's lifespan migrates and starts a worker
# thread, which runs every step; the test only talks HTTP.
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():
    # Recent Starlette prefers the "httpx2" package for its TestClient and warns (an
    # error under this suite's filterwarnings) when it falls back to httpx.
    warnings.filterwarnings("ignore", message=r".*httpx2")
    from fastapi.testclient import TestClient

from examples.fastapi_app import create_app
from tests.support import postgres

TIMEOUT = 30.0


@pytest.fixture
def client(pg_database_url: str) -> Iterator[TestClient]:
    app = create_app(
        postgres.sqlalchemy_url(pg_database_url),
        worker_options={"poll_interval": 0.2, "concurrency": 2},
    )
    with TestClient(app) as test_client:  # runs the lifespan: migrate, start the worker
        yield test_client
    # Leaving the block ran the shutdown: the worker stopped and the Mesh closed.
    assert app.state.mesh._workers == []


def poll(client: TestClient, path: str, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        response = client.get(path)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if until(body):
            return body
        assert time.monotonic() < deadline, f"gave up waiting on {path}: last {body}"
        time.sleep(0.05)


def test_a_ring_errand_over_http(client: TestClient) -> None:
    started = client.post("/runs/ring_errand", json={"ring_id": "one-ring"})
    assert started.status_code == 201, started.text
    run = started.json()
    run_id = run["id"]
    assert run["workflow"] == "ring_errand" and run["trigger"] == "leave_shire"
    assert run["payload"]["bearer"] == "Frodo"  # defaults resolved at creation
    explain = f"/runs/{run_id}/explain"

    # The worker packs the lembas, then the run sleeps 5 s for Gandalf ...
    sleeping = poll(client, explain, lambda b: b["reason"] != "pending_dispatch")
    if sleeping["reason"] != "paused_for_manual_action":
        assert sleeping["reason"] in {"step_scheduled", "step_running", "waiting_for_timer"}
        sleeping = poll(client, explain, lambda b: b["reason"] == "waiting_for_timer")
        assert sleeping["status"] == "running"
        assert "wake_at" in str(sleeping["details"])

    # ... then hides at the Prancing Pony until someone unblocks it.
    paused = poll(client, explain, lambda b: b["reason"] == "paused_for_manual_action")
    assert paused["status"] == "paused"
    assert paused["step"] == "hide_at_prancing_pony"
    assert "unblock_run" in paused["next_actions"]

    # Approving a run that is not waiting at an approval: 409, with squidmesh's message.
    refused = client.post(f"/runs/{run_id}/approve", json={"actor": "elrond"})
    assert refused.status_code == 409
    assert refused.json()["error"] == "InvalidTransitionError"
    assert refused.json()["status"] == "paused"
    assert refused.json()["action"] == "approve_run"
    assert "not at an approval" in refused.json()["message"]

    unblocked = client.post(f"/runs/{run_id}/unblock", json={"actor": "strider"})
    assert unblocked.status_code == 200, unblocked.text

    council = poll(client, explain, lambda b: b["reason"] == "paused_for_approval")
    assert council["step"] == "council_vote"
    assert {"approve_run", "reject_run"} <= set(council["next_actions"])

    # A review needs a non-empty actor: 422 (ReviewError) and nothing changes.
    blank = client.post(f"/runs/{run_id}/approve", json={"actor": " "})
    assert blank.status_code == 422 and blank.json()["error"] == "ReviewError"

    approved = client.post(
        f"/runs/{run_id}/approve", json={"actor": "elrond", "comment": "the council agrees"}
    )
    assert approved.status_code == 200, approved.text

    done = poll(client, f"/runs/{run_id}", lambda b: b["status"] == "completed")
    assert done["result"] == "Frodo crossed Moria on 11 lembas"
    names = [s["name"] for s in done["step_runs"]]
    assert names[:5] == ["pack_lembas", "log", "sleep", "hide_at_prancing_pony", "council_vote"]
    assert names[-1] == "toss_ring"
    assert all(a["status"] == "completed" for s in done["step_runs"] for a in s["attempts"])
    audit = [(e["type"], e["actor"]) for e in done["audit_events"]]
    assert ("unblocked", "strider") in audit and ("approved", "elrond") in audit
    final = client.get(explain).json()
    assert final["reason"] == "completed"

    # Approving a finished run: 409 again.
    again = client.post(f"/runs/{run_id}/approve", json={"actor": "elrond"})
    assert again.status_code == 409 and again.json()["status"] == "completed"


def test_unknown_runs_and_workflows_are_404(client: TestClient) -> None:
    for path in (f"/runs/{uuid.uuid4()}", "/runs/not-a-uuid", f"/runs/{uuid.uuid4()}/explain"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"] == "RunNotFoundError"
    missing = client.post(f"/runs/{uuid.uuid4()}/unblock", json={})
    assert missing.status_code == 404
    unknown = client.post("/runs/second_breakfast", json={})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "UnknownWorkflowError"
    assert "second_breakfast" in unknown.json()["message"]


def test_a_bad_payload_is_422_with_the_payload_error_fields(client: TestClient) -> None:
    response = client.post("/runs/ring_errand", json={"bearer": ["not", "a", "name"], "x": 1})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "PayloadError"
    assert body["missing_fields"] == ["ring_id"]
    assert body["unknown_fields"] == ["x"]
    assert set(body["invalid_types"]) == {"bearer"}
    assert "invalid payload: missing ring_id" in body["message"]
    bad_trigger = client.post("/runs/ring_errand?trigger=teatime", json={"ring_id": "r"})
    assert bad_trigger.status_code == 422
    assert bad_trigger.json()["error"] == "UnknownTriggerError"
    # Nothing was stored by the refused starts.
    assert client.get(f"/runs/{uuid.uuid4()}").status_code == 404


def test_the_order_saga_rolls_back_over_http(client: TestClient) -> None:
    order = {"order_id": "o-9", "items": ["rope"], "amount_cents": 1500, "address": "Mordor"}
    first = client.post("/runs/fulfil_order", json=order, headers={"Idempotency-Key": "o-9"})
    assert first.status_code == 201, first.text
    retried = client.post("/runs/fulfil_order", json=order, headers={"Idempotency-Key": "o-9"})
    assert retried.json()["id"] == first.json()["id"]  # a retried request, the same run

    failed = poll(client, f"/runs/{first.json()['id']}", lambda b: b["status"] == "failed")
    assert failed["reason"] == "step_failed"
    by_name = {s["name"]: s for s in failed["step_runs"]}
    assert by_name["charge_card"]["compensation"]["output"] == "refunded 1500 cents of ch-o-9"
    assert by_name["reserve_inventory"]["compensation"]["output"] == "released res-o-9"
    compensated = [e["step"] for e in failed["audit_events"] if e["type"] == "compensated"]
    assert compensated == ["charge_card", "reserve_inventory"]


def test_the_console_is_mounted_behind_the_apps_own_login(pg_database_url: str) -> None:
    import base64
    import re

    app = create_app(
        postgres.sqlalchemy_url(pg_database_url),
        worker_options={"poll_interval": 0.2},
        operators={"ana": "correct horse"},
    )
    ana = "Basic " + base64.b64encode(b"ana:correct horse").decode()
    wrong = "Basic " + base64.b64encode(b"ana:guess").decode()
    with TestClient(app) as client:
        assert client.get("/ops/").status_code == 401
        assert client.get("/ops/", headers={"authorization": wrong}).status_code == 401
        started = client.post("/runs/ring_errand", json={"ring_id": "one-ring"}).json()
        run_id = started["id"]
        poll(client, f"/runs/{run_id}/explain", lambda b: b["reason"] == "paused_for_manual_action")
        page = client.get(f"/ops/runs/{run_id}", headers={"authorization": ana})
        assert page.status_code == 200
        assert "acting as <b data-actor>ana</b>" in page.text
        assert 'data-action="unblock_run"' in page.text
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None
        done = client.post(
            f"/ops/runs/{run_id}/actions/unblock_run",
            data={"csrf": token.group(1), "comment": "Strider is here"},
            headers={"authorization": ana},
            follow_redirects=False,
        )
        assert done.status_code == 303
        audit = client.get(f"/runs/{run_id}").json()["audit_events"]
        assert {"type": "unblocked", "actor": "ana"}.items() <= next(
            e for e in audit if e["type"] == "unblocked"
        ).items()
