"""The sweeper: defence in depth against runs that nothing will ever move.

With the database executor a run that is waiting on work always has a job: a state
change writes the jobs it produces in its own transaction, and a job is deleted only by
the transaction that records what performing it did. So an active run without any job is
a bug, and the sweeper is its safety net: workers periodically look for active runs with
no job, and for each one whose history shows outstanding work (a step to run or whose
attempt was lost, a timer, a compensation, an activation), log it and dispatch that work
again. Runs legitimately waiting on a person or an event (a pause, an approval or event
wait without timeout) have no job and are left alone.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime, timedelta

from squidmesh.core.history import Entry
from squidmesh.core.records import Job
from squidmesh.runtime.engine import Engine, step_job_data
from squidmesh.storage.base import RunRecord
from squidmesh.types import RunStatus

__all__ = ["SWEPT_STATUSES", "Sweeper", "outstanding_jobs"]

log = logging.getLogger("squidmesh.sweeper")

#: statuses of runs that always have a job while they wait on work (a paused run waits on
#: a person; its timers are still covered when its join also holds one)
SWEPT_STATUSES = (
    RunStatus.PENDING.value,
    RunStatus.RUNNING.value,
    RunStatus.RETRYING.value,
    RunStatus.PAUSED.value,
    RunStatus.CANCELLING.value,
)


def _at(stamp: str | None, now: datetime) -> datetime:
    return datetime.fromisoformat(stamp) if stamp else now


def outstanding_jobs(run: RunRecord, entries: Sequence[Entry], now: datetime) -> list[Job]:
    """The jobs ``run`` needs to move on, read from its row and history: empty when it
    waits only on people or events (or needs no job at all)."""
    if run.status == RunStatus.PENDING.value:
        return [Job("activate", run.id, run_at=now)]
    compensating = [
        e for e in entries if (comp := e.compensation_state) is not None and not comp.ended
    ]
    if compensating:
        # Compensations run one at a time, latest completed step first.
        compensating.sort(key=lambda e: e.order if e.order is not None else -1, reverse=True)
        return [Job("compensate", run.id, compensating[0].seq, run_at=now)]
    in_flight = [e for e in entries if e.kind == "step" and e.status == "running"]
    # An attached child run being cancelled tells its parent when it ends (its own jobs
    # carry that): the parent has nothing to dispatch meanwhile.
    children = [e for e in entries if e.kind == "child" and e.status == "running"]
    if run.status == RunStatus.CANCELLING.value and not in_flight and not children:
        return [Job("activate", run.id, run_at=now)]  # finishes the cancellation
    jobs: list[Job] = []
    waiting = [entries[s] for s in run.waiting_on if 0 <= s < len(entries)]
    for entry in [*in_flight, *(e for e in waiting if e not in in_flight)]:
        if entry.kind == "step" and entry.status == "running":
            # Its job is gone, so its worker is too: redelivered, the attempt is lost.
            jobs.append(
                Job(
                    "step",
                    run.id,
                    entry.seq,
                    entry.attempts,
                    run_at=now,
                    data=step_job_data(entry),
                )
            )
        elif entry.kind == "step" and entry.status == "pending":
            jobs.append(
                Job(
                    "step",
                    run.id,
                    entry.seq,
                    entry.attempts + 1,
                    run_at=_at(entry.wake_at, now),
                    data=step_job_data(entry),
                )
            )
        elif entry.wake_at is not None and entry.status == "running":
            jobs.append(Job("activate", run.id, run_at=_at(entry.wake_at, now)))
    if not jobs and not waiting and run.status == RunStatus.RUNNING.value:
        jobs.append(Job("activate", run.id, run_at=now))  # nothing recorded to wait on
    return jobs


class Sweeper:
    """Finds active runs without any job and dispatches their outstanding work again.

    Each ``sweep()`` reads one page of candidates after a keyset cursor, so runs that
    legitimately wait (remembered by version, never locked twice) do not hide the ones
    behind them; the cursor starts over once a page comes back short.
    """

    def __init__(self, engine: Engine, *, grace: float = 30.0, batch: int = 200) -> None:
        self.engine = engine
        #: runs changed more recently than this (seconds) are not looked at yet
        self.grace = grace
        self.batch = batch
        self._cursor: tuple[datetime, str] | None = None
        #: (run id, version) of runs found legitimately idle, not examined again until
        #: they change (bounded, oldest forgotten first)
        self._idle: OrderedDict[tuple[str, int], None] = OrderedDict()

    def sweep(self) -> int:
        """Look at one page of candidates; returns how many runs were dispatched again."""
        now = self.engine.clock()
        with self.engine.store.transaction() as tx:
            page = tx.find_orphans(
                SWEPT_STATUSES, now - timedelta(seconds=self.grace), self.batch, self._cursor
            )
        self._cursor = (page[-1][2], page[-1][0]) if len(page) == self.batch else None
        revived = 0
        for run_id, version, _ in page:
            if (run_id, version) not in self._idle and self._revive(run_id):
                revived += 1
        return revived

    def _revive(self, run_id: str) -> bool:
        with self.engine.change() as ch:
            run = self.engine.lock(ch, run_id)
            if run is None or run.status not in SWEPT_STATUSES or ch.tx.load_jobs(run.id):
                return False
            entries = ch.tx.load_entries(run.id)
            jobs = outstanding_jobs(run, entries, ch.now)
            if not jobs:
                self._remember_idle(run)
                return False
            log.warning(
                "run %s (workflow %s, %s) had no job although it waits on work; "
                "dispatching %s again",
                run.id,
                run.workflow,
                run.status,
                ", ".join(_describe(job) for job in jobs),
                extra={"squidmesh": {"run_id": run.id, "workflow": run.workflow}},
            )
            ch.audit(
                run.id,
                "reactivated",
                comment="the run had no job; its outstanding work was dispatched again",
                metadata={"jobs": [job.to_json() for job in jobs]},
            )
            ch.jobs.extend(jobs)
            # Written with a new version, so a concurrent change decided without the
            # lock (an optimistic landing) fails its check and looks again.
            ch.force_write(run)
        return True

    def _remember_idle(self, run: RunRecord) -> None:
        self._idle[(run.id, run.version)] = None
        while len(self._idle) > 10_000:
            self._idle.popitem(last=False)


def _describe(job: Job) -> str:
    where = f" seq {job.seq}" if job.seq is not None else ""
    attempt = f" attempt {job.attempt}" if job.attempt is not None else ""
    return f"{job.kind}{where}{attempt}"
