from __future__ import annotations

# ``transaction=True`` steps (SQLite and PostgreSQL; the memory store has no connection):
# the step's host writes, made through ``sm.step_context().connection`` (or ``.session()``),
# commit or roll back together with the recording of the step's outcome: exactly-once
# local effects, even when the step fails after writing or its job is delivered twice.
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import squidmesh as sm
from tests.runtime import flows
from tests.runtime.support import MeshFactory, assert_same, claim_all


@pytest.fixture
def host(sql_mesh_factory: MeshFactory) -> Iterator[sa.Engine]:
    """The host application's own engine on the test database, with its table."""
    engine = sql_mesh_factory.sqlalchemy_engine()
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {flows.HOST_TABLE} (key TEXT NOT NULL, attempt INT)"))
    yield engine
    engine.dispose()


def rows(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        result = conn.execute(sa.text(f"SELECT key, attempt FROM {flows.HOST_TABLE} ORDER BY 2"))
        return [tuple(row) for row in result]


@pytest.mark.parametrize("via", ["connection", "session"])
def test_host_write_and_completion_commit_together(
    sql_mesh_factory: MeshFactory, host: sa.Engine, via: str
) -> None:
    flows.FLAGS["via_session"] = via == "session"
    mesh = sql_mesh_factory([flows.tx_flow])
    run = mesh.start_run(flows.tx_flow)
    done = mesh.inspect_run(run.id, include_history=True)
    assert (done.status, done.result) == (sm.RunStatus.COMPLETED, 1)
    assert rows(host) == [("k1", 1)]
    assert done.step_runs is not None
    (step,) = done.step_runs
    assert (step.name, step.status, step.output) == ("insert_row", "completed", 1)
    assert [(a.number, a.status) for a in step.attempts] == [(1, "completed")]


def test_failure_after_the_write_rolls_it_back_and_retries(
    sql_mesh_factory: MeshFactory, host: sa.Engine
) -> None:
    flows.FLAGS["insert_failures"] = 1
    mesh = sql_mesh_factory([flows.tx_flow], executor="database")
    run = mesh.start_run(flows.tx_flow)
    assert mesh.drain(limit=2) == 2  # activation, then attempt 1 (writes, then raises)
    assert rows(host) == []  # rolled back with the attempt
    stuck = mesh.inspect_run(run.id, include_history=True)
    assert stuck.status is sm.RunStatus.RETRYING
    assert stuck.step_runs is not None
    (failed,) = stuck.step_runs[0].attempts
    assert (failed.number, failed.status) == (1, "failed")
    assert failed.error is not None and "failed after inserting" in failed.error["message"]
    assert mesh.explain_run(run.id).details["next_attempt_number"] == 2

    mesh.drain()
    done = mesh.inspect_run(run.id, include_history=True)
    assert (done.status, done.result) == (sm.RunStatus.COMPLETED, 2)
    assert rows(host) == [("k1", 2)]  # exactly one row: the successful attempt's
    assert done.step_runs is not None
    assert [a.status for a in done.step_runs[0].attempts] == ["failed", "completed"]
    assert flows.CALLS["insert_row"] == 2


def test_failing_for_good_leaves_no_host_rows(
    sql_mesh_factory: MeshFactory, host: sa.Engine
) -> None:
    flows.FLAGS["insert_failures"] = 99
    mesh = sql_mesh_factory([flows.tx_flow])
    run = mesh.start_run(flows.tx_flow)
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status is sm.RunStatus.FAILED
    assert mesh.explain_run(run.id).reason == "retry_exhausted"
    assert done.step_runs is not None
    assert [a.status for a in done.step_runs[0].attempts] == ["failed"] * 3
    assert rows(host) == []

    flows.FLAGS.update(insert_failures=0, insert_fatal=True)
    run = mesh.start_run(flows.tx_flow)
    assert mesh.explain_run(run.id).reason == "step_failed"
    assert rows(host) == []


def test_unstorable_result_rolls_the_write_back(
    sql_mesh_factory: MeshFactory, host: sa.Engine
) -> None:
    mesh = sql_mesh_factory([flows.tx_garbage_flow])
    run = mesh.start_run(flows.tx_garbage_flow)
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status is sm.RunStatus.FAILED
    assert done.error is not None and "NotJson" in done.error["message"]
    assert rows(host) == []  # the attempt failed: its host write must not survive


def test_redelivered_transactional_step_writes_once(
    sql_mesh_factory: MeshFactory, host: sa.Engine
) -> None:
    mesh = sql_mesh_factory([flows.tx_flow], executor="database")
    clock = sql_mesh_factory.clock
    run = mesh.start_run(flows.tx_flow)
    (activate,) = claim_all(mesh.store, clock())
    mesh.perform(activate)
    (step,) = claim_all(mesh.store, clock())
    assert step.kind == "step"
    mesh.perform(step)
    assert mesh.inspect_run(run.id).result == 1
    assert rows(host) == [("k1", 1)]
    snap = sql_mesh_factory.snapshot()

    mesh.perform(step)
    sql_mesh_factory([flows.tx_flow], executor="database").perform(step.to_json())
    assert rows(host) == [("k1", 1)]  # exactly once
    assert flows.CALLS["insert_row"] == 1
    assert_same(snap, sql_mesh_factory.snapshot())
