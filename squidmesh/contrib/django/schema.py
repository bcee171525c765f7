"""squidmesh's SQL files as Django migrations (one migration per schema version).

Each migration of ``squidmesh/contrib/django/migrations`` is named after the SQL file it
applies (``0002_write_function`` applies ``0002_write_function.sql``) and runs
``apply(version)``: on squidmesh's database (``SQUIDMESH["DATABASE"]``), under the
same lock as ``mesh.migrate()``, it creates the bookkeeping table, then applies every
file up to ``version`` that the database does not have yet, and records each in
``squidmesh_schema_version``. So ``manage.py migrate`` and a ``mesh.migrate()`` run
elsewhere agree: whichever comes second finds nothing to do. Reversing ``0001``
(``manage.py migrate squidmesh zero``) drops every squidmesh table with its runs; the
later ones reverse to nothing (squidmesh never downgrades a schema).
"""

from __future__ import annotations

import re
from typing import Any

from squidmesh.storage import sql_migrate

__all__ = ["apply", "dialect_of", "runs_table"]


def dialect_of(vendor: str) -> str:
    if vendor == "postgresql":
        return "postgresql"
    if vendor == "sqlite":
        return "sqlite"
    raise RuntimeError(f"squidmesh stores runs in PostgreSQL or SQLite, not {vendor}")


def runs_table() -> str:
    """``db_table`` of the unmanaged ``Run`` model: squidmesh's runs table, in its schema
    on PostgreSQL (Django quotes ``schema"."table`` as ``"schema"."table"``)."""
    from django.db import connections

    from squidmesh.contrib.django import conf

    config = conf.read()
    if connections[config.database].vendor == "postgresql":
        return f'{config.schema}"."squidmesh_runs'
    return "squidmesh_runs"


def apply(version: int) -> Any:
    """The ``RunPython`` operation of the migration for squidmesh schema ``version``."""
    from django.db import migrations

    def forwards(apps: Any, schema_editor: Any) -> None:
        _forwards(schema_editor.connection, version)

    def backwards(apps: Any, schema_editor: Any) -> None:
        if version == 1:
            _drop_everything(schema_editor.connection)

    return migrations.RunPython(forwards, backwards, elidable=False)


def _ours(connection: Any) -> bool:
    from squidmesh.contrib.django import conf

    return bool(connection.alias == conf.read().database)


def _forwards(connection: Any, version: int) -> None:
    from squidmesh.contrib.django import conf

    if not _ours(connection):
        return  # another database of the project: squidmesh's tables are not there
    dialect = dialect_of(connection.vendor)
    schema = conf.read().schema if dialect == "postgresql" else None
    table = f"{schema}.squidmesh_schema_version" if schema else "squidmesh_schema_version"
    with connection.cursor() as cursor:
        if schema:
            # The lock mesh.migrate() takes: a concurrent migrator waits, then finds
            # the files applied.
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [sql_migrate.ADVISORY_LOCK_KEY])
            cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for statement in sql_migrate.statements(sql_migrate.bootstrap_sql(dialect), schema):
            cursor.execute(statement)
        cursor.execute(f"SELECT max(version) FROM {table}")
        row = cursor.fetchone()
        current = int(row[0] or 0) if row else 0
        now = "now()" if schema else "CURRENT_TIMESTAMP"
        for migration in sql_migrate.migrations(dialect):
            if not current < migration.version <= version:
                continue
            for statement in sql_migrate.statements(migration.sql, schema):
                cursor.execute(statement)  # no parameters: '%' in the SQL stays as it is
            cursor.execute(
                f"INSERT INTO {table} (version, applied_at) VALUES ({migration.version}, {now})"
            )
        if not schema:
            broken = cursor.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(
                    f"migrating left {len(broken)} rows whose run does not exist "
                    f"(first: {tuple(broken[0])})"
                )


def _drop_everything(connection: Any) -> None:
    from squidmesh.contrib.django import conf

    if not _ours(connection):
        return
    dialect = dialect_of(connection.vendor)
    schema = conf.read().schema if dialect == "postgresql" else None
    texts = sql_migrate.bootstrap_sql(dialect) + "".join(
        m.sql for m in sql_migrate.migrations(dialect)
    )
    prefix = r"\{schema\}\." if schema else ""
    tables = re.findall(rf"CREATE TABLE (?:IF NOT EXISTS )?{prefix}(\w+)", texts)
    functions = re.findall(rf"CREATE (?:OR REPLACE )?FUNCTION {prefix}(\w+)", texts)
    qualify = (lambda name: f"{schema}.{name}") if schema else (lambda name: name)
    with connection.cursor() as cursor:
        for name in dict.fromkeys(functions):
            cursor.execute(f"DROP FUNCTION IF EXISTS {qualify(name)}")
        for name in reversed(list(dict.fromkeys(tables))):
            cursor.execute(f"DROP TABLE IF EXISTS {qualify(name)}")
