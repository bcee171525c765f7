"""CeleryExecutor against a real Redis broker and a real Celery worker process."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("celery")

import celery
from kombu.exceptions import OperationalError

import squidmesh as sm
from squidmesh.contrib.celery import CeleryExecutor
from squidmesh.contrib.outbox import OUTBOX_LEASE
from squidmesh.runtime.worker import wait_until
from tests.contrib import CELERY_BROKER_ENV, DATABASE_ENV, QUEUE_ENV, flows
from tests.contrib.conftest import (
    WorkerProcess,
    assert_parcel_completed,
    closed_port,
    job_rows,
    wait_for_run,
)
from tests.support.services import require_service

pytestmark = pytest.mark.broker

REDIS_URL = os.environ.get("SQUIDMESH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def broker() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture(scope="module")
def worker(
    broker: str, contrib_database: str, queue: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    argv = [
        sys.executable, "-m", "celery", "-A", "tests.contrib.celery_app", "worker",
        "--pool=threads", "--concurrency=2", "-Q", queue, "-n", f"{queue}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=INFO",
    ]  # fmt: skip
    env = {
        CELERY_BROKER_ENV: broker,
        DATABASE_ENV: contrib_database,
        QUEUE_ENV: queue,
    }
    process = WorkerProcess(argv, env, Path(tmp_path_factory.mktemp("celery")) / "worker.log")
    try:
        yield process
    finally:
        process.stop()


def host_app(broker_url: str, **conf: object) -> celery.Celery:
    app = celery.Celery("squidmesh_host", broker=broker_url)
    app.conf.update(conf)
    return app


def test_a_run_completes_on_celery_workers(
    worker: WorkerProcess, contrib_database: str, queue: str
) -> None:
    app = host_app(REDIS_URL)
    executor = CeleryExecutor(app, queue=queue)
    try:
        with sm.Mesh(contrib_database, workflows=[flows.parcel], executor=executor) as mesh:
            run = mesh.start_run(flows.parcel, {"item": "lamp"}, trigger="send")
            assert_parcel_completed(wait_for_run(mesh, run.id, worker), "lamp")
            # every job went through the outbox and left it once the broker had it
            assert wait_until(lambda: not job_rows(contrib_database), 5), job_rows(contrib_database)
            assert executor.pending() == []
    finally:
        app.close()


def test_a_job_survives_a_broker_outage_in_the_outbox(
    worker: WorkerProcess, contrib_database: str, queue: str
) -> None:
    # The host's broker is down (nothing listens on its port) when the run starts.
    down = host_app(
        f"redis://127.0.0.1:{closed_port()}/0", broker_transport_options={"max_retries": 0}
    )
    up = host_app(REDIS_URL)
    try:
        stranded = CeleryExecutor(down, queue=queue)
        with sm.Mesh(contrib_database, workflows=[flows.parcel], executor=stranded) as mesh:
            run = mesh.start_run(flows.parcel, {"item": "rope"}, trigger="send")  # commits
            assert mesh.inspect_run(run.id).status == "pending"
            (job,) = stranded.pending()
            assert (job.kind, job.run_id) == ("activate", str(run.id))
            assert job_rows(contrib_database) == [
                ("activate", str(run.id), f"outbox:celery:{queue}", OUTBOX_LEASE)
            ]
            with pytest.raises(OperationalError):
                stranded.relay_pending()
            assert mesh.drain() == 0  # a database worker never claims an outbox row
            assert len(stranded.pending()) == 1

        # The broker is back: any process relaying this outbox delivers the job.
        relay = CeleryExecutor(up, queue=queue)
        with sm.Mesh(contrib_database, workflows=[flows.parcel], executor=relay) as mesh:
            assert relay.relay_pending() == 1
            assert relay.pending() == []
            assert_parcel_completed(wait_for_run(mesh, run.id, worker), "rope")
            assert wait_until(lambda: not job_rows(contrib_database), 5)
    finally:
        down.close()
        up.close()
