"""squidmesh's store on Django's own database connection.

A ``transaction=True`` step promises that its host writes and its completion commit or
roll back together. With the Django ORM that works only if squidmesh's transaction runs
on the very connection the ORM uses in that thread, inside a transaction Django knows
about. So every squidmesh transaction in a thread runs like this:

1. ``django.db.transaction.atomic()`` on squidmesh's database alias: Django begins the
   transaction on its connection of the current thread (and knows it is in one, so ORM
   code inside uses savepoints and never commits by itself);
2. squidmesh's SQLAlchemy engine borrows that DBAPI connection (an engine whose
   ``creator`` hands over Django's connection and whose pool never closes it); its
   ``commit``/``rollback``/``close`` do nothing, transaction control stays Django's;
3. leaving the ``atomic`` block commits (or rolls back) squidmesh's rows and whatever the
   step wrote through the ORM, as one transaction.

The step body runs in the thread that opened the transaction (a sync ``def`` step
without ``timeout``: squidmesh runs such steps in the calling thread), so
``Model.objects.create(...)`` in it joins the transaction. An ``async def`` step, or a
step with a ``timeout`` (run in a helper thread), would reach Django's connection of
another thread: their ORM writes are not part of the step's transaction.

When the calling thread is already inside an ``atomic`` block of the host's (a view
under ``ATOMIC_REQUESTS``, say), squidmesh does not join it: the call runs on a
connection of its own and commits independently, as it would with any other store, so
a run never exists in squidmesh's cache while the host may still roll it back. Use
``transaction.on_commit(lambda: mesh.start_run(...))`` to start a run only if the host
commits.

Reads of the borrowed connection are made with psycopg's own loaders (Django registers
its own for ``timestamptz`` and ``jsonb``), and on SQLite with a ``DATETIME`` type that
accepts the values Django's converters already parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.sqlite import DATETIME as SQLITE_DATETIME
from sqlalchemy.pool import NullPool

from squidmesh.errors import SchemaOutOfDateError, StorageError
from squidmesh.storage import sql as sql_store
from squidmesh.storage import sql_migrate
from squidmesh.storage.sql import SqlStore, SqlTransaction
from squidmesh.storage.sql_errors import storage_error

__all__ = ["DjangoStore", "database_url"]

#: Django's OPTIONS that are not libpq connection parameters
_NOT_LIBPQ = frozenset(
    {
        "pool",
        "server_side_binding",
        "isolation_level",
        "assume_role",
        "cursor_factory",
        "prepare_threshold",
        "context",
        "autocommit",
    }
)


def database_url(settings_dict: dict[str, Any]) -> sa.URL:
    """The SQLAlchemy URL of a Django ``DATABASES`` entry (PostgreSQL or SQLite)."""
    engine = settings_dict.get("ENGINE", "")
    name = settings_dict.get("NAME")
    if engine.endswith("sqlite3"):
        if not name or str(name) == ":memory:" or str(name).startswith("file:"):
            raise StorageError(
                "squidmesh needs a SQLite database file (DATABASES NAME), not an in-memory one"
            )
        return sa.URL.create("sqlite", database=str(name))
    if "postgresql" in engine:
        options = settings_dict.get("OPTIONS") or {}
        query = {
            key: str(value)
            for key, value in options.items()
            if key not in _NOT_LIBPQ and isinstance(value, (str, int))
        }
        port = settings_dict.get("PORT")
        return sa.URL.create(
            "postgresql+psycopg",
            username=settings_dict.get("USER") or None,
            password=settings_dict.get("PASSWORD") or None,
            host=settings_dict.get("HOST") or None,
            port=int(port) if port else None,
            database=name or "postgres",
            query=query,
        )
    raise StorageError(
        f"squidmesh stores runs in PostgreSQL or SQLite; the database uses {engine!r}"
    )


class _Borrowed:
    """Django's DBAPI connection lent to SQLAlchemy: everything passes through, except
    that ending the transaction or the connection is left to Django."""

    __slots__ = ("_conn", "_psycopg")

    def __init__(self, conn: Any, psycopg: bool) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_psycopg", psycopg)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conn, name, value)

    def commit(self) -> None:
        pass  # Django's atomic block commits

    def rollback(self) -> None:
        pass  # Django's atomic block rolls back

    def close(self) -> None:
        pass  # the connection is Django's

    def add_notice_handler(self, handler: Callable[..., Any]) -> None:
        pass  # SQLAlchemy adds one per checkout: it would pile up on a long-lived connection

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not self._psycopg:
            return self._conn.cursor(*args, **kwargs)
        import psycopg
        from psycopg.types.datetime import TimestamptzLoader
        from psycopg.types.json import JsonbLoader

        # Django's connections bind parameters client-side and load timestamptz in its
        # TIME_ZONE (naive when USE_TZ=False) and jsonb as text: squidmesh's statements
        # get psycopg's defaults, which is what they are written and tested for.
        cursor = psycopg.Cursor(self._conn)
        cursor.adapters.register_loader("timestamptz", TimestamptzLoader)
        cursor.adapters.register_loader("jsonb", JsonbLoader)
        return cursor


class _ParsedDateTime(SQLITE_DATETIME):
    """SQLite DATETIME that also accepts a ``datetime``: Django opens its SQLite
    connections with ``detect_types``, so its converters parse such columns first."""

    def result_processor(self, dialect: sa.Dialect, coltype: object) -> Any:
        parse = super().result_processor(dialect, coltype)
        if parse is None:
            return None

        def process(value: Any) -> Any:
            return value if value is None or isinstance(value, datetime) else parse(value)

        return process


class DjangoStore(SqlStore):
    """A ``SqlStore`` whose transactions run on Django's connection (module docstring)."""

    def __init__(self, *, alias: str = "default", schema: str = "squidmesh") -> None:
        from django.db import connections

        self.alias = alias
        url = database_url(connections[alias].settings_dict)
        postgres = url.get_backend_name() == "postgresql"

        def borrow() -> _Borrowed:
            wrapper = connections[alias]
            wrapper.ensure_connection()
            return _Borrowed(wrapper.connection, postgres)

        # No hstore: SQLAlchemy would look its type up through psycopg's TypeInfo, which
        # wants a real psycopg Connection (squidmesh uses no hstore anyway).
        extra = {"use_native_hstore": False} if postgres else {}
        engine = sa.create_engine(url, creator=borrow, poolclass=NullPool, **extra)
        if not postgres:
            engine.dialect.colspecs = {**engine.dialect.colspecs, sa.DateTime: _ParsedDateTime}
        super().__init__(engine, schema=schema, owns_engine=True)
        if not postgres and event.contains(engine, "begin", sql_store.sqlite_begin):
            # Django begins SQLite transactions itself (BEGIN, or BEGIN IMMEDIATE with
            # OPTIONS transaction_mode): the BEGIN IMMEDIATE SqlStore adds would nest.
            event.remove(engine, "begin", sql_store.sqlite_begin)
        self._url = url
        self._independent: SqlStore | None = None

    def __repr__(self) -> str:
        return f"<DjangoStore {self.dialect} database={self.alias!r} schema={self.schema}>"

    def _own(self) -> SqlStore:
        """A store on connections of its own, for calls made inside a host transaction."""
        if self._independent is None:
            self._independent = SqlStore(
                sql_store.create_engine(self._url.render_as_string(hide_password=False)),
                schema=self.schema,
                owns_engine=True,
            )
        return self._independent

    def transaction(self, *, autocommit: bool = False) -> SqlTransaction:
        from django.db import connections

        wrapper = connections[self.alias]
        if wrapper.in_atomic_block:
            return self._own().transaction(autocommit=autocommit)
        # Always a real transaction: Django's atomic block is what commits it.
        return _DjangoTransaction(self)

    def migrate(self) -> list[str]:
        """``manage.py migrate squidmesh``: the schema is Django's migrations' to change
        (one per squidmesh schema version). Returns the squidmesh files applied."""
        from django.core.management import call_command

        before = sql_migrate.schema_version(self.engine, self.dialect, self.schema)
        call_command("migrate", "squidmesh", database=self.alias, verbosity=0)
        after = sql_migrate.schema_version(self.engine, self.dialect, self.schema)
        return [m.name for m in sql_migrate.migrations(self.dialect) if before < m.version <= after]

    def check_schema(self) -> None:
        try:
            super().check_schema()
        except SchemaOutOfDateError as exc:
            raise SchemaOutOfDateError(
                str(exc).replace(
                    "run `squidmesh migrate` or `mesh.migrate()`", "run `python manage.py migrate`"
                )
            ) from None

    def close(self) -> None:
        super().close()
        if self._independent is not None:
            self._independent.close()
            self._independent = None


class _DjangoTransaction(SqlTransaction):
    """A squidmesh transaction inside ``transaction.atomic()`` on Django's connection."""

    __slots__ = ("_alias", "_atomic")
    #: Django's atomic block commits, maybe as a savepoint inside the host's transaction
    owns_commit = False

    def __init__(self, store: DjangoStore) -> None:
        super().__init__(store)
        self._alias = store.alias
        self._atomic: Any = None

    def __enter__(self) -> SqlTransaction:
        from django.db import DatabaseError, connections, transaction

        wrapper = connections[self._alias]
        raw = wrapper.connection
        if raw is not None and (getattr(raw, "closed", False) or getattr(raw, "broken", False)):
            wrapper.close()  # lost (a database restart): the next line connects anew
        atomic = transaction.atomic(using=self._alias)
        try:
            atomic.__enter__()
        except DatabaseError as exc:
            cause = exc.__cause__ or exc
            raise storage_error("begin a transaction", cause) from cause
        self._atomic = atomic
        try:
            super().__enter__()
        except BaseException as exc:
            self._atomic = None
            atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        from django.db import DatabaseError, connections

        atomic, self._atomic = self._atomic, None
        try:
            super().__exit__(exc_type, exc, tb)  # SQLAlchemy's side: nothing reaches the DB
        finally:
            if atomic is not None:
                wrapper = connections[self._alias]
                if exc_type is None and wrapper.needs_rollback:
                    # A database error inside the block was caught by the code in it
                    # (a step swallowed an IntegrityError): Django will roll back, so
                    # squidmesh must not believe its changes were committed.
                    error = StorageError(
                        "the transaction was rolled back: a database error inside it was "
                        "caught and ignored (a transaction=True step must let database "
                        "errors propagate, or catch them inside its own transaction.atomic())"
                    )
                    atomic.__exit__(StorageError, error, None)
                    raise error
                try:
                    atomic.__exit__(exc_type, exc, tb)
                except DatabaseError as failure:
                    cause = failure.__cause__ or failure
                    if exc_type is None:
                        raise storage_error("commit", cause) from cause
                    raise
