"""``Runner``: how a Mesh's jobs get performed — the one seam the worker, ``drain``,
the executors and the sweeper use.

The worker used to hold the whole Mesh as ``Any`` and reach into its private members
(its presence, its wakers, its perform, its engine, its scheduler); a Runner gathers
exactly those capabilities under public, typed names, so every dependency of the worker
is visible to the type checker and to the layering test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from squidmesh.core.flow import declared_queues
from squidmesh.core.records import Job
from squidmesh.runtime.engine import Engine
from squidmesh.runtime.executors import capabilities_of
from squidmesh.runtime.perform import JobRunner, Lease, TransactionalStepFailed
from squidmesh.runtime.presence import Presence
from squidmesh.runtime.sweeper import Sweeper
from squidmesh.storage.base import Store, WriteBatch
from squidmesh.storage.sql_errors import is_transient

__all__ = ["DRAIN_LEASE_SECONDS", "CronFirer", "Runner"]

#: how long ``drain()`` leases the job it performs (a step longer than this could be
#: claimed again by a worker beside it)
DRAIN_LEASE_SECONDS = 300.0

#: fires one cron tick (``Mesh.fire_cron``: workflow name, trigger name, fire time)
CronFirer = Callable[[str, str, datetime], object]


class Runner:
    """Performs the jobs of one Mesh's engine under this process's presence."""

    def __init__(
        self,
        engine: Engine,
        *,
        fire_cron: CronFirer,
        schedule: Callable[[threading.Event], None],
    ) -> None:
        self.engine = engine
        self.store: Store = engine.store
        #: this process's presence as a performer of jobs (started by the first job)
        self.presence = Presence(engine.store, engine.clock)
        self.jobs = JobRunner(engine, owner=self.presence.owner)
        #: the presence is kept alive by tending the attempts this process runs
        self.presence.tend = self.jobs.tend
        self._fire_cron = fire_cron
        self._schedule = schedule

    def clock(self) -> datetime:
        return self.engine.clock()

    @property
    def jobs_in_table(self) -> bool:
        """Whether every job is a row of the jobs table (so workers claim them and a
        sweeper may trust a run's having none)."""
        return capabilities_of(self.engine.executor).jobs_in_table

    def owner(self) -> str:
        """The owner id this process takes leases under (its presence, held alive)."""
        return self.presence.owner()

    # ------------------------------------------------------------------ performing

    def perform(self, job: Job, lease: Lease | None) -> Job | None:
        """Perform a job; with a worker's lease, return the next job begun eagerly."""
        if job.kind == "cron":
            data = job.data or {}
            self._fire_cron(
                str(data.get("workflow")),
                str(data.get("trigger")),
                datetime.fromisoformat(str(data.get("fire_time"))),
            )
            if lease is not None and job.id is not None:
                with self.store.transaction() as tx:
                    # the tick's run is idempotent: no harm if twice
                    tx.write(WriteBatch(jobs_delete=[job.id]))
            return None
        jobs = self.jobs
        try:
            return jobs.perform(job, lease)
        except TransactionalStepFailed as failed:
            if is_transient(failed.error):
                jobs.retry_after_infrastructure_error(job, failed.error, lease)
            else:
                jobs.retry_transactional_failure(job, failed.error, lease)
            return None

    def drain(self, limit: int | None = None) -> int:
        """Run every due job in this thread until none is left; returns how many ran."""
        done = 0
        # A lease like a worker's: each job's row is deleted by the transaction that
        # records what performing it did. No eager continuation: with a ``limit`` the
        # drain may stop after any job, and must not leave a step begun behind it.
        lease = Lease(self.owner(), DRAIN_LEASE_SECONDS, eager=False)
        while limit is None or done < limit:
            now = self.clock()
            with self.store.transaction() as tx:
                jobs = tx.claim_jobs(
                    now=now,
                    limit=1,
                    worker=lease.worker,
                    lease_until=now + timedelta(seconds=lease.seconds),
                    # flow control: only when this process declared queues
                    queues=declared_queues() or None,
                )
            if not jobs:
                break
            self.perform(jobs[0], lease)
            done += 1
        return done

    # ------------------------------------------------------------------ workers

    def add_waker(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` after every commit of this process that produced jobs."""
        self.engine.wakers.append(wake)

    def remove_waker(self, wake: Callable[[], None]) -> None:
        wakers = self.engine.wakers
        if wake in wakers:
            wakers.remove(wake)

    def schedule(self, stop: threading.Event) -> None:
        """Fire the Mesh's cron triggers while this process leads, until ``stop``."""
        self._schedule(stop)

    def sweeper(self, *, grace: float) -> Sweeper:
        """A sweeper over this engine's runs (active runs that nothing will move)."""
        return Sweeper(self.engine, grace=grace)

    def close(self) -> None:
        self.presence.close()
        self.jobs.invoker.close()
