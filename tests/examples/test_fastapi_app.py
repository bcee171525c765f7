from __future__ import annotations

# The FastAPI example (examples/fastapi_app) against a fresh PostgreSQL database: through
# ``fastapi.testclient.TestClient`` (the app's lifespan migrates and starts a worker
# thread, which runs every step; the test only talks HTTP), and once as a real uvicorn
# process started with the README's command.
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import squidmesh as sm

pytest.importorskip("fastapi")

with warnings.catch_warnings():
    # Recent Starlette prefers the "httpx2" package for its TestClient and warns (an
    # error under this suite's filterwarnings) when it falls back to httpx.
    warnings.filterwarnings("ignore", message=r".*httpx2")
    from fastapi.testclient import TestClient

from examples.fastapi_app import create_app
from tests.support import postgres

TIMEOUT = 30.0
REPO = Path(__file__).resolve().parents[2]
USERS = {"ana": "correct horse", "bo": "battery staple"}
ANA = ("ana", USERS["ana"])
BO = ("bo", USERS["bo"])

# Test-only workflows, registered on the example's Mesh: one waits for an event, one
# has a bug until the test "deploys the fix" (a suspended run to resume).
FIXED = {"fixed": False}


@sm.workflow
def parcel() -> Any:
    delivered = yield from sm.wait_for_event("delivered")
    return f"signed by {delivered}"


@sm.workflow
def flaky() -> Any:
    if not FIXED["fixed"]:
        raise RuntimeError("a bug in the workflow")
    yield sm.log("fixed")
    return "fixed"


def _app(url: str, **kwargs: Any) -> Any:
    FIXED["fixed"] = False
    app = create_app(
        postgres.sqlalchemy_url(url),
        users=USERS,
        worker_options={"poll_interval": 0.2, "concurrency": 2},
        **kwargs,
    )
    app.state.mesh.register(parcel)
    app.state.mesh.register(flaky)
    return app


@pytest.fixture
def client(pg_database_url: str) -> Iterator[TestClient]:
    app = _app(pg_database_url)
    with TestClient(app) as test_client:  # runs the lifespan: migrate, start the worker
        test_client.auth = ANA
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
    refused = client.post(f"/runs/{run_id}/approve")
    assert refused.status_code == 409
    assert refused.json()["error"] == "InvalidTransitionError"
    assert refused.json()["status"] == "paused"
    assert refused.json()["action"] == "approve_run"
    assert "not at an approval" in refused.json()["message"]

    unblocked = client.post(f"/runs/{run_id}/unblock", json={"comment": "here"}, auth=BO)
    assert unblocked.status_code == 200, unblocked.text

    council = poll(client, explain, lambda b: b["reason"] == "paused_for_approval")
    assert council["step"] == "council_vote"
    assert {"approve_run", "reject_run"} <= set(council["next_actions"])

    # Without credentials, or with wrong ones, nothing happens: 401.
    assert client.post(f"/runs/{run_id}/approve", auth=("ana", "guess")).status_code == 401
    anonymous = httpx.Client(transport=client._transport, base_url=str(client.base_url))
    assert anonymous.post(f"/runs/{run_id}/approve").status_code == 401

    # The actor is the signed-in user; an "actor" in the body changes nothing.
    approved = client.post(
        f"/runs/{run_id}/approve", json={"actor": "mallory", "comment": "the council agrees"}
    )
    assert approved.status_code == 200, approved.text

    done = poll(client, f"/runs/{run_id}", lambda b: b["status"] == "completed")
    assert done["result"] == "Frodo crossed Moria on 11 lembas"
    names = [s["name"] for s in done["step_runs"]]
    assert names[:5] == ["pack_lembas", "log", "sleep", "hide_at_prancing_pony", "council_vote"]
    assert names[-1] == "toss_ring"
    assert all(a["status"] == "completed" for s in done["step_runs"] for a in s["attempts"])
    audit = [(e["type"], e["actor"]) for e in done["audit_events"]]
    assert ("unblocked", "bo") in audit and ("approved", "ana") in audit
    assert ("approved", "mallory") not in audit
    assert ("run_started", "ana") in audit
    final = client.get(explain).json()
    assert final["reason"] == "completed"

    # Approving a finished run: 409 again.
    again = client.post(f"/runs/{run_id}/approve")
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
    app = _app(pg_database_url)
    ana = "Basic " + base64.b64encode(b"ana:correct horse").decode()
    wrong = "Basic " + base64.b64encode(b"ana:guess").decode()
    with TestClient(app) as client:
        assert client.get("/ops/").status_code == 401
        assert client.get("/ops/", headers={"authorization": wrong}).status_code == 401
        started = client.post("/runs/ring_errand", json={"ring_id": "one-ring"}, auth=ANA).json()
        run_id = started["id"]
        client.auth = ANA
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


def test_health_needs_no_login_and_every_runs_endpoint_does(client: TestClient) -> None:
    anonymous = httpx.Client(transport=client._transport, base_url=str(client.base_url))
    health = anonymous.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "database": "ok"}
    some = str(uuid.uuid4())
    for method, path in [
        ("get", "/runs"),
        ("post", "/runs/ring_errand"),
        ("get", f"/runs/{some}"),
        ("get", f"/runs/{some}/explain"),
        ("post", f"/runs/{some}/approve"),
        ("post", f"/runs/{some}/reject"),
        ("post", f"/runs/{some}/unblock"),
        ("post", f"/runs/{some}/events/ping"),
        ("post", f"/runs/{some}/cancel"),
        ("post", f"/runs/{some}/resume"),
    ]:
        response = anonymous.request(method, path)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"].startswith("Basic")
    assert client.get("/runs").json() == {"runs": [], "next": None}  # nothing was started


def test_list_runs_pages_newest_first_and_filters(client: TestClient) -> None:
    ids = []
    for n in range(3):
        order = {"order_id": f"o-{n}", "items": ["rope"], "amount_cents": 100 + n}
        ids.append(client.post("/runs/fulfil_order", json=order).json()["id"])
    first = client.get("/runs", params={"limit": 2}).json()
    assert [r["id"] for r in first["runs"]] == [ids[2], ids[1]]
    assert first["next"] == ids[1]
    second = client.get("/runs", params={"limit": 2, "before": first["next"]}).json()
    assert [r["id"] for r in second["runs"]] == [ids[0]] and second["next"] is None
    poll(client, f"/runs/{ids[0]}", lambda b: b["status"] == "completed")
    done = client.get("/runs", params={"status": "completed", "workflow": "fulfil_order"})
    assert ids[0] in [r["id"] for r in done.json()["runs"]]
    bad = client.get("/runs", params={"status": "finished"})
    assert bad.status_code == 422 and bad.json()["error"] == "InvalidArgumentError"
    assert "unknown run status" in bad.json()["message"]


def test_cancel_send_event_and_resume_record_the_signed_in_user(client: TestClient) -> None:
    # cancel: a run paused at the Prancing Pony
    errand = client.post("/runs/ring_errand", json={"ring_id": "r"}).json()["id"]
    poll(client, f"/runs/{errand}/explain", lambda b: b["reason"] == "paused_for_manual_action")
    cancelled = client.post(f"/runs/{errand}/cancel", json={"reason": "no ring"}, auth=BO)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/runs/{errand}/cancel")
    assert again.status_code == 409 and again.json()["action"] == "cancel_run"
    audit = client.get(f"/runs/{errand}").json()["audit_events"]
    requested = next(e for e in audit if e["type"] == "cancel_requested")
    assert requested["actor"] == "bo" and requested["comment"] == "no ring"

    # send an event: delivered to the run waiting for it
    waiting = client.post("/runs/parcel").json()["id"]
    poll(client, f"/runs/{waiting}/explain", lambda b: b["reason"] == "waiting_for_event")
    sent = client.post(f"/runs/{waiting}/events/delivered", json={"data": "Sam"})
    assert sent.status_code == 200, sent.text
    done = poll(client, f"/runs/{waiting}", lambda b: b["status"] == "completed")
    assert done["result"] == "signed by Sam"
    assert ("event_received", "ana") in [(e["type"], e["actor"]) for e in done["audit_events"]]

    # resume: a run suspended by a bug, resumed once the fix is "deployed"
    broken = client.post("/runs/flaky").json()["id"]
    suspended = poll(client, f"/runs/{broken}", lambda b: b["status"] == "suspended")
    assert suspended["error"]["message"].endswith("a bug in the workflow")
    assert client.post(f"/runs/{errand}/resume").status_code == 409  # not suspended
    FIXED["fixed"] = True
    resumed = client.post(f"/runs/{broken}/resume", auth=BO)
    assert resumed.status_code == 200, resumed.text
    finished = poll(client, f"/runs/{broken}", lambda b: b["status"] == "completed")
    assert ("resumed", "bo") in [(e["type"], e["actor"]) for e in finished["audit_events"]]


def test_responses_carry_no_traceback_and_no_server_path(pg_database_url: str) -> None:
    app = _app(pg_database_url)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.auth = ANA
        broken = client.post("/runs/flaky").json()["id"]
        poll(client, f"/runs/{broken}", lambda b: b["status"] == "suspended")
        # The traceback is recorded (operators see it in the console and the CLI) ...
        recorded = app.state.mesh.inspect_run(broken).error
        assert "Traceback" in recorded["traceback"] and str(REPO) in recorded["traceback"]
        # ... but no response shows it.
        for path in (f"/runs/{broken}", f"/runs/{broken}/explain", "/runs"):
            text = client.get(path).text
            assert "Traceback" not in text and "traceback" not in text, path
            assert str(REPO) not in text and ".py" not in text, path

        # An unexpected exception: a bare 500, logged on the server, nothing else.
        async def boom(*args: Any, **kwargs: Any) -> Any:
            raise ZeroDivisionError(f"in {__file__}")

        app.state.mesh.explain_run_async = boom
        response = client.get(f"/runs/{broken}/explain")
        assert response.status_code == 500
        assert response.json() == {"error": "InternalError", "message": "internal error"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_readme_command_serves_the_app_with_uvicorn(pg_database_url: str) -> None:
    readme = (REPO / "examples" / "fastapi_app" / "README.md").read_text(encoding="utf-8")
    command = "uvicorn --factory examples.fastapi_app:app_from_env"
    assert command in readme
    port = _free_port()
    env = {
        **os.environ,
        "SQUIDMESH_DATABASE_URL": postgres.sqlalchemy_url(pg_database_url),
        "SQUIDMESH_EXAMPLE_USERS": "ana:correct horse",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", *command.split(), "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.communicate()[0]
            assert time.monotonic() < deadline, "uvicorn did not serve /health"
            time.sleep(0.1)
        with httpx.Client(base_url=base, auth=ANA, timeout=10) as http:
            order = {"order_id": "o-1", "items": ["rope"], "amount_cents": 100, "address": "Mordor"}
            started = http.post("/runs/fulfil_order", json=order)
            assert started.status_code == 201, started.text
            run_id = started.json()["id"]
            while http.get(f"/runs/{run_id}").json()["status"] != "failed":
                assert time.monotonic() < deadline + TIMEOUT, "the worker thread did not run it"
                time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=TIMEOUT)
    # A graceful stop: the lifespan closed the Mesh (worker stopped), then uvicorn ended
    # the process the way the signal asked (recent versions re-raise it: -SIGTERM).
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output, output
    assert "Application shutdown complete" in output and "Finished server process" in output
