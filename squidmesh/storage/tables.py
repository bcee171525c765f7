"""The squidmesh tables, as SQLAlchemy Core metadata.

Tables are declared on the placeholder schema :data:`SCHEMA`; :func:`translate_map` maps it
to the host's schema at execution time (``schema_translate_map``), so one ``MetaData``
serves every host and SQLite (which has no schemas). The hand-written migrations in
``squidmesh/migrations/<dialect>/`` must create exactly these tables; a contract test
reflects both and compares them.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement

from squidmesh.errors import InvalidArgumentError

__all__ = [
    "SCHEMA",
    "UtcDateTime",
    "attempts",
    "audit_events",
    "check_schema_name",
    "cron_ticks",
    "entries",
    "events",
    "flow_keys",
    "flow_starts",
    "jobs",
    "metadata",
    "runs",
    "schema_version",
    "translate_map",
    "utc",
    "workers",
]

#: The placeholder schema every table is declared on.
SCHEMA = "squidmesh"

# Lower case only: an unquoted identifier folds to lower case in PostgreSQL, and the
# NOTIFY channel "<schema>_jobs" must stay within the 63-byte identifier limit.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,57}")

#: Words PostgreSQL reserves (pg_get_keywords() categories R and T, PostgreSQL 15): none
#: can name a schema unquoted. A contract test compares this with the server's catalogue.
PG_RESERVED_WORDS = frozenset(
    """
    all analyse analyze and any array as asc asymmetric authorization binary both case
    cast check collate collation column concurrently constraint create cross
    current_catalog current_date current_role current_schema current_time
    current_timestamp current_user default deferrable desc distinct do else end except
    false fetch for foreign freeze from full grant group having ilike in initially inner
    intersect into is isnull join lateral leading left like limit localtime
    localtimestamp natural not notnull null offset on only or order outer overlaps
    placing primary references returning right select session_user similar some
    symmetric table tablesample then to trailing true union unique user using variadic
    verbose when where window with
    """.split()
)


def check_schema_name(name: str) -> str:
    """``name`` if it is a plain lower-case SQL identifier (it is pasted into DDL)."""
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"invalid schema name {name!r}: use 1-58 lower-case letters, digits and "
            "underscores, not starting with a digit"
        )
    if name in PG_RESERVED_WORDS:
        raise InvalidArgumentError(
            f"invalid schema name {name!r}: it is a reserved word in PostgreSQL's SQL; "
            f"choose another, e.g. {name}_squidmesh"
        )
    return name


def translate_map(dialect: str, schema: str) -> dict[str | None, str | None]:
    """The ``schema_translate_map`` placing the tables in ``schema`` (none on SQLite)."""
    if dialect == "sqlite":
        return {SCHEMA: None}
    return {SCHEMA: check_schema_name(schema)}


def utc(value: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp that is always aware UTC in Python.

    SQLite stores no offset, so values are converted to UTC before they are written (a
    naive value is taken to be UTC) and the naive values read back are marked UTC; this
    also keeps SQLite's text comparisons (``run_at <= :now``) chronological.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else utc(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else utc(value)


class JsonText(sa.types.TypeDecorator[Any]):
    """JSON kept as TEXT on SQLite.

    A column declared JSON has NUMERIC affinity in SQLite, which converts text that looks
    like a number: a stored ``1.0`` came back as the integer 1 and an integer beyond 64
    bits as a float. TEXT affinity keeps the JSON exactly as written.
    """

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        if value is None:
            return None
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        return json.loads(value)


# SQL NULL for None, so "no error" is NULL rather than the JSON literal null. On
# PostgreSQL ``json``, not ``jsonb``: jsonb normalizes numbers (2.6e+16 would come back
# as an integer), json keeps the text as written, so a value reads back exactly.
JSON = sa.JSON(none_as_null=True).with_variant(JsonText(), "sqlite")
# BIGSERIAL on PostgreSQL; on SQLite only "INTEGER PRIMARY KEY" is a rowid alias.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
RUN_ID = sa.String(36)

metadata = sa.MetaData()


def _run_fk() -> sa.ForeignKey:
    return sa.ForeignKey(f"{SCHEMA}.squidmesh_runs.id", ondelete="CASCADE")


runs = sa.Table(
    "squidmesh_runs",
    metadata,
    sa.Column("id", RUN_ID, primary_key=True),
    sa.Column("workflow", sa.Text, nullable=False),
    sa.Column("trigger", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("payload", JSON, nullable=False),
    sa.Column("result", JSON),
    sa.Column("error", JSON),
    sa.Column("reason", sa.Text),
    sa.Column("current_steps", JSON, nullable=False),
    sa.Column("waiting_on", JSON, nullable=False),
    sa.Column("replayed_from_run_id", RUN_ID),
    sa.Column("forked_from_run_id", RUN_ID),
    sa.Column("idempotency_key", sa.Text),
    sa.Column("schedule", JSON),
    sa.Column("cancel_request", JSON),
    sa.Column("pending_outcome", JSON),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    # Schema version 6: the trace the run's spans join (written once, at insert).
    sa.Column("trace_context", JSON),
    # Schema version 7: composition (child runs, continue-as-new).
    sa.Column("parent_run_id", RUN_ID),
    sa.Column("parent_seq", sa.Integer),
    sa.Column("continued_from_run_id", RUN_ID),
    sa.Column("continued_as_run_id", RUN_ID),
    sa.UniqueConstraint("workflow", "idempotency_key", name="squidmesh_runs_idempotency_key"),
    # list_runs: newest first, optionally filtered by status or by workflow.
    sa.Index("squidmesh_runs_status_idx", "status", "created_at", "id"),
    sa.Index("squidmesh_runs_workflow_idx", "workflow", "created_at", "id"),
    sa.Index("squidmesh_runs_created_idx", "created_at", "id"),
    # Schema version 4: searching and counting (list_runs filters, count_runs).
    sa.Index("squidmesh_runs_workflow_status_idx", "workflow", "status", "created_at", "id"),
    sa.Index("squidmesh_runs_trigger_idx", "trigger", "created_at", "id"),
    sa.Index("squidmesh_runs_key_idx", "idempotency_key", "created_at", "id"),
    # Schema version 7: the children of a run (inspect_run's children, cancellation).
    sa.Index("squidmesh_runs_parent_idx", "parent_run_id", "created_at", "id"),
    schema=SCHEMA,
)

entries = sa.Table(
    "squidmesh_entries",
    metadata,
    sa.Column("run_id", RUN_ID, _run_fk(), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("input", JSON),
    sa.Column("result", JSON),
    sa.Column("error", JSON),
    sa.Column("parent", sa.Integer),
    sa.Column("ord", sa.Integer),  # Entry.order (ORDER is reserved)
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("meta", JSON, nullable=False),
    sa.Column("compensation", JSON),
    sa.Column("loc", sa.Text),
    # ISO strings, as the history holds them: they round-trip exactly.
    sa.Column("wake_at", sa.Text),
    sa.Column("created_at", sa.Text),
    sa.Column("started_at", sa.Text),
    sa.Column("completed_at", sa.Text),
    schema=SCHEMA,
)

attempts = sa.Table(
    "squidmesh_attempts",
    metadata,
    sa.Column("run_id", RUN_ID, _run_fk(), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", JSON),
    sa.Column("started_at", sa.Text),
    sa.Column("finished_at", sa.Text),
    # the worker running (or that ran) the attempt, and its latest heartbeat
    sa.Column("worker", sa.Text),
    sa.Column("heartbeat", JSON),
    schema=SCHEMA,
)

audit_events = sa.Table(
    "squidmesh_audit_events",
    metadata,
    sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("run_id", RUN_ID, _run_fk(), nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("step", sa.Text),
    sa.Column("actor", sa.Text),
    sa.Column("comment", sa.Text),
    sa.Column("metadata", JSON),
    sa.Column("at", sa.Text),
    sa.Index("squidmesh_audit_events_run_idx", "run_id", "id"),
    schema=SCHEMA,
    # Never reuse ids (SQLite would hand out max(id)+1 again after a delete).
    sqlite_autoincrement=True,
)

events = sa.Table(
    "squidmesh_events",
    metadata,
    sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("run_id", RUN_ID, _run_fk(), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("data", JSON),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Index("squidmesh_events_run_idx", "run_id", "id"),
    schema=SCHEMA,
    sqlite_autoincrement=True,
)


class _JobField(ColumnElement[Any]):
    """A field of a job's JSON data, as the expression of a generated column."""

    inherit_cache = True

    def __init__(self, field: str) -> None:
        self.field = field
        self.type = sa.Integer() if field == "priority" else sa.Text()


@compiles(_JobField, "postgresql")
def _job_field_pg(element: _JobField, compiler: Any, **kw: Any) -> str:
    text = f"data ->> '{element.field}'"
    return f"CAST({text} AS INTEGER)" if element.field == "priority" else text


@compiles(_JobField)
def _job_field_sqlite(element: _JobField, compiler: Any, **kw: Any) -> str:
    text = f"json_extract(data, '$.{element.field}')"
    return f"CAST({text} AS INTEGER)" if element.field == "priority" else text


jobs = sa.Table(
    "squidmesh_jobs",
    metadata,
    sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.Text, nullable=False),
    # No foreign key: cron jobs have no run, and a job may outlive its run harmlessly.
    sa.Column("run_id", RUN_ID),
    sa.Column("seq", sa.Integer),
    sa.Column("attempt", sa.Integer),
    sa.Column("run_at", UtcDateTime, nullable=False),
    sa.Column("data", JSON),
    sa.Column("worker", sa.Text),
    sa.Column("lease_until", UtcDateTime),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # how often performing the job failed, and the last failure: a job failing for
    # storage reasons is parked (leased to "parked") instead of redelivered forever
    sa.Column("failures", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("last_error", sa.Text),
    # flow control (schema version 8): a queued step's job data names its queue, key and
    # priority; generated columns expose them to the queue-aware claim
    sa.Column("queue", sa.Text, sa.Computed(_JobField("queue"), persisted=True)),
    sa.Column("flow_key", sa.Text, sa.Computed(_JobField("flow_key"), persisted=True)),
    sa.Column("priority", sa.Integer, sa.Computed(_JobField("priority"), persisted=True)),
    # claims take the due jobs in (run_at, id) order
    sa.Index("squidmesh_jobs_run_at_idx", "run_at", "id"),
    sa.Index(
        "squidmesh_jobs_queue_idx",
        "queue",
        "flow_key",
        postgresql_where=sa.text("queue IS NOT NULL"),
        sqlite_where=sa.text("queue IS NOT NULL"),
    ),
    # the sweeper finds active runs that have no job
    sa.Index("squidmesh_jobs_run_idx", "run_id"),
    schema=SCHEMA,
    # A stale worker deleting job N must never hit a newer job that reused id N.
    sqlite_autoincrement=True,
)

cron_ticks = sa.Table(
    "squidmesh_cron_ticks",
    metadata,
    sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("workflow", sa.Text, nullable=False),
    sa.Column("trigger", sa.Text, nullable=False),
    sa.Column("fire_time", UtcDateTime, nullable=False),
    sa.Column("run_id", RUN_ID),
    sa.UniqueConstraint("workflow", "trigger", "fire_time", name="squidmesh_cron_ticks_tick"),
    schema=SCHEMA,
    sqlite_autoincrement=True,
)

flow_starts = sa.Table(
    "squidmesh_flow_starts",
    metadata,
    sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("queue", sa.Text, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    # starts of a queue within its rate window
    sa.Index("squidmesh_flow_starts_queue_idx", "queue", "at"),
    schema=SCHEMA,
)

flow_keys = sa.Table(
    "squidmesh_flow_keys",
    metadata,
    sa.Column("queue", sa.Text, primary_key=True),
    sa.Column("flow_key", sa.Text, primary_key=True),
    sa.Column("served_at", UtcDateTime, nullable=False),
    schema=SCHEMA,
)

workers = sa.Table(
    "squidmesh_workers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("heartbeat_at", UtcDateTime, nullable=False),
    sa.Column("stopped_at", UtcDateTime),
    schema=SCHEMA,
)

schema_version = sa.Table(
    "squidmesh_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", UtcDateTime, nullable=False),
    schema=SCHEMA,
)
