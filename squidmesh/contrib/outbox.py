"""The transactional outbox behind the broker executors (Celery, Procrastinate).

A broker is a second system, outside squidmesh's transaction. Publishing inside the
transaction would send jobs of changes that then roll back; publishing after the commit
loses the jobs when the process dies, or the broker is down, in between. So ``enqueue``
only writes the jobs into squidmesh's own jobs table, in the transaction of the change,
leased to ``outbox:<name>`` until the year 9999 (no database worker ever claims them). A
relay hands each row to the broker and deletes it only once the broker accepted it:
after each commit (``after_commit``), on demand (``relay_pending``) and periodically in
a background thread (``start_relay``). Delivery is at-least-once: a relay that dies after
the broker accepted a job but before its delete committed sends that job again.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from squidmesh.core.records import Job
from squidmesh.mesh import Mesh
from squidmesh.runtime.executors import BoundMesh, ExecutorCapabilities
from squidmesh.storage import tables as t
from squidmesh.storage.base import JobWrite, Store, Transaction, WriteBatch
from squidmesh.storage.sql_queries import job_from_row

__all__ = ["OUTBOX_LEASE", "MeshRegistry", "Outbox", "due_at", "load_mesh", "payload"]

log = logging.getLogger("squidmesh.outbox")

#: The lease of every outbox row: no claim (``lease_until <= now``) ever reaches it.
OUTBOX_LEASE = datetime(9999, 1, 1, tzinfo=timezone.utc)


class _Peeked(Exception):
    pass


class Outbox:
    """An executor relaying jobs to a broker through squidmesh's jobs table.

    Subclasses implement ``publish(job)``: return once the broker accepted the job, or
    raise. ``job.id`` is the outbox row's id (for logs; ``payload(job)`` drops it).
    """

    capabilities = ExecutorCapabilities(binds=True, after_commit=True)

    #: after a failed relay, commits leave relaying to ``start_relay`` for these seconds
    cooldown = 5.0

    def __init__(self, name: str, *, batch_size: int = 100) -> None:
        self.worker = f"outbox:{name}"  # the ``worker`` column of this outbox's rows
        self.batch_size = batch_size
        self.mesh: BoundMesh | None = None
        # Across processes, PostgreSQL's row locks (SQLite: its database lock) keep
        # relays apart; within one, this lock does (SQLite has no SKIP LOCKED).
        self._relaying = threading.Lock()
        self._again = threading.Event()
        self._quiet_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, job: Job) -> None:
        raise NotImplementedError

    def bind(self, mesh: BoundMesh) -> None:
        self.mesh = mesh

    def enqueue(self, jobs: Sequence[Job], *, connection: Transaction) -> None:
        if jobs:
            held = [JobWrite(j, worker=self.worker, lease_until=OUTBOX_LEASE) for j in jobs]
            connection.write(WriteBatch(jobs_insert=held))

    def after_commit(self) -> None:
        # The change is committed: a broker outage must neither look like its failure to
        # the caller nor slow every commit by a connect timeout. The rows stay for later.
        if time.monotonic() < self._quiet_until:
            return
        try:
            self.relay_pending(wait=False)
        except Exception as exc:
            self._quiet_until = time.monotonic() + self.cooldown
            log.warning("%s: relay failed, jobs stay in the outbox: %s", self.worker, exc)

    def relay_pending(self, *, wait: bool = True) -> int:
        """Publish every job in the outbox, oldest first; returns how many went.

        A row is deleted in the transaction that read it, after the broker accepted its
        job. When the broker refuses one, the deletes before it commit and its error is
        raised. With ``wait=False`` a relay already running in this process is asked to
        go round once more instead (``after_commit``: no committer waits for a relay).
        """
        store = self._mesh().store
        sent = 0
        while True:
            if not self._relaying.acquire(blocking=wait):
                self._again.set()
                # The holder looks at _again after releasing: if it released before we
                # set it, the lock is free now and this call relays itself.
                if not self._relaying.acquire(blocking=False):
                    return sent
            try:
                self._again.clear()
                while True:
                    published = self._relay_batch(store)
                    sent += published
                    if published < self.batch_size:
                        break
            finally:
                self._relaying.release()
            self._quiet_until = 0.0  # the broker is back: commits relay again
            if not self._again.is_set():
                return sent

    def _relay_batch(self, store: Store) -> int:
        sent, failure = 0, None
        with store.transaction() as tx:
            for job in self._take(tx, lock=True):
                try:
                    self.publish(job)
                except Exception as exc:
                    failure = exc
                    break
                tx.write(WriteBatch(jobs_delete=[int(job.id or 0)]))
                sent += 1
        if failure is not None:
            raise failure
        return sent

    def pending(self) -> list[Job]:
        """The jobs waiting in the outbox (at most ``batch_size``), oldest first."""
        found: list[Job] = []
        try:
            with self._mesh().store.transaction() as tx:
                found = self._take(tx, lock=False)
                if tx.connection is None:
                    raise _Peeked  # roll back the memory store's claim
        except _Peeked:
            pass
        return found

    def start_relay(self, interval: float = 5.0) -> threading.Thread:
        """Relay every ``interval`` seconds in a daemon thread until ``stop_relay()``:
        otherwise rows a failed relay left wait for the next commit that makes jobs."""
        if interval <= 0:
            raise ValueError("the relay interval must be > 0")
        self._mesh()
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._relay_loop, args=(interval,), name=self.worker, daemon=True
            )
            self._thread.start()
        return self._thread

    def stop_relay(self, timeout: float | None = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _relay_loop(self, interval: float) -> None:
        while True:
            try:
                self.relay_pending()
            except Exception as exc:
                log.warning("%s: relay failed, retrying in %.1fs: %s", self.worker, interval, exc)
            if self._stop.wait(interval):
                return

    def _take(self, tx: Transaction, *, lock: bool) -> list[Job]:
        conn = tx.connection
        if conn is None:
            # The memory store cannot select by worker. In a Mesh whose executor is this
            # outbox every row is an outbox row, and this claim re-leases them unchanged.
            jobs: list[Job] = tx.claim_jobs(
                now=OUTBOX_LEASE,
                limit=self.batch_size,
                worker=self.worker,
                lease_until=OUTBOX_LEASE,
            )
            return jobs
        j = t.jobs.c
        query = (
            sa.select(j.id, j.kind, j.run_id, j.seq, j.attempt, j.run_at, j.data)
            .where(j.worker == self.worker)
            .order_by(j.id)
            .limit(self.batch_size)
        )
        if lock and conn.dialect.name == "postgresql":
            # Concurrent relays (the host, every broker worker) skip each other's rows
            # instead of publishing them twice.
            query = query.with_for_update(skip_locked=True)
        return [job_from_row(row) for row in conn.execute(query)]

    def _mesh(self) -> BoundMesh:
        if self.mesh is None:
            raise RuntimeError(f"{type(self).__name__} is not bound: pass it to Mesh(executor=)")
        return self.mesh


def payload(job: Job) -> dict[str, Any]:
    """The JSON a broker carries: the job without the id of its (deleted) outbox row."""
    return dataclasses.replace(job, id=None).to_json()


def due_at(job: Job) -> datetime | None:
    """``run_at`` if still in the future by the wall clock (brokers' clock), else None."""
    if job.run_at is not None and job.run_at > datetime.now(timezone.utc):
        return job.run_at
    return None


class MeshRegistry:
    """Which Mesh performs a broker app's jobs in this process: the one given to
    ``set``, else the one a ``"module:attribute"`` loader names (imported on first use),
    else the last Mesh bound to an executor on that app.

    Kept on the app object itself: a registry keyed by app would keep every app (and
    its Mesh, which refers to it) alive forever.
    """

    def _slot(self, app: Any) -> dict[str, Any]:
        slot: dict[str, Any] | None = getattr(app, "_squidmesh_meshes", None)
        if slot is None:
            slot = {}
            app._squidmesh_meshes = slot
        return slot

    def set(self, app: Any, mesh: Mesh) -> None:
        self._slot(app)["explicit"] = mesh

    def set_loader(self, app: Any, path: str) -> None:
        self._slot(app)["loader"] = path

    def bind(self, app: Any, mesh: BoundMesh) -> None:
        if isinstance(mesh, Mesh):  # only a whole Mesh performs delivered jobs
            self._slot(app)["bound"] = mesh

    def find(self, app: Any, *, loader: str | None = None, hint: str = "") -> Mesh:
        slot = self._slot(app)
        mesh: Mesh | None = slot.get("explicit")
        loader = loader or slot.get("loader")
        if mesh is None and loader:
            mesh = slot["explicit"] = load_mesh(loader)
        if mesh is None:
            mesh = slot.get("bound")
        if mesh is None:
            raise LookupError(f"no squidmesh Mesh for {app!r} in this process: {hint}")
        return mesh


def load_mesh(path: str) -> Mesh:
    """Import ``"package.module:attribute"`` and check that it is a Mesh."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected 'module:attribute' naming a Mesh, got {path!r}")
    found = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(found, Mesh):
        raise TypeError(f"{path} is {type(found).__name__}, not a squidmesh Mesh")
    return found
