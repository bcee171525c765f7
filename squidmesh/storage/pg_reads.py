"""Reading a run under its lock on PostgreSQL in one round trip.

A change that locks a run whose interpreter this process does not hold at the run's
version needs its history too. Sent through psycopg's pipeline, BEGIN, the locking read
and the history read travel together. They stay two statements on purpose: under READ
COMMITTED each statement takes its snapshot when it starts, so the history is read
after the lock is granted and includes whatever the writer this one waited for
committed. (One statement reading the history in a subquery would use the snapshot of
before the wait: the run at its new version beside its old history.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from squidmesh.core.history import Entry
from squidmesh.storage import tables as t
from squidmesh.storage.base import ENTRY_COLUMNS, RUN_FIELDS, RunRecord

__all__ = ["LockedReads"]

_TIMES = tuple(i for i, name in enumerate(RUN_FIELDS) if name in ("created_at", "updated_at"))


class LockedReads:
    """The two statements of ``Transaction.lock_run_with_history`` for ``schema``."""

    def __init__(self, schema: str) -> None:
        runs, entries = f"{schema}.squidmesh_runs", f"{schema}.squidmesh_entries"
        #: the run, locked as ``lock_run`` locks it (not blocking foreign-key checks)
        self.lock = (
            f"SELECT {', '.join(RUN_FIELDS)} FROM {runs} WHERE id = %(id)s FOR NO KEY UPDATE"
        )
        #: its history as one JSON document (NULL when the caller knows this version)
        self.history = (
            f"SELECT CASE WHEN (SELECT version FROM {runs} WHERE id = %(id)s) "
            "IS DISTINCT FROM %(known)s::integer THEN (SELECT COALESCE(json_agg("
            f"json_build_array({', '.join(ENTRY_COLUMNS)}) ORDER BY seq), '[]'::json) "
            f"FROM {entries} WHERE run_id = %(id)s) END"
        )

    @staticmethod
    def run(row: Sequence[Any]) -> RunRecord:
        """The run of a ``lock`` row as psycopg returns it (timestamps made UTC, as
        ``tables.UtcDateTime`` makes them)."""
        values = list(row)
        for index in _TIMES:
            values[index] = t.utc(values[index])
        return RunRecord(*values)

    @staticmethod
    def entries(document: Sequence[Sequence[Any]]) -> list[Entry]:
        return [Entry(*row) for row in document]
