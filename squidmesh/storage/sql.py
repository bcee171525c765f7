"""``SqlStore``: the ``Store`` port on SQLite and PostgreSQL (psycopg 3), via SQLAlchemy Core.

Every transaction is one pooled connection and one database transaction. Errors raised
by the database or the driver become ``StorageError`` (the driver's error kept as
``__cause__``) at the edge of each store method, so an exception raised by the caller's
own code inside ``with store.transaction()`` propagates unchanged.

Locking: on PostgreSQL ``lock_run`` is a row lock (``FOR NO KEY UPDATE``) and job claims
use ``FOR UPDATE SKIP LOCKED``. On SQLite every transaction starts with ``BEGIN
IMMEDIATE``, so transactions that may write serialize on the database lock (waiting up to
``busy_timeout``, 30 s) and ``lock_run`` needs no lock of its own.
"""

from __future__ import annotations

import dataclasses
import random
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import PoolProxiedConnection

from squidmesh.core.flow import Queue
from squidmesh.core.history import Entry
from squidmesh.core.records import Attempt, AuditEvent, Job
from squidmesh.core.replay import BufferedEvent
from squidmesh.errors import ConflictError, StorageError
from squidmesh.storage import flow_claim, liveness, pg_write, sql_migrate
from squidmesh.storage import tables as t
from squidmesh.storage.base import (
    PARKED,
    PARKED_UNTIL,
    QueuedJob,
    RunRecord,
    Store,
    WriteBatch,
    iter_chunks,
    run_id_prefix_range,
)
from squidmesh.storage.pg_flow import PgFlowClaim
from squidmesh.storage.pg_reads import LockedReads
from squidmesh.storage.sessions import EveryoneLeads, PgLeadership, PgWakeups, advisory_key
from squidmesh.storage.sql_errors import driver_error, storage_error, translated
from squidmesh.storage.sql_queries import (
    ALL_STATUSES,
    CHUNK,
    claimed_jobs,
    flow_forgets,
    flow_grants,
    flow_heads,
    job_from_row,
    queries_for,
    run_from_row,
)
from squidmesh.storage.sqlite_write import SqliteWriter

if TYPE_CHECKING:
    import psycopg

__all__ = ["SqlStore", "SqlTransaction", "create_engine"]


SQLITE_BUSY_TIMEOUT_MS = 30_000
_CONFIGURED = "squidmesh_sqlite_configured"


#: connections squidmesh's own PostgreSQL engine keeps open once opened, and how many
#: more it may open at a peak (``create_engine``)
PG_POOL_SIZE = 20
PG_POOL_OVERFLOW = 20


def create_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine for a squidmesh URL; ``postgres(ql)://`` means psycopg 3.

    On PostgreSQL the pool keeps up to ``PG_POOL_SIZE`` connections: a worker's job
    threads, its claim loop, heartbeat and sweeper (and the async pool) each hold one
    while in a transaction. SQLAlchemy's default (5 kept, 15 at most) closed every
    connection returned above 5 busy and opened it again a moment later, a backend
    forked each time (B7: 179 connections for 2,000 steps), and made a 16th thread wait
    for one. Only connections opened at a peak are kept."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
            break
    if url.startswith("postgresql"):
        kwargs.setdefault("pool_size", PG_POOL_SIZE)
        kwargs.setdefault("max_overflow", PG_POOL_OVERFLOW)
    return sa.create_engine(url, **kwargs)


def _sqlite_driver(proxied: PoolProxiedConnection) -> sqlite3.Connection:
    """The ``sqlite3`` connection of a pooled connection, set up for squidmesh: pragmas
    once per connection, foreign keys off while it migrates."""
    # pysqlite would otherwise open transactions itself, lazily and DEFERRED: a read
    # followed by a write could then fail with "database is locked" instead of waiting.
    driver = cast(sqlite3.Connection, proxied.driver_connection)
    if not proxied.info.get(_CONFIGURED):
        driver.isolation_level = None
        cursor = driver.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()
        proxied.info[_CONFIGURED] = True
    if proxied.info.get(sql_migrate.SQLITE_MIGRATING):
        driver.execute("PRAGMA foreign_keys = OFF")
    return driver


def sqlite_begin(conn: sa.Connection) -> None:
    driver = _sqlite_driver(conn.connection)
    # A SqlTransaction begins on the driver itself and wraps its connection in
    # SQLAlchemy's only when a statement needs it (``SqlTransaction.connection``), whose
    # own begin then finds the transaction open.
    if not driver.in_transaction:
        # Through SQLAlchemy, so a failure (a database locked past busy_timeout) reaches
        # the caller as SQLAlchemy's error, as every other statement's does.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _configure_sqlite(engine: sa.Engine) -> None:
    # Configured lazily in "begin" (not "connect"), so connections a host's engine opened
    # before the store existed are set up too.
    if not event.contains(engine, "begin", sqlite_begin):
        event.listen(engine, "begin", sqlite_begin)


class SqlStore:
    """A ``Store`` on a SQLAlchemy engine (SQLite or PostgreSQL via psycopg 3).

    ``schema`` is the PostgreSQL schema holding the tables (ignored on SQLite). A store
    built on a host's engine does not dispose it on ``close()`` unless ``owns_engine``.
    """

    def __init__(
        self, engine: sa.Engine, *, schema: str = "squidmesh", owns_engine: bool = False
    ) -> None:
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"squidmesh supports SQLite and PostgreSQL, not {dialect}")
        self.dialect = dialect
        self.schema = t.check_schema_name(schema)
        self._owns_engine = owns_engine
        self._raw_engine = engine
        if dialect == "sqlite":
            _configure_sqlite(engine)
        self.engine = engine.execution_options(
            schema_translate_map=t.translate_map(dialect, self.schema)
        )
        self.queries = queries_for(dialect)
        #: the LISTEN/NOTIFY channel announcing new jobs (PostgreSQL)
        self.notify_channel = f"{self.schema}_jobs"
        self._notify_sql = f'NOTIFY "{self.notify_channel}"' if dialect == "postgresql" else None
        #: SQLite writes a state change statement by statement on the driver's cursor
        self._sqlite_writer = SqliteWriter() if dialect == "sqlite" else None
        #: PostgreSQL writes a state change with one call (SQLite statement by statement)
        self._write_sql = pg_write.write_call(self.schema) if dialect == "postgresql" else None
        self._create_sql = (
            pg_write.write_call(self.schema, creates=True) if dialect == "postgresql" else None
        )
        #: PostgreSQL reads a run's lock and history in one round trip
        self.locked_reads = LockedReads(self.schema) if dialect == "postgresql" else None
        #: PostgreSQL claims queued jobs in three round trips (SQLite statement by
        #: statement, ``SqlTransaction._claim_queued``)
        self.flow_claim = (
            PgFlowClaim(self.queries, engine.dialect, self.schema)
            if dialect == "postgresql"
            else None
        )

    def __repr__(self) -> str:
        return f"<SqlStore {self.dialect} {self._raw_engine.url!r} schema={self.schema}>"

    def migrate(self) -> list[str]:
        return sql_migrate.migrate(self.engine, self.dialect, self.schema)

    def check_schema(self) -> None:
        sql_migrate.check_schema(self.engine, self.dialect, self.schema)

    def conninfo(self) -> str:
        """A libpq connection string for the engine's database (PostgreSQL)."""
        url = self._raw_engine.url.set(drivername="postgresql")
        return str(url.render_as_string(hide_password=False))

    def wakeups(self) -> PgWakeups | None:
        if self.dialect != "postgresql":
            return None
        return PgWakeups(self.conninfo(), self.notify_channel)

    def leadership(self, name: str) -> PgLeadership | EveryoneLeads:
        if self.dialect != "postgresql":
            return EveryoneLeads()  # duplicates are refused by unique keys anyway
        return PgLeadership(self.conninfo(), advisory_key(name, self.schema))

    def hold(self, owner: str) -> _Hold:
        return _Hold(self.conninfo() if self.dialect == "postgresql" else None, owner)

    def transaction(self, *, autocommit: bool = False) -> SqlTransaction:
        # On PostgreSQL a change's writes are one statement that checks what the change
        # was decided on before writing anything (``pg_write``), so without BEGIN/COMMIT
        # it is still all or nothing, and it saves two round trips. SQLite keeps its
        # BEGIN IMMEDIATE so writers serialize.
        return SqlTransaction(self, autocommit=autocommit and self.dialect == "postgresql")

    def close(self) -> None:
        if self._owns_engine:
            self._raw_engine.dispose()


class _Hold:
    """An owner held by this process. On PostgreSQL: a session advisory lock on a
    connection of its own, which the server releases when the session ends; ``renew()``
    reconnects and takes it again after the connection was lost (a restart)."""

    def __init__(self, conninfo: str | None, owner: str) -> None:
        self.owner = owner
        self._conninfo = conninfo
        self._conn: Any = None
        # The presence thread may renew while the Mesh closes: a renewal that ends
        # after the release must not take the owner back (a session nobody would
        # close, and an owner that looks alive to every claimer). The lock guards the
        # flag and the connection only, never a call to the server: closing a Mesh
        # does not wait on a renewal stuck in a network partition.
        self._lock = threading.Lock()
        self._released = False
        liveness.held(owner)
        self.renew()

    def renew(self) -> None:
        if self._conninfo is None:
            return
        import psycopg

        with self._lock:
            if self._released:
                return
            current = self._conn
        if current is not None:
            try:
                current.execute("SELECT 1")
                return
            except psycopg.Error:
                with self._lock:
                    if self._conn is current:
                        self._conn = None
                _close(current)
        conn = None
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
            # So the server notices a vanished client (and frees its lock) within ~30 s
            # even when no FIN arrives (TCP connections only; harmless otherwise).
            for setting in ("tcp_keepalives_idle = 10", "tcp_keepalives_interval = 5"):
                conn.execute(f"SET {setting}")
            conn.execute("SET tcp_keepalives_count = 3")
            key = liveness.ADVISORY_PREFIX + self.owner
            conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
        except psycopg.Error as exc:
            # Closed here, not left to the garbage collector: the traceback keeps this
            # frame (and an open connection) alive until some later collection.
            if conn is not None:
                conn.close()
            raise StorageError(f"could not hold worker {self.owner} alive: {exc}") from exc
        with self._lock:
            if not self._released:
                self._conn, conn = conn, None
        if conn is not None:
            _close(conn)  # released meanwhile: the owner stays let go

    def release(self) -> None:
        with self._lock:
            self._released = True
            liveness.release(self.owner)
            conn, self._conn = self._conn, None
        if conn is not None:
            _close(conn)


def _close(conn: Any) -> None:
    """End a hold's session. Its lock is let go first, explicitly: a backend releases
    its locks a moment after the client hangs up, and a process that stopped must look
    gone to the next claim at once."""
    try:
        conn.execute("SELECT pg_advisory_unlock_all()")
    except Exception:
        pass  # a broken session: the server lets go when it notices
    try:
        conn.close()
    except Exception:
        pass  # closing ends the session, which is all that is needed


def _end_sqlite(raw: PoolProxiedConnection, *, commit: bool) -> None:
    """Commit (or roll back) a transaction ``SqlTransaction`` began on a SQLite driver,
    and return the connection to the pool."""
    driver = cast(sqlite3.Connection, raw.driver_connection)
    try:
        if commit:
            try:
                driver.commit()
            except sqlite3.Error as error:
                raise storage_error("commit", error) from error
        else:
            try:
                driver.rollback()
            except sqlite3.Error:
                pass  # the caller's exception matters more; the pool resets the connection
    finally:
        raw.close()


def _give_back(raw: PoolProxiedConnection) -> None:
    """Return a connection ``write`` took for a transaction without BEGIN/COMMIT to the
    pool as the pool handed it out (not in autocommit)."""
    try:
        driver = cast("psycopg.Connection[Any]", raw.driver_connection)
        if driver.broken or driver.closed:
            raw.invalidate()
        else:
            driver.autocommit = False
    except Exception as exc:  # a connection the pool cannot trust is not reused
        raw.invalidate(exc)
    finally:
        raw.close()


class SqlTransaction:
    """One connection and one database transaction; use as ``with store.transaction()``."""

    #: the transaction is squidmesh's own, committed by ``__exit__`` (a host's commits
    #: on its own terms: ``_DjangoTransaction``)
    owns_commit = True

    __slots__ = (
        "_autocommit",
        "_conn",
        "_create_sql",
        "_notify_sql",
        "_q",
        "_raw",
        "_sqlite_writer",
        "_store",
        "_write_sql",
    )

    def __init__(self, store: SqlStore, *, autocommit: bool = False) -> None:
        self._store = store
        self._autocommit = autocommit
        self._q = store.queries
        self._notify_sql = store._notify_sql
        self._write_sql = store._write_sql
        self._create_sql = store._create_sql
        self._sqlite_writer = store._sqlite_writer
        self._conn: sa.Connection | None = None
        #: the pooled connection taken without a SQLAlchemy connection: on PostgreSQL
        #: the one a transaction without BEGIN/COMMIT wrote its batch on (``write``), on
        #: SQLite the one the transaction began on (``_begin_sqlite``)
        self._raw: PoolProxiedConnection | None = None

    # the context manager ---------------------------------------------------
    def __enter__(self) -> SqlTransaction:
        # Without BEGIN/COMMIT there is nothing to open: the connection is taken when
        # the first statement needs one. A landing that only writes its batch then
        # costs one pooled connection and one call, not a SQLAlchemy connection too.
        if self._sqlite_writer is not None and self.owns_commit:
            self._begin_sqlite()
        elif not self._autocommit:
            self._connect()
        return self

    def _begin_sqlite(self) -> None:
        """BEGIN IMMEDIATE on a pooled connection's driver, without SQLAlchemy's
        connection: a step's transaction on SQLite only writes its batch (through the
        driver, ``SqliteWriter``), and SQLAlchemy's connection, transaction and events
        cost a step more than its statements (benchmarks/README.md, B6). The connection
        is wrapped in SQLAlchemy's when a statement needs it (``connection``)."""
        try:
            raw = self._store.engine.raw_connection()
        except sa.exc.SQLAlchemyError as exc:
            raise storage_error("connect to the database", exc) from driver_error(exc)
        try:
            _sqlite_driver(raw).execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raw.close()
            raise storage_error("begin a transaction", exc) from exc
        except BaseException:
            raw.close()
            raise
        self._raw = raw

    def _connect(self) -> sa.Connection:
        try:
            conn = self._store.engine.connect()
            if self._autocommit:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        except sa.exc.SQLAlchemyError as exc:
            raise storage_error("connect to the database", exc) from driver_error(exc)
        try:
            conn.begin()
        except sa.exc.SQLAlchemyError as exc:
            conn.close()
            raise storage_error("begin a transaction", exc) from driver_error(exc)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        raw, self._raw = self._raw, None
        conn, self._conn = self._conn, None
        if conn is None and raw is not None:
            if self._sqlite_writer is not None:
                _end_sqlite(raw, commit=exc_type is None)
            else:
                _give_back(raw)
            return
        if conn is None:
            return
        try:
            if exc_type is None:
                try:
                    conn.commit()
                except sa.exc.SQLAlchemyError as error:
                    raise storage_error("commit", error) from driver_error(error)
            else:
                try:
                    conn.rollback()
                except sa.exc.SQLAlchemyError:
                    pass  # the caller's exception matters more; the connection is dropped
        finally:
            try:
                conn.close()
            except sa.exc.SQLAlchemyError:
                pass  # already committed or rolled back; the pool discards a bad connection

    @property
    def connection(self) -> sa.Connection:
        if self._conn is None:
            if self._raw is not None and self._sqlite_writer is not None:
                # SQLite's transaction, begun on the driver: SQLAlchemy's connection now
                # holds the pooled one. Its transaction is begun at once (its begin finds
                # the driver's open), so that its commit at the end commits the driver's.
                conn = sa.Connection(self._store.engine, connection=self._raw)
                self._raw = None
                self._conn = conn
                try:
                    conn.begin()
                except sa.exc.SQLAlchemyError as exc:
                    raise storage_error("begin a transaction", exc) from driver_error(exc)
                return conn
            if not self._autocommit or self._raw is not None:
                raise StorageError("the transaction is not open")
            return self._connect()
        return self._conn

    # runs ------------------------------------------------------------------
    @translated("read a run")
    def get_run(self, run_id: str) -> RunRecord | None:
        row = self.connection.execute(self._q.get_run, {"id": run_id}).first()
        return None if row is None else run_from_row(row)

    @translated("lock a run")
    def lock_run(self, run_id: str) -> RunRecord | None:
        row = self.connection.execute(self._q.lock_run, {"id": run_id}).first()
        return None if row is None else run_from_row(row)

    def lock_run_with_history(
        self, run_id: str, known_version: int | None
    ) -> tuple[RunRecord, list[Entry] | None] | None:
        reads = self._store.locked_reads
        if reads is None:  # SQLite: in the process, two statements cost nothing more
            run = self.lock_run(run_id)
            if run is None:
                return None
            return run, None if run.version == known_version else self.load_entries(run_id)
        import psycopg  # loaded already: the engine's driver

        driver = self._pg_driver()
        params = {"id": run_id, "known": known_version}
        try:
            # Cursors, not ``driver.execute``: a connection a host lends (Django's) gives
            # its cursors psycopg's own loaders, where the connection's would read times
            # in the host's time zone (``contrib/django/store.py``).
            if isinstance(driver, psycopg.Connection):
                # Pipelined: BEGIN, the lock and the history travel together. The history
                # is its own statement, so its snapshot is taken once the lock is held: it
                # sees what a writer this one waited for committed.
                with driver.pipeline():
                    locked = driver.cursor().execute(reads.lock, params)
                    history = driver.cursor().execute(reads.history, params)
            else:  # a connection some host lends (Django): the same, one after the other
                locked = driver.cursor().execute(reads.lock, params)
                history = driver.cursor().execute(reads.history, params)
            row, found = locked.fetchone(), history.fetchone()
        except (psycopg.Error, TypeError, ValueError) as exc:
            raise self._driver_failed(driver, "lock a run", exc) from exc
        if row is None:
            return None
        document = found[0] if found is not None else None
        return reads.run(row), None if document is None else reads.entries(document)

    @translated("find a run by idempotency key")
    def find_run_by_key(self, workflow: str, idempotency_key: str) -> RunRecord | None:
        row = self.connection.execute(
            self._q.find_run_by_key, {"workflow": workflow, "key": idempotency_key}
        ).first()
        return None if row is None else run_from_row(row)

    @translated("list runs")
    def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: datetime | None = None,
        before_id: str | None = None,
    ) -> list[RunRecord]:
        cursor = "keyset" if before is not None and before_id is not None else bool(before)
        query = self._q.list_runs(status is not None, workflow is not None, cursor)
        params = {
            "status": status,
            "workflow": workflow,
            "before": before,
            "before_id": before_id,
            "limit": max(limit, 0),
        }
        return [run_from_row(row) for row in self.connection.execute(query, params)]

    @translated("list the children of a run")
    def list_children(self, parent_run_id: str, limit: int | None = None) -> list[RunRecord]:
        query = self._q.list_children if limit is None else self._q.list_children_limited
        params: dict[str, Any] = {"parent": parent_run_id}
        if limit is not None:
            params["n"] = max(limit, 0)
        return [run_from_row(row) for row in self.connection.execute(query, params)]

    @translated("find runs by id prefix")
    def run_ids_with_prefix(self, prefix: str, limit: int) -> list[str]:
        # id >= low AND id < high: a primary-key range scan on both dialects (LIKE
        # 'prefix%' would need text_pattern_ops under a non-C collation).
        low, high = run_id_prefix_range(prefix)
        params = {"low": low, "high": high, "n": max(limit, 0)}
        found = self.connection.execute(self._q.run_ids_in_range, params).scalars()
        return [run_id for run_id in found if run_id.startswith(prefix)]

    @translated("search runs")
    def search_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        trigger: str | None = None,
        step: str | None = None,
        idempotency_key: str | None = None,
        id_prefix: str | None = None,
        limit: int = 50,
        before: datetime | None = None,
        before_id: str | None = None,
    ) -> list[RunRecord]:
        params: dict[str, Any] = {
            "status": status,
            "workflow": workflow,
            "trigger": trigger,
            "idempotency_key": idempotency_key,
            "before": before,
            "before_id": before_id,
            "limit": max(limit, 0),
        }
        given = {name for name, value in params.items() if value is not None}
        if id_prefix is not None:
            given.add("id_prefix")
            params["id_low"], params["id_high"] = run_id_prefix_range(id_prefix)
            params["id_like"] = id_prefix + "%"
        if step is not None:
            given.add("step")
            params["step"], params["step_json"] = step, [step]
        cursor = "keyset" if before is not None and before_id is not None else bool(before)
        filters = frozenset(given - {"before", "before_id", "limit"})
        query = self._q.search_runs(filters, cursor)
        return [run_from_row(row) for row in self.connection.execute(query, params)]

    @translated("count runs")
    def count_runs(
        self, *, workflow: str | None = None, limit: int | None = None
    ) -> dict[str, int]:
        counts = dict.fromkeys(ALL_STATUSES, 0)
        query = self._q.count_runs(workflow is not None, limit is not None)
        params = {"workflow": workflow, "cap": None if limit is None else max(limit, 0)}
        for status, n in self.connection.execute(query, params):
            counts[status] = int(n)
        return counts

    # history ---------------------------------------------------------------
    @translated("load the history")
    def load_entries(self, run_id: str) -> list[Entry]:
        document = self._q.load_entries_document
        if document is not None:
            rows = self.connection.execute(document, {"run_id": run_id}).scalar()
            return [Entry(*row) for row in rows or ()]
        rows = self.connection.execute(self._q.load_entries, {"run_id": run_id})
        return [Entry(*row) for row in rows]

    @translated("load published values")
    def load_published(self, run_id: str) -> dict[str, Any]:
        published: dict[str, Any] = {}
        for name, value in self.connection.execute(self._q.load_published, {"run_id": run_id}):
            published[name] = value
        return published

    # attempts --------------------------------------------------------------
    @translated("record a heartbeat")
    def record_heartbeat(self, run_id: str, seq: int, attempt: Attempt) -> bool:
        params = {
            "b_run_id": run_id,
            "b_seq": seq,
            "b_number": attempt.number,
            "b_started_at": attempt.started_at,
            "b_worker": attempt.worker,
            "b_heartbeat": attempt.heartbeat,
        }
        return self.connection.execute(self._q.record_heartbeat, params).first() is not None

    @translated("load attempts")
    def load_attempts(self, run_id: str) -> dict[int, list[Attempt]]:
        found: dict[int, list[Attempt]] = {}
        for row in self.connection.execute(self._q.load_attempts, {"run_id": run_id}):
            found.setdefault(row[0], []).append(Attempt(*row[1:]))
        return found

    # audit -----------------------------------------------------------------
    @translated("load audit events")
    def load_audit(self, run_id: str) -> list[AuditEvent]:
        rows = self.connection.execute(self._q.load_audit, {"run_id": run_id})
        return [AuditEvent(*row) for row in rows]

    # buffered events -------------------------------------------------------
    @translated("buffer an event")
    def add_event(self, run_id: str, name: str, data: Any, at: datetime) -> int:
        params = {"run_id": run_id, "name": name, "data": data, "created_at": at}
        event_id: int = self.connection.execute(self._q.add_event, params).scalar_one()
        return event_id

    @translated("load buffered events")
    def load_events(self, run_id: str) -> list[BufferedEvent]:
        rows = self.connection.execute(self._q.load_events, {"run_id": run_id})
        return [BufferedEvent(id=row[0], name=row[1], data=row[2]) for row in rows]

    @translated("delete buffered events")
    def delete_events(self, run_id: str, ids: Sequence[int]) -> None:
        for chunk in iter_chunks(list(ids), CHUNK):
            self.connection.execute(self._q.delete_events, {"run_id": run_id, "ids": chunk})

    # batches ---------------------------------------------------------------
    def write(self, batch: WriteBatch, *, final: bool = False) -> list[Job]:
        try:
            return self._write(batch, final)
        except ConflictError as exc:
            if not batch.runs_insert:
                raise
            ids = ", ".join(run.id for run in batch.runs_insert)
            raise ConflictError(
                f"could not create run {ids}: a run with that id (or workflow and "
                f"idempotency key) exists; nothing of the change was written ({exc})"
            ) from exc.__cause__

    @translated("write a state change")
    def _write(self, batch: WriteBatch, final: bool) -> list[Job]:
        if batch.payloads:
            # A debounced start's new input, not a step's path: a plain statement ahead
            # of the rest of the batch, in the same transaction.
            if self._autocommit:
                raise StorageError(
                    "a change that replaces a run's payload needs a transaction "
                    "(Store.transaction() without autocommit=True)"
                )
            self._set_payloads(batch.payloads)
            batch = dataclasses.replace(batch, payloads=[])
            if not batch:
                return []
        if self._sqlite_writer is not None:  # in-process: statements on the driver's cursor
            pooled = self._raw if self._raw is not None else self.connection.connection
            lite = cast(sqlite3.Connection, pooled.driver_connection)
            return self._sqlite_writer.write(lite, batch)
        # PostgreSQL: one call of the write function (of the one creating runs first)
        sql = self._create_sql if batch.runs_insert else self._write_sql
        assert sql is not None
        now = datetime.now(timezone.utc)
        params = pg_write.write_params(batch, self._store.notify_channel, now)
        # Straight to psycopg: the call is the whole hot path of a step, and SQLAlchemy's
        # execution layer (context, events, result) cost more client time per step than
        # encoding the batch (benchmarks/README.md). Same connection, same transaction.
        import psycopg  # loaded already: the engine's driver

        driver = self._pg_driver()
        try:
            if final and self._commits_with_write(driver):
                # The transaction's last statement: its COMMIT travels with it (the
                # commit at the end of the transaction then finds nothing to do). A
                # failing write skips the COMMIT, and the transaction rolls back.
                with driver.pipeline():
                    cursor = driver.execute(sql, params)
                    driver.execute("COMMIT")
                row = cursor.fetchone()
            else:
                row = driver.execute(sql, params).fetchone()
        except (psycopg.Error, TypeError, ValueError) as exc:
            raise self._driver_failed(driver, "write a state change", exc) from exc
        assert row is not None
        return pg_write.stored_jobs(batch, row[0], now)

    @translated("replace a run's payload")
    def _set_payloads(self, payloads: Sequence[tuple[str, dict[str, Any]]]) -> None:
        for run_id, payload in payloads:
            given = {"b_id": run_id, "payload": payload}
            if self.connection.execute(self._q.set_payload, given).rowcount != 1:
                raise StorageError(f"cannot set the payload of run {run_id}: it does not exist")

    def _driver_failed(
        self, driver: psycopg.Connection[Any], action: str, exc: Exception
    ) -> StorageError:
        """The error of a statement sent straight to psycopg; a broken pooled connection
        taken for it does not go back into the pool."""
        if self._raw is not None and driver.broken:
            self._raw.invalidate(exc)
            self._raw = None
        return storage_error(action, exc)

    def _commits_with_write(self, driver: object) -> bool:
        """Whether the final write may carry the COMMIT: this transaction opened the
        connection's transaction itself (a host's, like Django's atomic block, commits
        on its own terms), with BEGIN/COMMIT, on a psycopg connection of its pool."""
        import psycopg

        return (
            self.owns_commit
            and not self._autocommit
            and self._conn is not None
            and isinstance(driver, psycopg.Connection)
        )

    def _pg_driver(self) -> psycopg.Connection[Any]:
        """The psycopg connection of this transaction: the SQLAlchemy connection's, or,
        without BEGIN/COMMIT and before any other statement, a pooled one taken for the
        write alone."""
        if self._conn is not None:
            return cast("psycopg.Connection[Any]", self._conn.connection.driver_connection)
        if self._raw is None:
            if not self._autocommit:
                raise StorageError("the transaction is not open")
            try:
                raw = self._store.engine.raw_connection()
            except sa.exc.SQLAlchemyError as exc:
                raise storage_error("connect to the database", exc) from driver_error(exc)
            cast("psycopg.Connection[Any]", raw.driver_connection).autocommit = True
            self._raw = raw
        return cast("psycopg.Connection[Any]", self._raw.driver_connection)

    # jobs ------------------------------------------------------------------
    @translated("claim jobs")
    def claim_jobs(
        self,
        *,
        now: datetime,
        limit: int,
        worker: str,
        lease_until: datetime,
        queues: Mapping[str, Queue] | None = None,
    ) -> list[Job]:
        if limit <= 0:
            return []
        if queues and self._store.flow_claim is not None:
            # PostgreSQL: the queue-aware claim and the plain one pipelined together
            return self._store.flow_claim.claim(
                self._pg_driver(),
                now=now,
                limit=limit,
                worker=worker,
                lease_until=lease_until,
                queues=queues,
                failed=self._driver_failed,
            )
        queued: list[Job] = []
        if queues:
            queued = self._claim_queued(now, limit, worker, lease_until, queues)
            limit -= len(queued)
            if limit <= 0:
                return queued
        return queued + self._claim_plain(now, limit, worker, lease_until)

    def _claim_queued(
        self,
        now: datetime,
        limit: int,
        worker: str,
        lease_until: datetime,
        queues: Mapping[str, Queue],
    ) -> list[Job]:
        """The queue-aware claim on SQLite (``squidmesh/storage/flow_claim.py``),
        serialized across claimers by the database's write lock, so what it counts stays
        true until it commits its leases. PostgreSQL's: ``storage/pg_flow.py``."""
        conn, q = self.connection, self._q
        names = sorted(queues)
        if not conn.execute(q.flow_any, {"names": names, "now": now}).scalar():
            return []
        rows = conn.execute(q.flow_running, {"names": names, "now": now})
        running = {(row[0], row[1]): int(row[2]) for row in rows}
        rated = [name for name in names if queues[name].rate is not None]
        for forget in flow_forgets(queues, rated, t.utc(now)):
            conn.execute(q.flow_forget_starts, forget)
        starts = (
            {row[0]: int(row[1]) for row in conn.execute(q.flow_starts, {"names": rated})}
            if rated
            else {}
        )
        at = t.utc(now)
        if random.random() < flow_claim.PRUNE_CHANCE:
            conn.execute(q.flow_forget_keys, {"before": at - flow_claim.PRUNE_SERVED_AFTER})
        heads = flow_heads(
            conn.execute(q.flow_waiting, {"names": names, "now": now, "n": limit}),
            stale=at - timedelta(seconds=liveness.STALE_LEASE_SECONDS),
            owner_lives=liveness.alive_here,
        )
        chosen = heads.choose(running=running, starts=starts, queues=queues, limit=limit)
        if not chosen:
            return []
        ids = [item.id for item in chosen]
        conn.execute(q.flow_lease, {"ids": ids, "w": worker, "until": lease_until, "now": now})
        begun, turns = flow_grants(chosen, queues, at)
        if begun:
            conn.execute(q.flow_add_starts, begun)
        conn.execute(q.flow_serve, turns)
        return [heads.jobs[i] for i in ids]

    def _claim_plain(
        self, now: datetime, limit: int, worker: str, lease_until: datetime
    ) -> list[Job]:
        conn, q = self.connection, self._q
        if q.dialect == "postgresql":
            params: dict[str, Any] = {"now": now, "n": limit, "w": worker, "until": lease_until}
            rows = list(conn.execute(q.claim_jobs, params))
        else:
            params = {"now": now, "n": limit * 4 + 16}
            stale = t.utc(now) - timedelta(seconds=liveness.STALE_LEASE_SECONDS)
            rows = [
                row
                for row in conn.execute(q.claim_jobs, params)
                if row[8] is None or row[8] <= stale or not liveness.alive_here(row[7])
            ][:limit]
            if rows:
                lease = {"ids": [row[0] for row in rows], "w": worker, "until": lease_until}
                conn.execute(q.lease_jobs, lease)
        return claimed_jobs(rows)

    @translated("look for other waiting work of a queue")
    def others_waiting(self, queue: str, key: str | None, priority: int, now: datetime) -> bool:
        params = {"queue": queue, "key": key, "priority": priority, "now": now}
        statement = self._q.flow_others if key is not None else self._q.flow_others_keyed
        return bool(self.connection.execute(statement, params).scalar())

    @translated("count the jobs of each queue")
    def queue_stats(self, now: datetime) -> list[tuple[str, str | None, int, int]]:
        rows = self.connection.execute(self._q.queue_stats, {"now": now})
        return [(row[0], row[1], int(row[2] or 0), int(row[3] or 0)) for row in rows]

    @translated("find a debounced run")
    def find_debounced(self, marker: str) -> QueuedJob | None:
        conn, q = self.connection, self._q
        if q.dialect == "postgresql":
            conn.execute(q.flow_lock, {"key": f"squidmesh-debounce:{marker}"})
        for row in conn.execute(q.debounced, {"marker": marker}):
            job = job_from_row(row)
            if (job.data or {}).get("debounce") == marker:
                return QueuedJob(job, None, None)
        return None

    @translated("find a job's place in its queue")
    def queue_position(self, job_id: int, now: datetime) -> int | None:
        found = self.connection.execute(self._q.queue_job, {"id": job_id, "now": now}).first()
        if found is None:
            return None
        params = {"queue": found[0], "priority": found[1], "run_at": found[2], "id": job_id}
        ahead = self.connection.execute(self._q.queue_ahead, {**params, "now": now}).scalar()
        return int(ahead or 0) + 1

    @translated("find when a rate-limited queue reopens")
    def rate_reopens(self, queues: Mapping[str, Queue], now: datetime) -> datetime | None:
        found: datetime | None = None
        for name in sorted(queues):
            rate = queues[name].rate
            if rate is None:
                continue
            since = t.utc(now) - timedelta(seconds=rate.per)
            params = {"queue": name, "since": since, "now": now}
            count, oldest = self.connection.execute(self._q.rate_window, params).one()
            if oldest is not None and int(count or 0) > 0:
                reopens = t.utc(oldest) + timedelta(seconds=rate.per)
                found = reopens if found is None else min(found, reopens)
        return found

    @translated("count a queue's starts")
    def queue_starts(self, queue: str, since: datetime) -> int:
        params = {"queue": queue, "since": since}
        return int(self.connection.execute(self._q.queue_starts, params).scalar() or 0)

    @translated("renew job leases")
    def renew_lease(
        self,
        job_ids: Sequence[int],
        worker: str,
        lease_until: datetime,
        *,
        now: datetime | None = None,
    ) -> None:
        params: dict[str, Any] = {"w": worker, "until": lease_until}
        for chunk in iter_chunks(list(job_ids), CHUNK):
            self.connection.execute(self._q.renew_lease, {**params, "ids": chunk})

    @translated("give a job back")
    def release_job(
        self, job_id: int, *, run_at: datetime, failure: str | None, park_after: int
    ) -> bool:
        conn = self.connection
        found = conn.execute(self._q.job_failures, {"b_id": job_id}).first()
        if found is None:
            return False
        failures, last_error = int(found[0]), found[1]
        if failure is not None:
            failures, last_error = failures + 1, failure
        parked = failure is not None and failures >= park_after
        params: dict[str, Any] = {
            "b_id": job_id,
            "w": PARKED if parked else None,
            "until": PARKED_UNTIL if parked else None,
            "run_at": run_at,
            "failures": failures,
            "last_error": last_error,
        }
        conn.execute(self._q.release_job, params)
        return parked

    # workers ---------------------------------------------------------------
    @translated("register a worker")
    def register_worker(self, owner: str, host: str, pid: int, at: datetime) -> None:
        self.connection.execute(
            self._q.register_worker,
            {"id": owner, "host": host, "pid": pid, "started_at": at, "heartbeat_at": at},
        )

    @translated("record a worker's heartbeat")
    def touch_worker(self, owner: str, at: datetime) -> None:
        self.connection.execute(self._q.touch_worker, {"b_id": owner, "at": at})

    @translated("record a worker's stop")
    def stop_worker(self, owner: str, at: datetime) -> None:
        self.connection.execute(self._q.stop_worker, {"b_id": owner, "at": at})

    @translated("tell whether a worker is alive")
    def owner_alive(self, owner: str) -> bool:
        if self._q.dialect != "postgresql":
            return liveness.alive_here(owner)
        # Taking the owner's lock succeeds only when no session holds it (held until
        # this transaction ends, which is harmless: the owner is gone).
        return not self.connection.execute(self._q.owner_gone, {"owner": owner}).scalar_one()

    @translated("read the database's clock")
    def database_time(self) -> datetime | None:
        if self._q.dialect != "postgresql":
            return None
        found: datetime = self.connection.execute(self._q.database_time).scalar_one()
        return found

    @translated("find the next job time")
    def next_job_time(self) -> datetime | None:
        found: datetime | None = self.connection.execute(self._q.next_job_time).scalar()
        return found

    @translated("count the jobs ready to run")
    def count_ready_jobs(self, now: datetime) -> int:
        return int(self.connection.execute(self._q.count_ready_jobs, {"now": now}).scalar_one())

    @translated("load the jobs of a run")
    def load_jobs(self, run_id: str) -> list[QueuedJob]:
        rows = self.connection.execute(self._q.load_jobs, {"run_id": run_id})
        return [
            QueuedJob(job_from_row(row), row[7], row[8], int(row[9] or 0), row[10]) for row in rows
        ]

    @translated("find runs without jobs")
    def find_orphans(
        self,
        statuses: Sequence[str],
        updated_before: datetime,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[tuple[str, int, datetime]]:
        params: dict[str, Any] = {
            "statuses": list(statuses),
            "cutoff": updated_before,
            "n": max(limit, 0),
        }
        query = self._q.find_orphans
        if after is not None:
            query = self._q.find_orphans_after
            params["after_at"], params["after_id"] = after
        rows = self.connection.execute(query, params)
        return [(str(row[0]), int(row[1]), row[2]) for row in rows]

    # cron ------------------------------------------------------------------
    @translated("record a cron tick")
    def add_cron_tick(self, workflow: str, trigger: str, fire_time: datetime, run_id: str) -> None:
        params = {
            "workflow": workflow,
            "trigger": trigger,
            "fire_time": fire_time,
            "run_id": run_id,
        }
        self.connection.execute(self._q.add_cron_tick, params)

    @translated("read the last cron tick")
    def last_cron_tick(self, workflow: str, trigger: str) -> datetime | None:
        params = {"workflow": workflow, "trigger": trigger}
        found: datetime | None = self.connection.execute(self._q.last_cron_tick, params).scalar()
        return found

    # retention -------------------------------------------------------------
    @translated("find prunable runs")
    def find_prunable(
        self, statuses: Sequence[str], updated_before: datetime, limit: int
    ) -> list[str]:
        # One index range scan per status (status, created_at < cutoff), stopping after
        # ``limit`` matches: cheap however many runs are stored.
        found: list[str] = []
        for status in dict.fromkeys(statuses):
            if len(found) >= limit:
                break
            params = {"status": status, "cutoff": updated_before, "n": limit - len(found)}
            found.extend(self.connection.execute(self._q.find_prunable, params).scalars())
        return found

    @translated("delete runs")
    def delete_runs(self, run_ids: Sequence[str]) -> int:
        conn, deleted = self.connection, 0
        for chunk in iter_chunks(list(dict.fromkeys(run_ids)), CHUNK):
            for statement in self._q.delete_runs:
                conn.execute(statement, {"ids": chunk})
            deleted += conn.execute(self._q.delete_run_rows, {"ids": chunk}).rowcount
        return deleted


if TYPE_CHECKING:
    _check: Store = SqlStore(sa.create_engine("sqlite://"))
