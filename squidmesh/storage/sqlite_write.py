"""Writing a state change on SQLite: the driver's cursor, statements made once.

SQLite runs in the process, so a round trip costs nothing; what a step pays for is the
work around each statement. Through SQLAlchemy's execution layer (compiling, caching,
events, result objects) that was about a tenth of a millisecond per statement, eight
statements per step: more than the commit itself. This writer keeps SQLAlchemy's part
where it matters, the encoding of each column (``bind_processor`` of the column's type in
``tables.py``, so values are stored exactly as the other statements store them), and
sends plain SQL, written once per store from the same tables, straight to the
``sqlite3`` cursor of the open transaction.

SQLite rewrites an index's entry whenever an UPDATE sets one of the index's columns, even
to the value already stored, and every index page it touches is written to the WAL at
commit: a step that set a run's ``status`` and a carried-on job's ``run_id`` and
``run_at`` to what they were wrote nine pages where five hold what changed. So an update
sets the columns no index holds in one statement (the one that checks the version, or
that the job is still there), and the indexed ones in a second that matches only when
one of them differs (``IS NOT``, which compares NULLs too). PostgreSQL
compares the values itself (a HOT update), so ``pg_write`` needs none of this.

Every check of ``Transaction.write`` holds here too (the contract suite runs the same
tests on all three stores): each run written must be at the
version before its new one (the update names it), each guard at its version, each entry
updated present, each job carried on still there; otherwise ``ConcurrentChangeError``
(or ``StorageError``) and the caller's transaction rolls back, so nothing is written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from squidmesh.core.records import Job
from squidmesh.errors import ConcurrentChangeError, StorageError
from squidmesh.storage import tables as t
from squidmesh.storage.base import (
    ENTRY_COLUMNS,
    ENTRY_FIELDS,
    ENTRY_MUTABLE_COLUMNS,
    RUN_MUTABLE_FIELDS,
    JobWrite,
    WriteBatch,
)

__all__ = ["SqliteWriter"]

_DIALECT = sqlite.dialect()
#: Entry fields by column (the column ``ord`` holds ``Entry.order``: ORDER is reserved)
_FIELD = {c: f for c, f in zip(ENTRY_COLUMNS, ENTRY_FIELDS, strict=True) if c != f}
#: the job columns a change writes (``failures`` and ``last_error`` start over)
_JOB_COLUMNS = ("kind", "run_id", "seq", "attempt", "run_at", "data", "worker", "lease_until")


def _encoder(column: sa.Column[Any]) -> Callable[[Any], Any]:
    """How SQLAlchemy would bind a value of ``column`` on SQLite."""
    process = column.type.dialect_impl(_DIALECT).bind_processor(_DIALECT)
    return process if process is not None else _same


def _same(value: Any) -> Any:
    return value


class _Row:
    """The encoders of some columns of a table, in order."""

    def __init__(self, table: sa.Table, columns: Sequence[str]) -> None:
        self.columns = tuple(columns)
        self._encoders = tuple(_encoder(table.c[c]) for c in self.columns)
        self._fields = tuple(_FIELD.get(c, c) for c in self.columns)

    def of(self, record: Any, **given: Any) -> tuple[Any, ...]:
        """The encoded values of ``record``'s fields (or of ``given``, by column)."""
        return tuple(
            encode(given[c] if c in given else getattr(record, f))
            for c, f, encode in zip(self.columns, self._fields, self._encoders, strict=True)
        )


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _indexed(table: sa.Table) -> frozenset[str]:
    """The columns of ``table`` some index holds (its primary key aside)."""
    return frozenset(c.name for index in table.indexes for c in index.columns)


class _Update:
    """An UPDATE of some columns of a table's row, by ``key`` and a check: the columns
    no index holds in the statement that checks, the indexed ones in a second statement
    that matches only where one of their values differs (the module's docstring says
    why)."""

    def __init__(self, table: sa.Table, columns: Sequence[str], *, key: str, check: str) -> None:
        indexed = _indexed(table)
        plain = [c for c in columns if c not in indexed]
        moved = [c for c in columns if c in indexed]
        self.sql = f"UPDATE {table.name} SET {', '.join(f'{c} = ?' for c in plain)} {check}"
        self._plain = _Row(table, plain)
        self._moved_sql = (
            f"UPDATE {table.name} SET {', '.join(f'{c} = ?' for c in moved)} "
            f"WHERE {key} = ? AND ({' OR '.join(f'{c} IS NOT ?' for c in moved)})"
            if moved
            else None
        )
        self._moved = _Row(table, moved)
        self._key = _Row(table, (key,))

    def execute(
        self, cur: sqlite3.Cursor, record: Any, checked: Sequence[Any], **given: Any
    ) -> bool:
        """Update the row of ``record``; False when the check matched no row (nothing
        was written then)."""
        cur.execute(self.sql, (*self._plain.of(record, **given), *checked))
        if cur.rowcount != 1:
            return False
        if self._moved_sql is not None:
            values = self._moved.of(record, **given)
            cur.execute(self._moved_sql, (*values, *self._key.of(record, **given), *values))
        return True


class SqliteWriter:
    """The statements of a state change on SQLite, and how to fill them from a batch."""

    def __init__(self) -> None:
        entry_cols = [c.name for c in t.entries.columns]
        attempt_cols = [c.name for c in t.attempts.columns]
        attempt_values = [c for c in attempt_cols if c not in ("run_id", "seq", "number")]
        audit_cols = [c.name for c in t.audit_events.columns if c.name != "id"]

        self._run = _Update(
            t.runs, RUN_MUTABLE_FIELDS, key="id", check="WHERE id = ? AND version = ?"
        )
        run_cols = [c.name for c in t.runs.columns]
        self._run_new = _Row(t.runs, run_cols)
        self._entry_new = _Row(t.entries, entry_cols)
        self._entry_set = _Row(t.entries, (*ENTRY_MUTABLE_COLUMNS, "run_id", "seq"))
        self._attempt = _Row(t.attempts, attempt_cols)
        self._audit = _Row(t.audit_events, audit_cols)
        self._job = _Row(t.jobs, (*_JOB_COLUMNS, "created_at"))
        self._job_set = _Update(
            t.jobs,
            (*_JOB_COLUMNS, "created_at", "failures", "last_error"),
            key="id",
            check="WHERE id = ?",
        )

        def sets(columns: Sequence[str]) -> str:
            return ", ".join(f"{c} = ?" for c in columns)

        self.run_insert_sql = (
            f"INSERT INTO squidmesh_runs ({', '.join(run_cols)}) VALUES ({_marks(len(run_cols))})"
        )
        self.guard_sql = "SELECT version FROM squidmesh_runs WHERE id = ?"
        self.entry_insert_sql = (
            f"INSERT INTO squidmesh_entries ({', '.join(entry_cols)}) "
            f"VALUES ({_marks(len(entry_cols))})"
        )
        self.entry_update_sql = (
            f"UPDATE squidmesh_entries SET {sets(ENTRY_MUTABLE_COLUMNS)} "
            "WHERE run_id = ? AND seq = ?"
        )
        self.attempt_sql = (
            f"INSERT INTO squidmesh_attempts ({', '.join(attempt_cols)}) "
            f"VALUES ({_marks(len(attempt_cols))}) ON CONFLICT (run_id, seq, number) DO UPDATE "
            f"SET {', '.join(f'{c} = excluded.{c}' for c in attempt_values)}"
        )
        self.audit_sql = (
            f"INSERT INTO squidmesh_audit_events ({', '.join(audit_cols)}) "
            f"VALUES ({_marks(len(audit_cols))})"
        )
        self.job_delete_sql = "DELETE FROM squidmesh_jobs WHERE id = ?"
        job_cols = (*_JOB_COLUMNS, "created_at")
        self.job_insert_sql = (
            f"INSERT INTO squidmesh_jobs ({', '.join(job_cols)}) VALUES ({_marks(len(job_cols))})"
        )

    def write(self, conn: sqlite3.Connection, batch: WriteBatch) -> list[Job]:
        """Apply ``batch`` inside the transaction open on ``conn``; the stored jobs, with
        their ids, in batch order."""
        cur = conn.cursor()
        try:
            if batch.runs_insert:
                cur.executemany(
                    self.run_insert_sql, [self._run_new.of(r) for r in batch.runs_insert]
                )
            for run_id, version in batch.guards:
                row = cur.execute(self.guard_sql, (run_id,)).fetchone()
                if row is None or row[0] != version:
                    raise ConcurrentChangeError(
                        f"run {run_id} was changed concurrently; retry the change"
                    )
            for run in batch.runs:
                if not self._run.execute(cur, run, (run.id, run.version - 1)):
                    raise ConcurrentChangeError(
                        f"run {run.id} was changed concurrently; retry the change"
                    )
            if batch.entries_insert:
                cur.executemany(
                    self.entry_insert_sql,
                    [self._entry_new.of(e, run_id=r) for r, e in batch.entries_insert],
                )
            if batch.entries_update:
                cur.executemany(
                    self.entry_update_sql,
                    [self._entry_set.of(e, run_id=r) for r, e in batch.entries_update],
                )
                if cur.rowcount != len(batch.entries_update):
                    missing = sorted({r for r, _ in batch.entries_update})
                    raise StorageError(
                        f"cannot update history of run {', '.join(missing)}: an entry to "
                        "update does not exist; nothing of this change was written"
                    )
            if batch.attempts:
                cur.executemany(
                    self.attempt_sql,
                    [self._attempt.of(a, run_id=r, seq=s) for r, s, a in batch.attempts],
                )
            if batch.audits:
                cur.executemany(
                    self.audit_sql, [self._audit.of(a, run_id=r) for r, a in batch.audits]
                )
            if batch.jobs_delete:
                cur.executemany(self.job_delete_sql, [(i,) for i in batch.jobs_delete])
            now = datetime.now(timezone.utc)
            return [self._job_write(cur, w, now) for w in batch.jobs_insert]
        finally:
            cur.close()

    def _job_write(self, cur: sqlite3.Cursor, write: JobWrite, now: datetime) -> Job:
        job = write.job
        run_at = t.utc(job.run_at) if job.run_at is not None else now
        given = {
            "run_at": run_at,
            "worker": write.worker,
            "lease_until": write.lease_until,
            "created_at": now,
        }
        if write.replaces is None:
            cur.execute(self.job_insert_sql, self._job.of(job, **given))
            job_id = cur.lastrowid
        else:
            # A job taking over a row starts its count of failures over.
            replaced = self._job_set.execute(
                cur, job, (write.replaces,), id=write.replaces, failures=0, last_error=None, **given
            )
            if not replaced:
                raise ConcurrentChangeError(
                    f"job {write.replaces} of run {job.run_id} is gone: another worker "
                    "finished it; retry the change"
                )
            job_id = write.replaces
        return Job(
            kind=job.kind,
            run_id=job.run_id,
            seq=job.seq,
            attempt=job.attempt,
            run_at=run_at,
            data=job.data,
            id=job_id,
        )
