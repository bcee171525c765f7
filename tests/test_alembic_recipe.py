from __future__ import annotations

# examples/alembic_recipe.py (docs/host_app_integration.md): the statements its Alembic
# upgrade() executes must build a schema that Mesh(engine=..., auto_migrate=False)
# accepts, on a fresh PostgreSQL database, with the default and with a custom schema.
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

import squidmesh as sm
from examples import alembic_recipe
from squidmesh.storage import sql_migrate
from squidmesh.storage.base import SCHEMA_VERSION
from tests.support.postgres import sqlalchemy_url


@sm.step
def count_rings(ring_ids: list[str]) -> int:
    return len(ring_ids)


@sm.workflow
def census():
    total = yield count_rings(["narya", "nenya", "vilya"])
    yield sm.log("counted", total=total)
    return total


@pytest.fixture
def engine(pg_database_url: str) -> Iterator[sa.Engine]:
    host_engine = sa.create_engine(sqlalchemy_url(pg_database_url))
    try:
        yield host_engine
    finally:
        host_engine.dispose()


def run_upgrade(engine: sa.Engine, schema: str) -> None:
    # What Alembic does: one transaction, op.execute(statement) == execute(text(statement)).
    with engine.begin() as conn:
        for statement in alembic_recipe.upgrade_sql(schema):
            conn.execute(sa.text(statement))


def versions(engine: sa.Engine, schema: str) -> list[int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(f"SELECT version FROM {schema}.squidmesh_schema_version ORDER BY version")
        )
        return [row[0] for row in rows]


def test_the_recipe_installs_every_migration_squidmesh_ships() -> None:
    assert alembic_recipe.VERSIONS == list(range(1, SCHEMA_VERSION + 1))
    statements = alembic_recipe.upgrade_sql("app_sm")
    for migration in sql_migrate.migrations("postgresql"):
        for statement in sql_migrate.statements(migration.sql, "app_sm"):
            assert statement in statements
    recorded = [s for s in statements if "squidmesh_schema_version (version" in s]
    assert len(recorded) == SCHEMA_VERSION


def test_a_later_revision_applies_only_newer_files() -> None:
    later = alembic_recipe.upgrade_sql("app_sm", after_version=1)
    first = sql_migrate.statements(sql_migrate.migrations("postgresql")[0].sql, "app_sm")
    assert not any(statement in later for statement in first)
    assert any("squidmesh_write_v1" in statement for statement in later)


def test_upgrade_sql_fills_in_the_schema() -> None:
    statements = alembic_recipe.upgrade_sql("app_sm")
    assert statements[0] == "CREATE SCHEMA IF NOT EXISTS app_sm"
    assert statements[-1].startswith("INSERT INTO app_sm.squidmesh_schema_version")
    assert not any("{schema}" in s for s in statements)
    assert any(s.startswith("CREATE TABLE app_sm.squidmesh_runs") for s in statements)
    with pytest.raises(ValueError, match="invalid schema name"):
        alembic_recipe.upgrade_sql("App; DROP TABLE users")


@pytest.mark.parametrize("schema", ["squidmesh", "host_workflows"])
def test_alembic_statements_give_a_schema_mesh_accepts(engine: sa.Engine, schema: str) -> None:
    # Before the migration, a Mesh that may not migrate refuses to work.
    with sm.Mesh(engine=engine, schema=schema, workflows=[census], auto_migrate=False) as mesh:
        with pytest.raises(sm.SchemaOutOfDateError, match="is at version 0"):
            mesh.start_run(census)

    run_upgrade(engine, schema)
    assert versions(engine, schema) == list(range(1, SCHEMA_VERSION + 1))

    with sm.Mesh(
        engine=engine,
        schema=schema,
        workflows=[census],
        executor=sm.InlineExecutor(),
        auto_migrate=False,
    ) as mesh:
        run = mesh.start_run(census)
        done = mesh.inspect_run(run.id, include_history=True)
        assert done.status is sm.RunStatus.COMPLETED
        assert done.result == 3
        assert done.step_runs is not None
        assert [s.name for s in done.step_runs] == ["count_rings", "log"]
        mesh.migrate()  # nothing left to do: the recipe recorded every version
    assert versions(engine, schema) == list(range(1, SCHEMA_VERSION + 1))

    # The tables really are in the requested schema, and the engine is still usable
    # (a Mesh on a host engine never disposes it).
    with engine.connect() as conn:
        count = conn.execute(sa.text(f"SELECT count(*) FROM {schema}.squidmesh_runs")).scalar()
    assert count == 1


def test_downgrade_sql_removes_the_tables(engine: sa.Engine) -> None:
    run_upgrade(engine, "squidmesh")
    with engine.begin() as conn:
        for statement in alembic_recipe.downgrade_sql("squidmesh"):
            conn.execute(sa.text(statement))
    with engine.connect() as conn:
        left = sa.inspect(conn).get_table_names(schema="squidmesh")
        functions = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'squidmesh'"
            )
        ).scalar()
    assert left == []
    assert functions == 0
    with sm.Mesh(engine=engine, workflows=[census], auto_migrate=False) as mesh:
        with pytest.raises(sm.SchemaOutOfDateError):
            mesh.start_run(census)
