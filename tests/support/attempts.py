"""A run's attempts as squidmesh records them, read from the database for assertions.

A step's first attempt is recorded by its history entry while it runs and, when it
succeeds without a heartbeat, for good; other attempts have rows in the attempts table.
Tests that count attempts in the database read them the way every view does
(``squidmesh.core.state.with_entry_attempts``), through the ``Store`` port, not from
the attempts table alone.
"""

from __future__ import annotations

from collections.abc import Iterable

from squidmesh.core.state import with_entry_attempts
from squidmesh.storage import open_store

__all__ = ["recorded_attempts"]


def recorded_attempts(url: str, run_ids: Iterable[str]) -> list[tuple[str, int, int, str]]:
    """``(run_id, seq, number, status)`` of every attempt of ``run_ids``, in that order
    (``url``: the SQLAlchemy form squidmesh takes)."""
    store = open_store(url)
    try:
        found = []
        with store.transaction() as tx:
            for run_id in sorted(run_ids):
                rows = tx.load_attempts(run_id)
                attempts = with_entry_attempts(tx.load_entries(run_id), rows)
                for seq in sorted(attempts):
                    found += [(run_id, seq, a.number, a.status) for a in attempts[seq]]
        return found
    finally:
        store.close()
