from __future__ import annotations

# The Django example project (examples/django_project) end to end:
# - on PostgreSQL, in this process through Django's test client, with the steps run by
#   two real `manage.py squidmesh_worker` processes: an order above 100.00 waits for a
#   manager, who approves it in the admin; the transaction=True step writes one Invoice;
# - on SQLite, as a user would from a fresh checkout: `manage.py check`, `migrate`,
#   then a run driven by `manage.py squidmesh` commands.
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

from tests.support import django_project as project

TIMEOUT = 60.0


def _wait(predicate: Any, what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_an_order_approved_in_the_admin_is_invoiced_once_by_worker_processes(
    django_project: str, tmp_path: Path
) -> None:
    from django.contrib.auth.models import User
    from django.test import Client

    from examples.django_project.pantry.models import Invoice

    suffix = uuid.uuid4().hex[:6]
    shopper = Client()
    shopper.force_login(User.objects.create_user(f"sam-{suffix}", password="pw"))
    manager = Client()
    manager.force_login(User.objects.create_superuser(f"rosie-{suffix}", "r@example.org", "pw"))

    log = tmp_path / "workers.log"
    workers = []
    with log.open("ab") as out:
        for _ in range(2):
            workers.append(
                subprocess.Popen(
                    project.manage("squidmesh_worker", "--poll-interval", "0.2"),
                    env=project.env(django_project),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        # A worker stopped while Django is still importing dies of the SIGTERM (its drain
        # handler is not installed yet): the work below can finish that fast, so both
        # workers must be up (they log "starting" once they handle SIGTERM) first.
        _wait(lambda: log.read_text().count(" starting (concurrency") == 2, "both workers")
        big = {"order_ref": f"big-{suffix}", "amount_cents": 250_00}
        placed = shopper.post("/orders/", json.dumps(big), content_type="application/json")
        assert placed.status_code == 201, placed.content
        run_id = placed.json()["id"]
        small = {"order_ref": f"small-{suffix}", "amount_cents": 5_00}
        small_id = shopper.post(
            "/orders/", json.dumps(small), content_type="application/json"
        ).json()["id"]
        bad = shopper.post("/orders/", json.dumps({"order_ref": "x"}), "application/json")
        assert bad.status_code == 422 and "amount_cents" in bad.json()["error"]

        def status(rid: str) -> dict[str, Any]:
            response = shopper.get(f"/orders/{rid}/")
            assert response.status_code == 200
            body: dict[str, Any] = response.json()
            return body

        _wait(lambda: status(run_id)["reason"] == "paused_for_approval", "the approval")
        _wait(lambda: status(small_id)["status"] == "completed", "the small order")
        assert Invoice.objects.filter(order_ref=f"big-{suffix}").count() == 0

        page = manager.get(f"/admin/squidmesh/run/{run_id}/change/")
        assert 'data-action="approve_run"' in page.content.decode()
        approved = manager.post(
            f"/admin/squidmesh/run/{run_id}/change/",
            {"action": "approve_run", "comment": "fine by me"},
        )
        assert approved.status_code == 302
        done = _wait(lambda: (s := status(run_id))["status"] == "completed" and s, "the invoice")
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(TIMEOUT)
    invoices = Invoice.objects.filter(order_ref=f"big-{suffix}")
    assert invoices.count() == 1
    invoice = invoices.get()
    assert done["result"] == f"invoice {invoice.pk}" and invoice.run_id == run_id
    assert Invoice.objects.filter(order_ref=f"small-{suffix}").count() == 1
    assert all(w.returncode == 0 for w in workers), log.read_text()
    assert "Traceback" not in log.read_text()


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd=project.PROJECT
    )
    assert done.returncode == 0, f"{args[2:]}: {done.stdout}\n{done.stderr}"
    return done


def test_the_project_on_sqlite_from_manage_py(tmp_path: Path) -> None:
    env = project.env(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    checked = _run(project.manage("check"), env)
    assert "no issues" in checked.stdout  # SQLite with transaction_mode IMMEDIATE: no W001
    migrated = _run(project.manage("migrate"), env)
    assert "Applying squidmesh.0001_initial... OK" in migrated.stdout
    started = _run(
        project.manage(
            "squidmesh",
            "runs",
            "start",
            "pantry_order",
            "--payload",
            '{"order_ref": "o-1", "amount_cents": 20000}',
            "--json",
        ),
        env,
    )
    run_id = json.loads(started.stdout)["id"]
    _run(project.manage("squidmesh", "drain"), env)
    _run(project.manage("squidmesh", "runs", "approve", run_id, "--actor", "rosie"), env)
    _run(project.manage("squidmesh", "drain"), env)
    shown = _run(project.manage("squidmesh", "runs", "show", run_id, "--json"), env)
    run = json.loads(shown.stdout)
    assert run["status"] == "completed" and run["result"] == "invoice 1"
    # The transaction=True step on SQLite too: failures leave nothing, retries write once.
    script = (
        "from squidmesh.contrib.django import get_mesh\n"
        "from tests.contrib.djangoapp.models import Ledger\n"
        "from examples.django_project.pantry.models import Invoice\n"
        "m = get_mesh()\n"
        "a = m.start_run('failing_write'); b = m.start_run('retried_write')\n"
        "while m.drain(): pass\n"
        "import json\n"
        "print(json.dumps({'failing': m.inspect_run(a.id).result,"
        " 'retried': m.inspect_run(b.id).result,"
        " 'ledger': sorted(Ledger.objects.values_list('key', 'attempt')),"
        " 'invoices': list(Invoice.objects.values_list('order_ref', flat=True))}))\n"
    )
    shell = _run(project.manage("shell", "-c", script), env)
    facts = json.loads(shell.stdout.strip().splitlines()[-1])
    assert facts == {
        "failing": "rolled back",
        "retried": 3,
        "ledger": [["retried", 3]],
        "invoices": ["o-1"],
    }
