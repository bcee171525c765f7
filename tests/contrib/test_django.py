from __future__ import annotations

# squidmesh.contrib.django on PostgreSQL, in the example project (tests/support/
# django_project.py) with the test app tests.contrib.djangoapp:
# - `manage.py migrate` installs the schema; every squidmesh schema version has its
#   Django migration; the models need no new migration;
# - settings are checked; workflows are discovered from the apps' `workflows` modules;
# - transaction=True steps: ORM writes commit with the step's completion and roll back
#   with its failure (a failing step, a retried step), and after a worker process is
#   SIGKILLed inside the step's transaction (real worker processes);
# - the admin: list with filters, the run's page, approve/reject/cancel with the admin
#   user as the actor, view-only users cannot act.
import json
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

from squidmesh.storage.base import SCHEMA_VERSION
from tests.support import django_project as project

TIMEOUT = 60.0


def _mesh() -> Any:
    from squidmesh.contrib.django import get_mesh

    return get_mesh()


def _ledger(prefix: str) -> list[tuple[str, int]]:
    from tests.contrib.djangoapp.models import Ledger

    rows = Ledger.objects.filter(key__startswith=prefix).order_by("key")
    return [(row.key, row.attempt) for row in rows]


# --------------------------------------------------------------------------- schema


def test_every_squidmesh_schema_version_has_a_django_migration(django_project: str) -> None:
    from django.db.migrations.loader import MigrationLoader
    from django.db.migrations.operations.special import RunPython

    from squidmesh.storage import sql_migrate

    loader = MigrationLoader(None, ignore_no_migrations=True)
    ours = {name: m for (app, name), m in loader.disk_migrations.items() if app == "squidmesh"}
    for dialect in ("postgresql", "sqlite"):
        for sql in sql_migrate.migrations(dialect):
            name = sql.name.removesuffix(".sql")
            assert name in ours, f"squidmesh {sql.name} has no Django migration {name}.py"
            assert ours[name].squidmesh_version == sql.version
            assert isinstance(ours[name].operations[0], RunPython)
    versions = sorted(m.squidmesh_version for m in ours.values())
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_migrate_installed_the_schema_and_models_need_no_migration(django_project: str) -> None:
    from django.core.management import call_command
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT max(version) FROM squidmesh.squidmesh_schema_version")
        assert cursor.fetchone()[0] == SCHEMA_VERSION
        cursor.execute("SELECT name FROM django_migrations WHERE app = 'squidmesh' ORDER BY id")
        names = [r[0] for r in cursor.fetchall()]
    from squidmesh.storage import sql_migrate

    assert names == [m.name.removesuffix(".sql") for m in sql_migrate.migrations("postgresql")]
    mesh = _mesh()
    mesh.store.check_schema()
    assert mesh.migrate() == []  # `manage.py migrate` applied every file already
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)  # exits on changes


# --------------------------------------------------------------------------- settings


def test_settings_are_optional_and_workflows_are_discovered(django_project: str) -> None:
    from django.conf import settings

    assert settings.SQUIDMESH == {}
    mesh = _mesh()
    assert {"pantry_order", "failing_write", "retried_write", "crashing_write", "gated"} <= set(
        mesh.workflows
    )
    assert mesh.store.dialect == "postgresql" and mesh.store.schema == "squidmesh"


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_the_system_checks_name_what_is_wrong(django_project: str) -> None:
    from django.test import override_settings

    from squidmesh.contrib.django.apps import check_settings

    assert check_settings() == []
    with override_settings(SQUIDMESH={"SCHEMAS": "x"}):
        (error,) = check_settings()
        assert error.id == "squidmesh.E001" and "'SCHEMAS'" in error.msg
    # Only the settings are read (no connection is made): DATABASES may be overridden.
    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": "/tmp/x.db", "OPTIONS": {}}
    with override_settings(DATABASES={"default": sqlite}):
        (warning,) = check_settings()
        assert warning.id == "squidmesh.W001" and "IMMEDIATE" in warning.hint
    sqlite["OPTIONS"] = {"transaction_mode": "IMMEDIATE"}
    with override_settings(DATABASES={"default": sqlite}):
        assert check_settings() == []
    mysql = {"ENGINE": "django.db.backends.mysql", "NAME": "x"}
    with override_settings(DATABASES={"default": mysql}):
        (error,) = check_settings()
        assert error.id == "squidmesh.E002" and "PostgreSQL or SQLite" in error.msg


# --------------------------------------------------------------------------- exactly once


def _drain(mesh: Any) -> None:
    while mesh.drain():
        pass


def test_orm_writes_of_a_failing_step_roll_back_with_it(django_project: str) -> None:
    mesh = _mesh()
    run = mesh.start_run("failing_write")
    _drain(mesh)
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status == "completed" and done.result == "rolled back"
    step = done.step_runs[0]
    assert step.status == "failed" and "refused after writing" in step.error["message"]
    assert _ledger("failed") == []  # neither the row nor the one of the nested atomic()


def test_orm_writes_of_a_retried_step_commit_once_with_its_success(django_project: str) -> None:
    mesh = _mesh()
    run = mesh.start_run("retried_write")
    _drain(mesh)
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status == "completed" and done.result == 3
    assert [(a.number, a.status) for a in done.step_runs[0].attempts] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    assert _ledger("retried") == [("retried", 3)]  # one row: the attempt that succeeded


def test_reads_past_sqlalchemy_keep_their_times_whatever_djangos_time_zone(
    django_project: str,
) -> None:
    # Django loads timestamptz on its connection in its TIME_ZONE, naive when USE_TZ is
    # False. The statements squidmesh sends to psycopg directly (the locked read of a
    # run with its history, the queue-aware claim) must read times as every other
    # read does: the same instant, aware.
    from datetime import datetime, timedelta, timezone

    from django.db import connection
    from django.test import override_settings

    import squidmesh as sm
    from squidmesh.core.records import Job
    from tests.support import writes

    mesh = _mesh()
    run_id = str(mesh.start_run("failing_write").id)
    due = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    queue = sm.Queue(f"tz-{uuid.uuid4().hex[:8]}", concurrency=1)
    with mesh.store.transaction() as tx:
        data = {"queue": queue.name, "flow_key": None, "priority": 0}
        writes.insert_jobs(tx, [Job("step", run_id, 0, 1, run_at=due, data=data)])
    with override_settings(USE_TZ=False, TIME_ZONE="Asia/Tokyo"):
        with connection.cursor() as cursor:  # Django registers its loader for that zone
            cursor.execute("SELECT 1")
        with mesh.store.transaction() as tx:
            stored = tx.get_run(run_id)
            locked = tx.lock_run_with_history(run_id, None)
            claimed = tx.claim_jobs(
                now=due + timedelta(seconds=1),
                limit=1,
                worker="tz-check",
                lease_until=due + timedelta(minutes=1),
                queues={queue.name: queue},
            )
    assert stored is not None and locked is not None
    assert locked[0].created_at == stored.created_at
    assert locked[0].created_at.utcoffset() == timedelta(0)
    assert [job.run_at for job in claimed] == [due]
    with mesh.store.transaction() as tx:
        for job in claimed:
            writes.delete_job(tx, int(job.id or 0))
    _drain(mesh)


def test_a_call_inside_the_hosts_transaction_commits_on_its_own(django_project: str) -> None:
    from django.db import transaction

    mesh = _mesh()

    class HostRollback(Exception):
        pass

    with pytest.raises(HostRollback):
        with transaction.atomic():
            run = mesh.start_run("gated")
            raise HostRollback
    assert mesh.inspect_run(run.id).status == "pending"  # committed independently


def _wait(predicate: Any, what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _worker(django_project: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            project.manage("squidmesh_worker", "--poll-interval", "0.2", *extra),
            env=project.env(django_project),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_a_worker_killed_inside_the_steps_transaction_writes_nothing(
    django_project: str, tmp_path: Path
) -> None:
    mesh = _mesh()
    marker = tmp_path / "entered"
    log = tmp_path / "workers.log"
    run = mesh.start_run("crashing_write", {"marker": str(marker)})
    first = _worker(django_project, log, "--lease-seconds", "2")
    try:
        # The step wrote its row and is blocked inside its open transaction.
        _wait(lambda: marker.exists() and marker.read_text().count("\n") == 1, "the step")
        first.send_signal(signal.SIGKILL)
        first.wait(TIMEOUT)
        assert _ledger("crashed") == []  # the killed transaction left nothing
        assert mesh.inspect_run(run.id).status != "completed"
        second = _worker(django_project, log, "--lease-seconds", "2")
        try:
            _wait(lambda: mesh.inspect_run(run.id).status == "completed", "the run to end")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    entries = marker.read_text().splitlines()
    assert len(entries) == 2 and entries[0].split()[0] != entries[1].split()[0], entries
    assert len(_ledger("crashed")) == 1  # exactly once
    assert mesh.inspect_run(run.id).result == _ledger("crashed")[0][1]
    assert second.returncode == 0, log.read_text()


# --------------------------------------------------------------------------- admin


def _client(user: Any) -> Any:
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def _user(name: str, *, superuser: bool = False, perms: tuple[str, ...] = ()) -> Any:
    from django.contrib.auth.models import Permission, User

    if superuser:
        return User.objects.create_superuser(name, f"{name}@example.org", "pw")
    user = User.objects.create_user(name, f"{name}@example.org", "pw", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def _post(client: Any, url: str, data: dict[str, str]) -> Any:
    page = client.get(url)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert token is not None, page.content.decode()[:500]
    return client.post(url, {**data, "csrfmiddlewaretoken": token.group(1)})


def test_the_admin_lists_explains_and_acts_as_the_signed_in_user(django_project: str) -> None:
    mesh = _mesh()
    suffix = uuid.uuid4().hex[:6]
    ana = _client(_user(f"ana-{suffix}", superuser=True))
    runs = [mesh.start_run("gated") for _ in range(3)]
    _drain(mesh)
    base = "/admin/squidmesh/run/"

    listed = ana.get(base, {"status__exact": "paused", "workflow": "gated"})
    assert listed.status_code == 200
    for run in runs:
        assert str(run.id)[:8] in listed.content.decode()
    search = ana.get(base, {"q": str(runs[0].id)[:8]}).content.decode()
    assert str(runs[0].id)[:8] in search and str(runs[1].id)[:8] not in search

    page_url = f"{base}{runs[0].id}/change/"
    page = ana.get(page_url).content.decode()
    assert 'data-reason="paused_for_approval"' in page
    assert 'data-action="approve_run"' in page and 'data-action="reject_run"' in page
    assert 'data-step="sign_off"' in page and 'data-audit="run_started"' in page

    approved = _post(ana, page_url, {"action": "approve_run", "comment": "looks right"})
    assert approved.status_code == 302
    rejected = _post(ana, f"{base}{runs[1].id}/change/", {"action": "reject_run"})
    assert rejected.status_code == 302
    cancelled = _post(
        ana, f"{base}{runs[2].id}/change/", {"action": "cancel_run", "comment": "duplicate"}
    )
    assert cancelled.status_code == 302
    _drain(mesh)
    assert mesh.inspect_run(runs[0].id).result == "approved"
    assert mesh.inspect_run(runs[1].id).result == f"rejected by ana-{suffix}"
    assert mesh.inspect_run(runs[2].id).status == "cancelled"
    audit = {
        (e.type, e.actor, e.comment)
        for run in runs
        for e in mesh.inspect_run(run.id, include_history=True).audit_events
    }
    assert ("approved", f"ana-{suffix}", "looks right") in audit
    assert ("rejected", f"ana-{suffix}", None) in audit
    assert ("cancel_requested", f"ana-{suffix}", "duplicate") in audit

    # A refused action changes nothing and says why.
    again = _post(ana, page_url, {"action": "approve_run"})
    assert again.status_code == 302
    followed = ana.get(page_url).content.decode()
    assert "cannot approve_run" in followed or "not at an approval" in followed
    assert 'data-action="approve_run"' not in followed  # no longer offered

    # A user who may only view sees the run and no action; posting one is forbidden.
    viewer = _client(_user(f"vi-{suffix}", perms=("view_run",)))
    other = mesh.start_run("gated")
    _drain(mesh)
    seen = viewer.get(f"{base}{other.id}/change/")
    assert seen.status_code == 200 and 'data-action="approve_run"' not in seen.content.decode()
    forbidden = _post(viewer, f"{base}{other.id}/change/", {"action": "approve_run"})
    assert forbidden.status_code == 403
    assert mesh.inspect_run(other.id).status == "paused"
    assert viewer.get(f"{base}{uuid.uuid4()}/change/").status_code == 404


def test_the_squidmesh_command_is_the_cli_on_the_projects_mesh(django_project: str) -> None:
    mesh = _mesh()
    run = mesh.start_run("gated", idempotency_key=f"cli-{uuid.uuid4().hex[:6]}")
    listed = subprocess.run(
        project.manage("squidmesh", "runs", "list", "--workflow", "gated", "--json"),
        env=project.env(django_project),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert listed.returncode == 0, listed.stderr
    assert str(run.id) in {r["id"] for r in json.loads(listed.stdout)["runs"]}
    missing = subprocess.run(
        project.manage("squidmesh", "runs", "show", str(uuid.uuid4())),
        env=project.env(django_project),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert missing.returncode != 0 and "not found" in missing.stderr
