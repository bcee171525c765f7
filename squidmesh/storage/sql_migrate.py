"""Apply the versioned SQL files in ``squidmesh/migrations/<dialect>/`` and check the version.

``migrate`` runs in one transaction that first takes a database-wide lock (a transaction
advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so processes migrating at the
same time apply each file exactly once: the later one waits, then finds nothing to do.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from datetime import datetime, timezone
from importlib import resources
from importlib.abc import Traversable
from typing import Any

import sqlalchemy as sa

from squidmesh.errors import SchemaOutOfDateError, StorageError
from squidmesh.storage import tables as t
from squidmesh.storage.base import SCHEMA_VERSION
from squidmesh.storage.sql_errors import driver_error, storage_error

__all__ = ["ADVISORY_LOCK_KEY", "Migration", "check_schema", "migrate", "migrations", "statements"]

#: pg_advisory_xact_lock key held while migrating ("SQMMIGRA" as a signed 64-bit int).
ADVISORY_LOCK_KEY = 0x53514D4D49475241

_NUMBERED = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
_BOOTSTRAP = "schema_version.sql"
# A statement ends with ";" at the end of a line (see squidmesh/migrations/README.md).
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def _folder(dialect: str) -> Traversable:
    return resources.files("squidmesh").joinpath("migrations").joinpath(dialect)


@functools.cache
def migrations(dialect: str) -> tuple[Migration, ...]:
    """The numbered migrations of a dialect, oldest first."""
    found = []
    for item in _folder(dialect).iterdir():
        match = _NUMBERED.fullmatch(item.name)
        if match:
            found.append(Migration(int(match.group(1)), item.name, item.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise StorageError(f"squidmesh {dialect} migrations are not numbered 1..n: {found}")
    return tuple(found)


def bootstrap_sql(dialect: str) -> str:
    """The bookkeeping table's DDL, applied first on every migrate."""
    return _bootstrap(dialect)


@functools.cache
def _bootstrap(dialect: str) -> str:
    text: str = _folder(dialect).joinpath(_BOOTSTRAP).read_text("utf-8")
    return text


def statements(sql: str, schema: str | None) -> list[str]:
    """The statements of a migration file, with ``{schema}`` filled in (PostgreSQL)."""
    if schema is not None:
        # str.replace, not str.format: SQL may contain braces ('{}' JSON literals).
        sql = sql.replace("{schema}", t.check_schema_name(schema))
    found: list[str] = []
    current: list[str] = []
    quoted = False  # inside a $$ ... $$ body (a PL/pgSQL function), ";" ends nothing
    for line in sql.splitlines():
        if not quoted and line.lstrip().startswith("--"):
            continue
        current.append(line)
        if line.count("$$") % 2:
            quoted = not quoted
        if not quoted and _STATEMENT_END.search(line):
            found.append("\n".join(current).strip().removesuffix(";").rstrip())
            current = []
    tail = "\n".join(current).strip()
    if tail:
        found.append(tail)
    return [statement for statement in found if statement]


#: set in a SQLite connection's ``info`` while it migrates: its transaction then starts
#: with foreign keys off (read by ``sql.sqlite_begin``), because rebuilding a table (the
#: only way to change a column's type there) drops it, and a dropped parent table would
#: cascade-delete the rows of its children. ``foreign_key_check`` runs before commit.
SQLITE_MIGRATING = "squidmesh_sqlite_migrating"


def migrate(engine: sa.Engine, dialect: str, schema: str) -> list[str]:
    """Create or upgrade the schema; idempotent and safe to run concurrently.

    Returns the file names of the migrations this call applied, oldest first (empty when
    the schema was already up to date, or another migrator applied them first)."""
    try:
        with engine.connect() as conn:
            if dialect == "postgresql":
                return _migrate(conn, dialect, schema)
            info = conn.connection.info
            info[SQLITE_MIGRATING] = True
            try:
                return _migrate(conn, dialect, None)
            finally:
                info.pop(SQLITE_MIGRATING, None)
                # Outside any transaction (SQLite ignores this pragma inside one).
                raw: Any = conn.connection.dbapi_connection
                raw.execute("PRAGMA foreign_keys = ON")
    except sa.exc.SQLAlchemyError as exc:
        raise storage_error("migrate the squidmesh schema", exc) from driver_error(exc)


def _migrate(conn: sa.Connection, dialect: str, target: str | None) -> list[str]:
    """Apply what is missing in one transaction (``target``: the PostgreSQL schema);
    returns the names of the migrations applied."""
    pg = dialect == "postgresql"
    applied: list[str] = []
    with conn.begin():
        if pg:
            # Held until commit: concurrent migrators queue here, before any DDL.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {t.check_schema_name(target or '')}")
        for statement in statements(_bootstrap(dialect), target):
            conn.exec_driver_sql(statement)
        version_table = t.schema_version
        current = conn.execute(sa.select(sa.func.max(version_table.c.version))).scalar()
        for migration in migrations(dialect):
            if migration.version <= (current or 0):
                continue
            for statement in statements(migration.sql, target):
                conn.exec_driver_sql(statement)
            conn.execute(
                sa.insert(version_table),
                {"version": migration.version, "applied_at": datetime.now(timezone.utc)},
            )
            applied.append(migration.name)
        if not pg:
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise StorageError(
                    f"migrating left {len(broken)} rows whose run does not exist "
                    f"(first: {tuple(broken[0])}); nothing was changed"
                )
    return applied


def schema_version(engine: sa.Engine, dialect: str, schema: str) -> int:
    """The version the database is at (0 when squidmesh was never migrated there)."""
    try:
        with engine.connect() as conn:
            has_table = sa.inspect(conn).has_table(
                t.schema_version.name, schema=schema if dialect == "postgresql" else None
            )
            if not has_table:
                return 0
            found = conn.execute(sa.select(sa.func.max(t.schema_version.c.version))).scalar()
            return int(found or 0)
    except sa.exc.SQLAlchemyError as exc:
        raise storage_error("read the squidmesh schema version", exc) from driver_error(exc)


def check_schema(engine: sa.Engine, dialect: str, schema: str) -> None:
    """Raise ``SchemaOutOfDateError`` when the database is older than this code."""
    version = schema_version(engine, dialect, schema)
    if version < SCHEMA_VERSION:
        where = f" (schema {schema!r})" if dialect == "postgresql" else ""
        raise SchemaOutOfDateError(
            f"the squidmesh database schema{where} is at version {version}, but this code "
            f"expects version {SCHEMA_VERSION}: run `squidmesh migrate` or `mesh.migrate()`"
        )
