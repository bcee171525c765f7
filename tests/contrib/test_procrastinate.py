"""ProcrastinateExecutor against a real Procrastinate worker process on PostgreSQL."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

pytest.importorskip("procrastinate")

import procrastinate

import squidmesh as sm
from squidmesh.contrib.outbox import OUTBOX_LEASE
from squidmesh.contrib.procrastinate import ProcrastinateExecutor
from squidmesh.runtime.worker import wait_until
from tests.contrib import DATABASE_ENV, QUEUE_ENV, flows
from tests.contrib.conftest import (
    WorkerProcess,
    assert_parcel_completed,
    closed_port,
    job_rows,
    wait_for_run,
)


@pytest.fixture(scope="module")
def database(contrib_database: str) -> str:
    """squidmesh's database, with Procrastinate's schema applied next to squidmesh's."""
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=contrib_database))
    with app.open():
        app.schema_manager.apply_schema()
    return contrib_database


@pytest.fixture(scope="module")
def worker(
    database: str, queue: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    argv = [
        sys.executable, "-m", "procrastinate", "--verbose",
        "--app=tests.contrib.procrastinate_app.app", "worker",
        "--queues", queue, "--concurrency", "2", "--fetch-job-polling-interval", "0.2",
    ]  # fmt: skip
    env = {DATABASE_ENV: database, QUEUE_ENV: queue}
    path = Path(tmp_path_factory.mktemp("procrastinate")) / "worker.log"
    process = WorkerProcess(argv, env, path)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def host_app(database: str) -> Iterator[procrastinate.App]:
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=database))
    with app.open():
        yield app


def procrastinate_jobs(database: str, queue: str) -> list[tuple[str, bool]]:
    """(status, deferred with a schedule) of the Procrastinate jobs on ``queue``."""
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT status::text, scheduled_at IS NOT NULL FROM procrastinate_jobs "
            "WHERE queue_name = %s ORDER BY id",
            (queue,),
        )
        return [(str(status), bool(scheduled)) for status, scheduled in rows]


def test_a_run_completes_on_procrastinate_workers(
    worker: WorkerProcess, host_app: procrastinate.App, database: str, queue: str
) -> None:
    before = len(procrastinate_jobs(database, queue))
    executor = ProcrastinateExecutor(host_app, queue=queue)
    with sm.Mesh(database, workflows=[flows.parcel], executor=executor) as mesh:
        run = mesh.start_run(flows.parcel, {"item": "lamp"}, trigger="send")
        assert_parcel_completed(wait_for_run(mesh, run.id, worker), "lamp")
        assert wait_until(lambda: not job_rows(database), 5), job_rows(database)
        assert executor.pending() == []
    jobs = procrastinate_jobs(database, queue)[before:]
    # activate, pack, the sleep's timer, charge x2, ship, the end: all succeeded, and
    # the sleep and the retry backoff were deferred with schedule_at
    assert {status for status, _ in jobs} == {"succeeded"}, jobs
    assert sum(scheduled for _, scheduled in jobs) >= 2, jobs


def test_a_job_survives_a_procrastinate_outage_in_the_outbox(
    worker: WorkerProcess, host_app: procrastinate.App, database: str, queue: str
) -> None:
    # The host's Procrastinate database is unreachable when the run starts.
    down = procrastinate.App(
        connector=procrastinate.SyncPsycopgConnector(
            conninfo=f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere",
            min_size=0,
            max_size=1,
            timeout=1,
        )
    )
    with down.open():
        stranded = ProcrastinateExecutor(down, queue=queue)
        with sm.Mesh(database, workflows=[flows.parcel], executor=stranded) as mesh:
            run = mesh.start_run(flows.parcel, {"item": "rope"}, trigger="send")  # commits
            assert mesh.inspect_run(run.id).status == "pending"
            (job,) = stranded.pending()
            assert (job.kind, job.run_id) == ("activate", str(run.id))
            assert job_rows(database) == [
                ("activate", str(run.id), f"outbox:procrastinate:{queue}", OUTBOX_LEASE)
            ]
            with pytest.raises(procrastinate.exceptions.ConnectorException):
                stranded.relay_pending()
            assert mesh.drain() == 0  # a database worker never claims an outbox row
            assert len(stranded.pending()) == 1

    # Procrastinate is reachable again: any process relaying this outbox defers the job.
    relay = ProcrastinateExecutor(host_app, queue=queue)
    with sm.Mesh(database, workflows=[flows.parcel], executor=relay) as mesh:
        assert relay.relay_pending() == 1
        # The relayed job left the outbox (the worker may already have put the run's
        # next step there, relayed by its own process).
        assert job.id not in {j.id for j in relay.pending()}
        assert_parcel_completed(wait_for_run(mesh, run.id, worker), "rope")
        assert wait_until(lambda: not job_rows(database), 5)
