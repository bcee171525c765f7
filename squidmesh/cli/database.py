"""Which database a command works on, and never creating one by accident.

SQLite creates a missing file on first connect, and an embedded ``Mesh`` migrates an
empty database on first use: convenient in an application, a trap on the command line,
where a relative or mistyped path would make ``check-deploy`` report "safe to deploy"
against a fresh, empty file. So every command except ``migrate`` checks, before it
connects, that the SQLite file exists and that its schema is current, and refuses
otherwise, naming the database it looked at. Only ``migrate`` creates and migrates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from squidmesh.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError
from squidmesh.errors import SchemaOutOfDateError
from squidmesh.storage.base import SCHEMA_VERSION, Store

__all__ = ["check_database", "display_path", "label", "run_counts", "sqlite_path"]


def _url(store: Store) -> Any:
    engine = getattr(store, "engine", None)
    return None if engine is None else engine.url


def sqlite_path(store: Store) -> Path | None:
    """The file of a SQLite store (None for other stores and in-memory SQLite)."""
    url = _url(store)
    if url is None or url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    full = path.absolute()
    try:
        return full.relative_to(Path(os.getcwd())).as_posix()
    except ValueError:
        return full.as_posix()


def label(store: Store) -> str:
    """The database as a person recognises it (no password): ``sqlite:///app.db``,
    ``postgresql://app@db/app (schema squidmesh)``, ``memory://``."""
    url = _url(store)
    if url is None:
        return "memory://"
    path = sqlite_path(store)
    if path is not None:
        return f"sqlite:///{display_path(path)}"
    if url.get_backend_name() == "sqlite":
        return "sqlite:// (in memory)"
    shown = url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)
    schema = getattr(store, "schema", None)
    return f"{shown} (schema {schema})" if schema else str(shown)


def check_database(store: Store) -> None:
    """Refuse a SQLite file that does not exist and a schema that is not current."""
    path = sqlite_path(store)
    if path is not None and not path.exists():
        raise CliError(
            EXIT_USAGE,
            f"no SQLite database at {display_path(path)} ({path.absolute().as_posix()})",
            hint="squidmesh creates a database only in `squidmesh migrate`: check "
            "--database-url (or SQUIDMESH_DATABASE_URL) and the directory you run in, or run "
            "`squidmesh migrate` if this is where the database belongs",
            kind="DatabaseNotFound",
        )
    try:
        store.check_schema()
    except SchemaOutOfDateError as exc:
        version = _version(store)
        if version == 0:
            message = f"{label(store)} has no squidmesh tables"
        else:
            message = (
                f"the squidmesh schema of {label(store)} is at version {version}, but this "
                f"code expects version {SCHEMA_VERSION}"
            )
        raise CliError(
            EXIT_FAILED,
            message,
            hint="if this is the right database, run `squidmesh migrate` (with the same "
            "--app or --database-url)",
            kind=type(exc).__name__,
        ) from exc


def _version(store: Store) -> int | None:
    engine = getattr(store, "engine", None)
    if engine is None:
        return None
    from squidmesh.storage.sql_migrate import schema_version

    return schema_version(engine, store.dialect, getattr(store, "schema", "squidmesh"))


def run_counts(store: Store) -> dict[str, int]:
    """How many runs the database holds, by status."""
    with store.transaction() as tx:
        counts = tx.count_runs()
    return {status: n for status, n in counts.items() if n}
