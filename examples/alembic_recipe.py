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
from importlib import resources

from squidmesh.storage.tables import check_schema_name

# Alembic revision identifiers: adjust down_revision to your own head.
revision = "squidmesh_0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

#: The schema squidmesh's tables go into; pass the same name to ``Mesh(schema=...)``.
SQUIDMESH_SCHEMA = "squidmesh"

#: The squidmesh schema version this revision installs (``0001_initial.sql``).
VERSION = 1
MIGRATION_FILE = "0001_initial.sql"


def read_migration(name: str) -> str:
    """The text of a packaged PostgreSQL migration file, e.g. ``0001_initial.sql``."""
    folder = resources.files("squidmesh").joinpath("migrations").joinpath("postgresql")
    return folder.joinpath(name).read_text(encoding="utf-8")


def split_statements(sql: str, schema: str) -> list[str]:
    """The statements of a migration file with ``{schema}`` replaced.

    squidmesh's files end every statement with ``;`` at the end of a line and use no
    other ``;``; lines starting with ``--`` are comments.
    """
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        if line.lstrip().startswith("--"):
            continue
        current.append(line.replace("{schema}", schema))
        if line.rstrip().endswith(";"):
            statement = "\n".join(current).strip().rstrip(";").strip()
            if statement:
                statements.append(statement)
            current = []
    if "\n".join(current).strip():
        raise ValueError("migration file ends with a statement that has no ';'")
    return statements


def upgrade_sql(schema: str = SQUIDMESH_SCHEMA) -> list[str]:
    """Every statement this revision's ``upgrade()`` executes, in order."""
    schema = check_schema_name(schema)
    return [
        f"CREATE SCHEMA IF NOT EXISTS {schema}",
        *split_statements(read_migration("schema_version.sql"), schema),
        *split_statements(read_migration(MIGRATION_FILE), schema),
        f"INSERT INTO {schema}.squidmesh_schema_version (version, applied_at) "
        f"VALUES ({VERSION}, now())",
    ]


def downgrade_sql(schema: str = SQUIDMESH_SCHEMA) -> list[str]:
    """Drop the tables ``upgrade_sql`` created (every run and its history goes with them)."""
    schema = check_schema_name(schema)
    created = re.findall(
        r"CREATE TABLE (?:IF NOT EXISTS )?\{schema\}\.(\w+)",
        read_migration("schema_version.sql") + read_migration(MIGRATION_FILE),
    )
    return [f"DROP TABLE IF EXISTS {schema}.{table}" for table in reversed(created)]


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
