"""Install squidmesh's tables from the host application's Alembic migrations.

Copy this file into your Alembic ``versions/`` folder (rename it, set ``down_revision``
to your current head) when your application owns its schema changes and you would
rather not let squidmesh migrate at start-up. It applies the SQL files shipped inside
the ``squidmesh`` package (``squidmesh/migrations/postgresql/``) with ``op.execute``,
substituting the ``{schema}`` placeholder, and records the version in squidmesh's own
bookkeeping table, so ``Mesh(engine=..., auto_migrate=False)`` finds the schema current
and a later ``mesh.migrate()`` has nothing left to do.

``upgrade_sql()`` returns the statements ``upgrade()`` executes; it needs neither Alembic
nor a database, so you can print or test it (tests/test_alembic_recipe.py runs it
against a fresh PostgreSQL database).
"""

from __future__ import annotations

import re

from squidmesh.storage import sql_migrate
from squidmesh.storage.tables import check_schema_name

# Alembic revision identifiers: adjust down_revision to your own head.
revision = "squidmesh_0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

#: The schema squidmesh's tables go into; pass the same name to ``Mesh(schema=...)``.
SQUIDMESH_SCHEMA = "squidmesh"

#: The squidmesh schema versions this revision installs (every file squidmesh ships).
VERSIONS = [m.version for m in sql_migrate.migrations("postgresql")]


def upgrade_sql(schema: str = SQUIDMESH_SCHEMA, *, after_version: int = 0) -> list[str]:
    """Every statement this revision's ``upgrade()`` executes, in order.

    It uses squidmesh's own reader and splitter, so it applies exactly what
    ``mesh.migrate()`` would. A later revision passes ``after_version`` (the version the
    previous revision installed) to apply only the files added since.
    """
    schema = check_schema_name(schema)
    statements = [f"CREATE SCHEMA IF NOT EXISTS {schema}"]
    statements += sql_migrate.statements(sql_migrate.bootstrap_sql("postgresql"), schema)
    for migration in sql_migrate.migrations("postgresql"):
        if migration.version <= after_version:
            continue
        statements += sql_migrate.statements(migration.sql, schema)
        statements.append(
            f"INSERT INTO {schema}.squidmesh_schema_version (version, applied_at) "
            f"VALUES ({migration.version}, now())"
        )
    return statements


def downgrade_sql(schema: str = SQUIDMESH_SCHEMA) -> list[str]:
    """Drop what ``upgrade_sql`` created (every run and its history goes with them)."""
    schema = check_schema_name(schema)
    texts = sql_migrate.bootstrap_sql("postgresql") + "".join(
        m.sql for m in sql_migrate.migrations("postgresql")
    )
    tables = re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?\{schema\}\.(\w+)", texts)
    functions = re.findall(r"CREATE (?:OR REPLACE )?FUNCTION \{schema\}\.(\w+)", texts)
    return [f"DROP FUNCTION IF EXISTS {schema}.{name}" for name in functions] + [
        f"DROP TABLE IF EXISTS {schema}.{table}" for table in reversed(tables)
    ]


def upgrade() -> None:
    from alembic import op

    for statement in upgrade_sql(SQUIDMESH_SCHEMA):
        op.execute(statement)


def downgrade() -> None:
    from alembic import op

    for statement in downgrade_sql(SQUIDMESH_SCHEMA):
        op.execute(statement)


if __name__ == "__main__":
    for statement in upgrade_sql():
        print(statement + ";\n")
