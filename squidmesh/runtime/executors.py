"""The executor boundary: how jobs leave a transaction and come back to ``perform``.

An executor receives the jobs a state change produced, inside that change's transaction
(``enqueue(jobs, connection=tx)``), so a job exists exactly when the change committed.
The host later delivers each job back through ``mesh.perform(job)``, which is idempotent.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from squidmesh.core.records import Job
from squidmesh.storage.base import JobWrite, Store, Transaction, WriteBatch

__all__ = [
    "AfterCommit",
    "Binds",
    "BoundMesh",
    "DatabaseExecutor",
    "Executor",
    "ExecutorCapabilities",
    "InlineExecutor",
    "capabilities_of",
]


@dataclasses.dataclass(frozen=True)
class ExecutorCapabilities:
    """What an executor does beyond ``enqueue``, declared by the executor itself as its
    ``capabilities`` attribute (an executor without one has none of these)."""

    #: every job is a row of squidmesh's jobs table written by the state change itself
    #: (``enqueue`` is not called): workers claim the rows, and a run without any row
    #: has nothing that will move it (the sweeper may act on that)
    jobs_in_table: bool = False
    #: the Mesh writes the jobs itself, as rows of the change's own batch, instead of
    #: calling ``enqueue`` (one statement fewer per step); only for executors whose
    #: ``enqueue`` would insert exactly those rows
    batched: bool = False
    #: the Mesh calls ``executor.bind(mesh)`` once, when it is built
    binds: bool = False
    #: the Mesh calls ``executor.after_commit()`` after each commit that produced jobs
    after_commit: bool = False


#: an executor that declares nothing: ``enqueue`` is all it does
NO_CAPABILITIES = ExecutorCapabilities()


def capabilities_of(executor: object) -> ExecutorCapabilities:
    """The capabilities ``executor`` declares (none when it declares none)."""
    declared = getattr(executor, "capabilities", None)
    return declared if isinstance(declared, ExecutorCapabilities) else NO_CAPABILITIES


class BoundMesh(Protocol):
    """What an executor that ``binds`` may use of its Mesh."""

    @property
    def store(self) -> Store: ...

    def perform(self, job: Job | Mapping[str, Any]) -> None: ...

    def drain(self, *, limit: int | None = None) -> int: ...


class Binds(Protocol):
    """An executor with ``ExecutorCapabilities(binds=True)``."""

    def bind(self, mesh: BoundMesh) -> None: ...


class AfterCommit(Protocol):
    """An executor with ``ExecutorCapabilities(after_commit=True)``."""

    def after_commit(self) -> None: ...


@runtime_checkable
class Executor(Protocol):
    """Hands jobs to something that will call ``mesh.perform(job)`` later.

    ``connection`` is the squidmesh transaction the jobs were produced in; its
    ``.connection`` attribute is the SQLAlchemy ``Connection`` (None on the in-memory
    store), for executors that keep an outbox in the same database.
    """

    def enqueue(self, jobs: Sequence[Job], *, connection: Transaction) -> None: ...


class DatabaseExecutor:
    """The default: jobs are rows in squidmesh's jobs table, written in the same
    transaction as the change that produced them, and consumed by workers
    (``mesh.worker()``, ``squidmesh worker``) or ``mesh.drain()``."""

    capabilities = ExecutorCapabilities(jobs_in_table=True, batched=True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass with an enqueue of its own wants it called: its jobs cannot be
        # batched past it unless it says so by declaring capabilities itself.
        if "enqueue" in vars(cls) and "capabilities" not in vars(cls):
            cls.capabilities = dataclasses.replace(cls.capabilities, batched=False)

    def enqueue(self, jobs: Sequence[Job], *, connection: Transaction) -> None:
        if jobs:
            connection.write(WriteBatch(jobs_insert=[JobWrite(job) for job in jobs]))


class InlineExecutor(DatabaseExecutor):
    """Runs due jobs in the calling thread right after each commit.

    Jobs are still stored first, so delayed work (sleeps, retry backoff, timeouts) is
    durable: a later ``mesh.drain()`` (or a worker) picks it up, even after a restart.
    """

    capabilities = ExecutorCapabilities(
        jobs_in_table=True, batched=True, binds=True, after_commit=True
    )

    def __init__(self) -> None:
        self._local = threading.local()
        self._mesh: BoundMesh | None = None

    def bind(self, mesh: BoundMesh) -> None:
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
