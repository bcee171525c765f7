"""The executor boundary: how jobs leave a transaction and come back to ``perform``.

An executor receives the jobs a state change produced, inside that change's transaction
(``enqueue(jobs, connection=tx)``), so a job exists exactly when the change committed.
The host later delivers each job back through ``mesh.perform(job)``, which is idempotent.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from squidmesh.core.records import Job

__all__ = ["DatabaseExecutor", "Executor", "InlineExecutor"]


@runtime_checkable
class Executor(Protocol):
    """Hands jobs to something that will call ``mesh.perform(job)`` later.

    ``connection`` is the squidmesh transaction the jobs were produced in; its
    ``.connection`` attribute is the SQLAlchemy ``Connection`` (None on the in-memory
    store), for executors that keep an outbox in the same database.
    """

    def enqueue(self, jobs: Sequence[Job], *, connection: Any) -> None: ...


class DatabaseExecutor:
    """The default: jobs are rows in squidmesh's jobs table, written in the same
    transaction as the change that produced them, and consumed by workers
    (``mesh.worker()``, ``squidmesh worker``) or ``mesh.drain()``."""

    #: every job of a waiting run is a row of the jobs table until it is performed, so a
    #: worker's sweeper may treat an active run without any row as stuck
    jobs_in_table = True

    def enqueue(self, jobs: Sequence[Job], *, connection: Any) -> None:
        if jobs:
            connection.insert_jobs(jobs)


class InlineExecutor(DatabaseExecutor):
    """Runs due jobs in the calling thread right after each commit.

    Jobs are still stored first, so delayed work (sleeps, retry backoff, timeouts) is
    durable: a later ``mesh.drain()`` (or a worker) picks it up, even after a restart.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._mesh: Any = None

    def bind(self, mesh: Any) -> None:
        self._mesh = mesh

    def after_commit(self) -> None:
        # Work triggered while draining is picked up by the drain loop already running in
        # this thread; re-entering would recurse once per step.
        if self._mesh is None or getattr(self._local, "active", False):
            return
        self._local.active = True
        try:
            self._mesh.drain()
        finally:
            self._local.active = False
