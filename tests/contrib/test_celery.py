"""CeleryExecutor against a real Redis broker and a real Celery worker process."""

from __future__ import annotations

import os
import sys
import uuid
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
from tests.contrib import CELERY_BROKER_ENV, DATABASE_ENV, QUEUE_ENV, VISIBILITY_ENV, flows
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
            # The relayed job left the outbox (the worker may already have put the run's
            # next step there, relayed by its own process).
            assert job.id not in {j.id for j in relay.pending()}
            assert_parcel_completed(wait_for_run(mesh, run.id, worker), "rope")
            assert wait_until(lambda: not job_rows(contrib_database), 5)
    finally:
        down.close()
        up.close()


def test_celery_redelivery_never_overlaps_a_step_and_a_killed_worker_recovers(
    broker: str, contrib_database: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Celery delivers at least once: a duplicate delivery while a step runs must not
    start a second attempt beside it; once that worker is SIGKILLed, the message comes
    back after the visibility timeout (seconds here; 300 s by default, not Redis's hour)
    and the attempt is recorded lost and run again, once."""
    import psycopg

    from squidmesh.contrib.celery import TASK_NAME
    from squidmesh.contrib.outbox import payload

    queue = f"sqm-kill-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(contrib_database, autocommit=True) as conn:
        conn.execute(flows.LINGER_DDL)
    logs = Path(tmp_path_factory.mktemp("celery-kill"))
    argv = [
        sys.executable, "-m", "celery", "-A", "tests.contrib.celery_app", "worker",
        "--pool=threads", "--concurrency=2", "-Q", queue, "-n", f"{queue}-%i@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=INFO",
    ]  # fmt: skip
    env = {
        CELERY_BROKER_ENV: broker,
        DATABASE_ENV: contrib_database,
        QUEUE_ENV: queue,
        VISIBILITY_ENV: "6",
    }

    def starts(run_id: str) -> list[tuple[int, int]]:
        with psycopg.connect(contrib_database, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT attempt, pid FROM public.linger_log WHERE run_id = %s AND "
                "phase = 'start' ORDER BY at",
                (run_id,),
            ).fetchall()
        return [(int(a), int(p)) for a, p in rows]

    app = host_app(broker, broker_transport_options={"visibility_timeout": 6})
    first = WorkerProcess(argv, env, logs / "first.log")
    second: WorkerProcess | None = None
    try:
        executor = CeleryExecutor(app, queue=queue)
        with sm.Mesh(contrib_database, workflows=[flows.lingering], executor=executor) as mesh:
            run = mesh.start_run(flows.lingering, {"seconds": 8}, trigger="linger")
            rid = str(run.id)
            assert wait_until(lambda: bool(starts(rid)), 60), first.output()
            # A duplicate of the running attempt's job, as a broker may deliver it.
            duplicate = sm.Job("step", rid, 0, 1)
            app.send_task(TASK_NAME, args=[payload(duplicate)], queue=queue)
            assert wait_until(lambda: "may still be running" in first.output(), 30), first.output()
            assert starts(rid) == [(1, first.process.pid)]  # nothing ran beside it
            first.process.kill()  # SIGKILL: no ack, no goodbye
            first.process.wait(10)
            second = WorkerProcess(argv, env, logs / "second.log")
            done = wait_for_run(mesh, run.id, second, timeout=120)
            assert done.status == "completed", second.output()
            assert done.step_runs is not None
            tries = done.step_runs[0].attempts
            assert [(a.number, a.status) for a in tries] == [(1, "failed"), (2, "completed")]
            assert tries[0].error is not None
            assert tries[0].error["type"] == "squidmesh.errors.WorkerLost"
            assert starts(rid) == [(1, first.process.pid), (2, second.process.pid)]
    finally:
        if first.process.poll() is None:
            first.process.kill()
        first.stop()
        if second is not None:
            second.stop()
        app.close()


def test_the_executor_shortens_redelivery_unless_the_host_chose() -> None:
    from squidmesh.contrib.celery import REDELIVER_AFTER

    plain = host_app("redis://127.0.0.1:1/0")
    CeleryExecutor(plain)
    assert plain.conf.broker_transport_options == {
        "visibility_timeout": REDELIVER_AFTER,
        "unacked_restore_throttle": 1,
    }
    chosen = host_app("redis://127.0.0.1:1/0", broker_transport_options={"visibility_timeout": 7})
    CeleryExecutor(chosen)
    assert chosen.conf.broker_transport_options["visibility_timeout"] == 7
