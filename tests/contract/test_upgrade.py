"""Upgrading a database that already holds runs: every migration keeps every row.

A database is built at schema version 2 (the migrations of the previous release only),
filled with rows through SQL, then migrated to the current version by ``store.migrate()``.
Everything must read back through the store as it was written; SQLite's rebuilt tables
keep their foreign keys and their AUTOINCREMENT high-water marks (a stale worker deleting
job N must never hit a new job that reused id N).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from squidmesh.core.records import Job
from squidmesh.storage import sql_migrate
from squidmesh.storage import tables as t
from squidmesh.storage.base import SCHEMA_VERSION
from squidmesh.storage.sql import SqlStore, create_engine
from tests.contract.conftest import SQL_KINDS, pg_engine
from tests.support import postgres, writes

RUN = "8c1f3a52-0a0b-4c1e-9d0e-2f4b5a6c7d8e"
T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(params=SQL_KINDS)
def old_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SqlStore]:
    """A store at schema version 2, as the previous release left it."""
    created = None
    if request.param == "sqlite":
        store = SqlStore(create_engine(f"sqlite:///{tmp_path / 'old.db'}"), owns_engine=True)
    else:
        created = postgres.create_database(request.getfixturevalue("pg_server_url"), "upgrade")
        store = SqlStore(pg_engine(created), owns_engine=True)
    previous = sql_migrate.migrations(store.dialect)[:2]
    with monkeypatch.context() as patch:
        patch.setattr(sql_migrate, "migrations", lambda dialect: previous)
        store.migrate()
    try:
        yield store
    finally:
        store.close()
        if created is not None:
            postgres.drop_database(created)


def _fill(store: SqlStore) -> None:
    """Rows of every table, written as version 2 stored them."""
    prefix = "squidmesh." if store.dialect == "postgresql" else ""
    doc = json.dumps
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"INSERT INTO {prefix}squidmesh_runs (id, workflow, trigger, status, payload, "
                "result, current_steps, waiting_on, version, created_at, updated_at) VALUES "
                "(:id, 'wf', 'manual', 'running', :payload, NULL, :steps, :waiting, 3, :t, :t)"
            ),
            {
                "id": RUN,
                "payload": doc({"order": "o-1", "total": 12.5}),
                "steps": doc(["charge"]),
                "waiting": doc([1]),
                "t": T0,
            },
        )
        conn.execute(
            sa.text(
                f"INSERT INTO {prefix}squidmesh_entries (run_id, seq, kind, name, status, input, "
                "result, attempts, meta) VALUES "
                "(:run, 0, 'step', 'reserve', 'completed', :input, :result, 1, :meta), "
                "(:run, 1, 'step', 'charge', 'running', :input, NULL, 1, :meta)"
            ),
            {
                "run": RUN,
                "input": doc({"x": 1}),
                "result": doc({"held": [1, 2]}),
                "meta": doc({"ref": "app:reserve"}),
            },
        )
        conn.execute(
            sa.text(
                f"INSERT INTO {prefix}squidmesh_attempts (run_id, seq, number, status, error) "
                "VALUES (:run, 0, 1, 'completed', NULL), (:run, 1, 1, 'running', NULL)"
            ),
            {"run": RUN},
        )
        for kind in ("run_started", "paused", "unblocked"):
            conn.execute(
                sa.text(
                    f"INSERT INTO {prefix}squidmesh_audit_events (run_id, type, metadata) "
                    "VALUES (:run, :type, :meta)"
                ),
                {"run": RUN, "type": kind, "meta": doc({"k": kind})},
            )
        conn.execute(
            sa.text(
                f"INSERT INTO {prefix}squidmesh_events (run_id, name, data, created_at) "
                "VALUES (:run, 'parcel', :data, :t)"
            ),
            {"run": RUN, "data": doc({"id": 9}), "t": T0},
        )
        for seq in (1, 2, 3):
            conn.execute(
                sa.text(
                    f"INSERT INTO {prefix}squidmesh_jobs (kind, run_id, seq, attempt, run_at, "
                    "created_at) VALUES ('step', :run, :seq, 1, :t, :t)"
                ),
                {"run": RUN, "seq": seq, "t": T0},
            )
        # The newest job is gone already: its id must never be handed out again.
        conn.execute(sa.text(f"DELETE FROM {prefix}squidmesh_jobs WHERE seq = 3"))


def test_upgrading_keeps_every_row_and_every_id(old_store: SqlStore) -> None:
    _fill(old_store)
    old_store.migrate()

    with old_store.transaction() as tx:
        run = tx.get_run(RUN)
        assert run is not None
        assert (run.status, run.version, run.payload) == (
            "running",
            3,
            {"order": "o-1", "total": 12.5},
        )
        assert (run.current_steps, run.waiting_on) == (["charge"], [1])
        entries = tx.load_entries(RUN)
        assert [(e.seq, e.name, e.status, e.result) for e in entries] == [
            (0, "reserve", "completed", {"held": [1, 2]}),
            (1, "charge", "running", None),
        ]
        attempts = tx.load_attempts(RUN)
        assert [(a.number, a.status, a.worker) for a in attempts[1]] == [(1, "running", None)]
        assert [(e.type, e.metadata) for e in tx.load_audit(RUN)] == [
            ("run_started", {"k": "run_started"}),
            ("paused", {"k": "paused"}),
            ("unblocked", {"k": "unblocked"}),
        ]
        assert [(e.name, e.data) for e in tx.load_events(RUN)] == [("parcel", {"id": 9})]
        queued = tx.load_jobs(RUN)
        assert [(q.job.seq, q.failures) for q in queued] == [(1, 0), (2, 0)]
        fresh = writes.insert_jobs(tx, [Job("activate", RUN, run_at=T0)])
    assert fresh[0].id == 4  # 3 was used before the upgrade

    with old_store.engine.connect() as conn:
        version = conn.execute(sa.select(sa.func.max(t.schema_version.c.version)))
        assert version.scalar() == SCHEMA_VERSION
    # The run and its rows go together, and SQLite's rebuilt tables keep their foreign keys.
    with old_store.transaction() as tx:
        assert tx.delete_runs([RUN]) == 1
        assert tx.load_entries(RUN) == [] and tx.load_attempts(RUN) == {}
    if old_store.dialect == "sqlite":
        with old_store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
