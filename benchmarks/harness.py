"""Driving squidmesh for the benchmarks: a Mesh on a fresh database, completion waits."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import psycopg

import squidmesh as sm
from benchmarks import flows
from benchmarks.common import sqlalchemy_url

__all__ = ["Completion", "open_mesh"]

WORKFLOWS = (flows.sequence, flows.approval_flow)


@contextlib.contextmanager
def open_mesh(url: str, **kwargs: Any) -> Iterator[sm.Mesh]:
    """A migrated Mesh on the database at ``url`` (libpq form); closed afterwards."""
    mesh = sm.Mesh(sqlalchemy_url(url), workflows=WORKFLOWS, **kwargs)
    try:
        mesh.migrate()
        yield mesh
    finally:
        mesh.close()


class Completion:
    """Counts completed runs over a separate autocommit connection (not through the
    Mesh under test, so its statements are not counted against squidmesh)."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def count(self, status: str = "completed") -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM squidmesh.squidmesh_runs WHERE status = %s", (status,)
        ).fetchone()
        return int(row[0]) if row else 0

    def not_done(self) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT status, count(*) FROM squidmesh.squidmesh_runs "
            "WHERE status <> 'completed' GROUP BY status"
        ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def wait(self, expected: int, timeout: float) -> float:
        """Wait until ``expected`` runs are completed; returns the perf_counter then.

        Call it once the probe saw every last step start: only the final commit(s)
        remain, so polling every millisecond costs little and adds little error.
        """
        deadline = time.perf_counter() + timeout
        while True:
            if self.count() >= expected:
                return time.perf_counter()
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"{expected} runs not completed after {timeout}s: {self.not_done()}"
                )
            time.sleep(0.001)

    def __enter__(self) -> Completion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
