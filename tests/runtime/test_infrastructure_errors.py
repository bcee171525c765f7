from __future__ import annotations

# Failures of the database are not failures of the work (SPEC section 11):
# - a transaction=True step whose transaction dies (connection lost, serialization
#   failure) is rolled back and tried again, without counting against max_attempts;
# - a job that keeps failing for storage reasons of its own (here: a host trigger that
#   refuses a row) is parked with a visible reason instead of being redelivered forever.
from typing import Any

import pytest
import sqlalchemy as sa

import squidmesh as sm
from squidmesh.runtime.clock import local_now
from tests.runtime.support import MeshFactory
from tests.support.waiting import wait_for

STATE: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    STATE.clear()
    STATE.update(calls=0)


@sm.step(transaction=True)  # max_attempts=1: a counted failure would fail the run
def writes_then_loses_its_connection(key: str) -> str:
    ctx = sm.step_context()
    STATE["calls"] += 1
    assert ctx.connection is not None
    ctx.connection.execute(sa.text("CREATE TABLE IF NOT EXISTS public.ledger (k text)"))
    ctx.connection.execute(sa.text("INSERT INTO public.ledger VALUES (:k)"), {"k": key})
    if STATE["calls"] == 1:
        # The server ends this very session: what the driver sees is a lost connection.
        ctx.connection.execute(sa.text("SELECT pg_terminate_backend(pg_backend_pid())"))
    if STATE["calls"] == 2:
        ctx.connection.execute(
            sa.text("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
        )
    return f"booked on call {STATE['calls']}"


@sm.workflow
def booking() -> Any:
    return (yield writes_then_loses_its_connection("k-1"))


def test_infrastructure_errors_in_a_transaction_step_do_not_count_as_attempts(
    pg_mesh_factory: MeshFactory,
) -> None:
    mesh = pg_mesh_factory([booking], executor="database")
    run = mesh.start_run(booking)
    mesh.drain()  # activation; call 1 loses its connection and is put back for later
    for _ in range(2):
        pg_mesh_factory.clock.advance(60)
        mesh.drain()  # call 2 hits a serialization failure; call 3 goes through
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status == "completed", done.error
    assert done.result == "booked on call 3"
    assert done.step_runs is not None
    assert [(a.number, a.status) for a in done.step_runs[0].attempts] == [(1, "completed")]
    engine = pg_mesh_factory.sqlalchemy_engine()
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT k FROM public.ledger")).all()
    finally:
        engine.dispose()
    assert rows == [("k-1",)]  # the rolled-back tries left nothing behind


@sm.step
def refused() -> str:
    STATE["calls"] += 1
    return "fine"


@sm.workflow
def refusing() -> Any:
    return (yield refused())


def _host_rule(factory: MeshFactory, condition: str) -> None:
    """The host's own trigger, unknown to squidmesh, refusing some history rows."""
    engine = factory.sqlalchemy_engine()
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE FUNCTION public.no_refused() RETURNS trigger LANGUAGE plpgsql AS "
                    f"$$ BEGIN IF NEW.name = 'refused' AND {condition} THEN "
                    "RAISE EXCEPTION 'the host refuses this row'; END IF; RETURN NEW; END $$"
                )
            )
            conn.execute(
                sa.text(
                    "CREATE TRIGGER no_refused BEFORE UPDATE ON squidmesh.squidmesh_entries "
                    "FOR EACH ROW EXECUTE FUNCTION public.no_refused()"
                )
            )
    finally:
        engine.dispose()


def test_an_outcome_the_database_refuses_fails_the_step_for_that_reason(
    pg_mesh_factory: MeshFactory,
) -> None:
    _host_rule(pg_mesh_factory, "NEW.status = 'completed'")
    mesh = pg_mesh_factory([refusing], executor="database")
    run = mesh.start_run(refusing)
    mesh.drain()
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status == "failed"
    assert done.error is not None
    assert done.error["type"] == "squidmesh.errors.UnstorableValueError"  # not WorkerLost
    assert "the host refuses this row" in done.error["message"]
    assert f"step refused (run {run.id}, seq 0)" in done.error["message"]
    assert STATE["calls"] == 1  # not retried: the same outcome would be refused again
    assert done.step_runs is not None
    assert [a.status for a in done.step_runs[0].attempts] == ["failed"]


def test_a_job_the_database_keeps_refusing_is_parked_and_explained(
    pg_mesh_factory: MeshFactory,
) -> None:
    # Nothing about the step can be recorded once it started: not its result, not its
    # failure, not its loss. Only parking stops the job from coming back forever.
    _host_rule(pg_mesh_factory, "OLD.status = 'running'")
    # A real clock: the worker gives the failing job back a little later each time.
    mesh = pg_mesh_factory([refusing], executor="database", clock=local_now)
    run = mesh.start_run(refusing)
    worker = mesh.worker(concurrency=1, poll_interval=0.05)
    try:
        why = wait_for(
            lambda: (w := mesh.explain_run(run.id)).details.get("parked_jobs") and w,
            60,
            "the job to be parked",
        )
    finally:
        worker.stop()
    (parked,) = why.details["parked_jobs"]
    assert parked["kind"] == "step" and parked["failures"] == 5
    assert "the host refuses this row" in parked["last_error"]
    assert why.status == "running"
    with mesh.store.transaction() as tx:
        (row,) = tx.load_jobs(str(run.id))  # still there, visible, never claimed again
    assert (row.job.id, row.worker, row.failures) == (parked["id"], "parked", 5)
