"""Performing jobs: activations, step attempts and compensations.

``JobRunner.perform(job, lease)`` is how a delivered job changes a run. Each job is
validated against the run's current state first, so duplicate, late or stale deliveries
change nothing. With a worker's ``lease`` it also deletes the job's row in the transaction
that records the outcome, lands cached runs optimistically (one round trip on
PostgreSQL), and begins the run's next step in that same transaction (eager
continuation), handing it back to the worker to run at once.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from squidmesh.core import contracts, state
from squidmesh.core.definition import StepDefinition, StepPolicy
from squidmesh.core.failures import error_info
from squidmesh.core.flow import DEADLINE_EXCEEDED, declared_queues, holds_slot, job_deadline
from squidmesh.core.history import Entry, History
from squidmesh.core.lifecycle import RunEvent, transition
from squidmesh.core.records import (
    COMPENSATION_RUNNING,
    Attempt,
    CompensationFailure,
    CompensationStatus,
    ErrorRecord,
    Job,
    PendingOutcome,
)
from squidmesh.core.retry import Retry
from squidmesh.errors import (
    ConcurrentChangeError,
    DefinitionError,
    HeartbeatTimeout,
    SquidmeshError,
    StorageError,
    UnknownWorkflowError,
    UnstorableValueError,
    WorkerLost,
)
from squidmesh.runtime import composition, invoke
from squidmesh.runtime.attempts import RunningAttempt, RunningAttempts
from squidmesh.runtime.engine import (
    ADVANCING,
    STEP_RUNNABLE,
    BegunStep,
    Change,
    Engine,
    Live,
    NeedsLock,
    step_job_data,
)
from squidmesh.runtime.replaying import run_history
from squidmesh.storage.base import (
    HOLDING,
    PARKED_UNTIL,
    JobWrite,
    RunRecord,
    Transaction,
    WriteBatch,
)
from squidmesh.storage.sql_errors import is_transient
from squidmesh.types import TERMINAL_STATUSES, RunStatus

__all__ = ["FAIR_RECHECK_SECONDS", "LOST_LIMIT", "JobRunner", "Lease"]

log = logging.getLogger("squidmesh")

#: the error type of a run whose compensations failed while it was being cancelled
COMPENSATION_FAILED = "squidmesh.errors.CompensationFailed"
#: a step whose worker died this many times in a row fails instead of running again
LOST_LIMIT = 5
#: a step job delivered while its attempt may still be running is looked at again then
DEFER_SECONDS = 30.0
#: a transaction=True step whose attempt hit an infrastructure error is tried again after
#: this backoff (doubling, capped), without counting against max_attempts
INFRA_BACKOFF_FIRST = 0.5
INFRA_BACKOFF_MAX = 30.0
#: a job for a workflow this process does not have waits this long, doubling each time
POSTPONE_FIRST = 5.0
POSTPONE_MAX = 300.0
#: a worker carrying a queue slot from one step of a run to the next asks the database
#: whether waiting work has a better claim to it (another key, a higher priority) at
#: most this often (seconds of the database clock): asking at every step put a round
#: trip on the run's critical path (benchmarks/README.md, B7). A step longer than this
#: is asked about every time; a waiting key's wait grows by at most this much.
FAIR_RECHECK_SECONDS = 0.25
#: slots whose last fairness check is remembered, at most (older ones are dropped first)
_FAIR_REMEMBERED = 4096
#: a transactional step that finished inside its own job's transaction
_LANDED = object()
_NO_RETRY = Retry()


@dataclasses.dataclass(frozen=True)
class Lease:
    """The worker a job is leased to, and for how long each lease lasts."""

    worker: str
    seconds: float
    #: begin the run's next step in the same transaction (off while a worker drains)
    eager: bool = True
    #: the worker's stop event: once set (draining), begin nothing further, even for a
    #: job that started before the worker was asked to stop
    draining: threading.Event | None = None
    #: when the claim that leased this job judged it the fairest to take (its queue's
    #: slot needs no other check until ``FAIR_RECHECK_SECONDS`` later); None: unknown
    claimed_at: datetime | None = None


class TransactionalStepFailed(Exception):
    """Carries a ``transaction=True`` step's exception out of its rolled-back transaction."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        super().__init__(str(error))


class JobRunner:
    """Performs jobs against an ``Engine`` (which owns transactions and the cache)."""

    def __init__(
        self,
        engine: Engine,
        *,
        owner: Callable[[], str] | None = None,
        invoker: invoke.Invoker | None = None,
    ) -> None:
        self.engine = engine
        #: this process's owner id (``Presence.owner``): attempts it runs carry it
        self.owner = owner
        self.invoker = invoker or invoke.Invoker()
        self.invoker.on_overrun = self._record_overrun
        #: the attempts running in this process (heartbeats, heartbeat_timeout)
        self.running = RunningAttempts()
        #: slot (the id of the job row carrying it) -> when it was last judged fair to
        #: keep; a passed slot keeps its row id (``JobWrite.replaces``)
        self._fair_at: dict[int, datetime] = {}
        self._fair_lock = threading.Lock()

    def _owner(self, lease: Lease | None) -> str | None:
        if lease is not None:
            return lease.worker
        return self.owner() if self.owner is not None else None

    def perform(self, job: Job, lease: Lease | None = None) -> Job | None:
        """Execute one delivered job. Duplicate, late or stale deliveries change nothing.

        A database worker passes its ``lease``: the job's row is then deleted in the
        transaction that records the job's outcome, and when that outcome schedules the
        run's next step right away, the step is begun in the same transaction and
        returned, leased to the worker, to run at once (eager continuation: about one
        commit per step of a sequential run).
        """
        if lease is None and self.owner is not None:
            # Before any transaction: starting the presence writes (and SQLite has one
            # writer at a time).
            self.owner()
        if job.id is None or job.id not in self.engine.begun:
            # A step this worker began itself (eager continuation) never waited to be
            # taken: only delivered jobs measure the wait for a worker.
            self.engine.events.job_started(job.kind, job.run_at, self.engine.clock)
        if job.kind == "activate":
            return self._perform_activate(job, lease)
        if job.kind == "step":
            return self._perform_step(job, lease)
        if job.kind == "compensate":
            self._perform_compensate(job, lease)
            return None
        raise ValueError(f"job kind {job.kind!r} is not handled by the engine")

    def _inherits_slot(
        self, ch: Change, data: dict[str, Any], finished: Job | None, lease: Lease
    ) -> bool:
        """Whether a queued step (its job ``data``) may take over the slot of ``finished``:
        same queue and key, a queue this process knows with no rate limit, the finished
        job's row is the one the next step's job will replace (the last the change
        deletes), and no waiting work of the queue has a better claim to the slot
        (another key: fair rotation; a higher priority). That last question goes to the
        database only when the slot was last judged fair (by its claim or by an earlier
        check) more than ``FAIR_RECHECK_SECONDS`` ago."""
        deleting = ch.batch.jobs_delete
        if finished is None or finished.id is None or not deleting or deleting[-1] != finished.id:
            return False
        slot = finished.id
        with self._fair_lock:
            judged = self._fair_at.pop(slot, None) or lease.claimed_at
        held = finished.data or {}
        if held.get("queue") != data["queue"] or held.get("flow_key") != data["flow_key"]:
            return False
        queue = declared_queues().get(str(data["queue"]))
        if queue is None or queue.rate is not None:
            return False
        if judged is None or (ch.now - judged).total_seconds() >= FAIR_RECHECK_SECONDS:
            key = data["flow_key"] if isinstance(data["flow_key"], str) else None
            if ch.tx.others_waiting(queue.name, key, int(data["priority"] or 0), ch.now):
                return False
            judged = ch.now
        with self._fair_lock:
            if len(self._fair_at) >= _FAIR_REMEMBERED:
                # Slots whose runs ended without a next step: forget the oldest half.
                for old in sorted(self._fair_at, key=self._fair_at.__getitem__)[
                    : _FAIR_REMEMBERED // 2
                ]:
                    del self._fair_at[old]
            self._fair_at[slot] = judged
        return True

    def _finish_job(self, ch: Change, job: Job, lease: Lease | None) -> None:
        if lease is not None and job.id is not None:
            ch.batch.jobs_delete.append(job.id)
            ch.finishing[job.id] = job.run_at

    def _hold_slot(self, ch: Change, run: RunRecord, job: Job, lease: Lease | None) -> None:
        """The claim admitted a run of a workflow-level queue: its admission job's row
        stays, leased to ``HOLDING`` for good, as the run's slot until the run ends
        (``Engine`` deletes it in the change that ends the run)."""
        if lease is None or job.id is None or run.status in TERMINAL_STATUSES:
            return
        if job.id in ch.batch.jobs_delete:
            ch.batch.jobs_delete.remove(job.id)
        holder = dataclasses.replace(job, id=None, run_at=ch.now)
        ch.batch.jobs_insert.append(JobWrite(holder, HOLDING, PARKED_UNTIL, replaces=job.id))

    def _deadline(self, ch: Change, run: RunRecord, deadline: str) -> None:
        """The run's deadline came: a run still active is cancelled as ``cancel_run(...,
        compensate=True)`` would, with reason ``deadline_exceeded`` and audit
        ``timed_out``; an ended (or already cancelling) run is left alone."""
        if run.status in TERMINAL_STATUSES or run.status == RunStatus.CANCELLING:
            return
        ch.audit(run.id, "timed_out", metadata={"deadline": deadline})
        composition.request_cancel(
            self.engine, ch, run, actor=None, reason=DEADLINE_EXCEEDED, compensate=True
        )
        run.cancel_request = {**(run.cancel_request or {}), "deadline": deadline}

    def _postpone(self, ch: Change, job: Job, lease: Lease | None, run: RunRecord) -> None:
        """The run's workflow is not registered in this process: hand the job back for a
        process that has it (later, with backoff), instead of dropping or holding it."""
        if lease is None:
            # A broker delivered it: raising makes the broker deliver it again later.
            raise UnknownWorkflowError(
                f"run {run.id} belongs to workflow {run.workflow!r}, which this process's "
                "Mesh does not register: the job is left for a process that has it"
            )
        tries = int((job.data or {}).get("postponed", 0))
        delay = min(POSTPONE_MAX, POSTPONE_FIRST * 2**tries)
        self._finish_job(ch, job, lease)
        ch.jobs.append(
            dataclasses.replace(
                job,
                id=None,
                run_at=ch.now + timedelta(seconds=delay),
                data={**(job.data or {}), "postponed": tries + 1},
            )
        )
        log.warning(
            "run %s: workflow %r is not registered in this process; its %s job is postponed "
            "%.0fs for a process that has it (register the workflow with this Mesh)",
            run.id,
            run.workflow,
            job.kind,
            delay,
        )

    def _perform_activate(self, job: Job, lease: Lease | None) -> Job | None:
        with self.engine.change() as ch:
            run = self.engine.lock(ch, str(job.run_id))
            if run is not None and run.workflow not in self.engine.workflows:
                self._postpone(ch, job, lease, run)
                return None
            self._finish_job(ch, job, lease)
            if run is None:
                return None
            deadline = job_deadline(job.data)
            if deadline is not None:
                self._deadline(ch, run, deadline)
                return None
            if run.status == RunStatus.CANCELLING.value and not run.pending_outcome:
                # Nothing left in flight (an activation the sweeper dispatched, or a child
                # that ended): end it.
                live = self.engine.live(ch, run)
                if live is not None:
                    composition.settle(ch, run, live.history, job)
                if live is None or not self.engine.in_flight(live):
                    self.engine.finish_cancel(ch, run, live)
                return None
            if run.status not in ADVANCING:
                return None
            live = self.engine.live(ch, run)
            if live is None:
                return None
            composition.settle(ch, run, live.history, job)  # child runs that ended
            for entry in state.due_entries(live.history, ch.now):
                if entry.kind == "step":
                    continue
                state.fire_due(live.history, entry, ch.now)
                ch.touched(run.id, entry)
                if entry.kind in ("approval", "event"):
                    ch.audit(run.id, "timed_out", step=entry.name)
            run.status = transition(run.status, RunEvent.ACTIVATED).value
            self.engine.advance(ch, run, live)
            if holds_slot(job.data):
                self._hold_slot(ch, run, job, lease)
            self._continue(ch, run, live, lease)
        return ch.eager_job

    def _perform_step(self, job: Job, lease: Lease | None) -> Job | None:
        seq = int(job.seq if job.seq is not None else -1)
        begun = self.engine.begun.pop(int(job.id), None) if job.id is not None else None
        if begun is None:
            prepared, eager_job = self._begin(job, lease, seq)
            if prepared is None:
                return None
            if prepared is _LANDED:  # a transactional step, finished in that transaction
                return eager_job
            assert isinstance(prepared, BegunStep)
            begun = prepared
        run, entry, definition = begun.run, begun.entry, begun.definition
        number, started = begun.number, begun.started
        running = self.running.start(
            RunningAttempt(
                run.id,
                entry.seq,
                number,
                entry.name,
                started,
                self._owner(lease),
                definition.heartbeat_timeout if definition is not None else None,
            )
        )
        try:
            return self._run_and_land(job, lease, run, entry, definition, running)
        finally:
            self.running.finish(running)

    def _run_and_land(
        self,
        job: Job,
        lease: Lease | None,
        run: RunRecord,
        entry: Entry,
        definition: StepDefinition[Any, Any] | None,
        running: RunningAttempt,
    ) -> Job | None:
        seq, number = entry.seq, running.number
        # The attempt runs outside any transaction: its outcome is recorded afterwards.
        value: Any = None
        failure: BaseException | None = None
        if definition is None:
            failure = SquidmeshError(
                f"step {entry.name} of run {run.id} cannot be found in this process "
                f"({StepPolicy.from_json(entry.meta).ref}): import the module that defines it "
                "in the worker"
            )
        else:
            try:
                with self.engine.events.step_span(run, entry.name, seq, number):
                    value = self.invoker.call_step(
                        definition,
                        entry.input or {},
                        self._context(run, entry, number, None, running),
                        override=self.engine.override(definition, number),
                    )
            except Exception as exc:
                failure = exc
        # A run this process holds in its cache is landed without a lock (one round trip
        # on PostgreSQL); if someone else changed it meanwhile, land again under the lock.
        # Only when the executor's jobs are part of the batch: another executor's enqueue
        # must run inside a real transaction with the change it belongs to.
        try:
            return self._land_outcome(job, lease, run.id, seq, running, value, failure)
        except StorageError as refused:
            if is_transient(refused) or failure is not None:
                raise  # the database's own trouble: the job comes back later
            # The database refused to store what the step returned (a host constraint or
            # trigger, say). Record the attempt as failed for that true reason instead,
            # so the run does not later look like its worker died.
            unstorable = UnstorableValueError(
                f"the outcome of attempt {number} of step {entry.name} (run {run.id}, seq "
                f"{seq}) could not be stored: {refused}"
            )
            log.error("run %s: %s", run.id, unstorable)
            return self._land_outcome(job, lease, run.id, seq, running, None, unstorable)

    def _land_outcome(
        self,
        job: Job,
        lease: Lease | None,
        run_id: str,
        seq: int,
        running: RunningAttempt,
        value: Any,
        failure: BaseException | None,
    ) -> Job | None:
        attempts = (True, False) if self.engine.batches_jobs else (False,)
        for optimistic in attempts:
            try:
                with self.engine.change(optimistic=optimistic) as ch:
                    self._finish_job(ch, job, lease)
                    run = self.engine.lock(ch, run_id)
                    if run is None:
                        return None
                    live = self.engine.live(ch, run)
                    if live is None:
                        return None
                    entry = live.history[seq]
                    self.land(
                        ch,
                        run,
                        live,
                        entry,
                        running.number,
                        running.started_at,
                        value=value,
                        error=failure,
                        running=running,
                    )
                    self._continue(ch, run, live, lease, finished=job)
                return ch.eager_job
            except (NeedsLock, ConcurrentChangeError):
                if not optimistic:
                    raise
        return None

    def _begin(
        self, job: Job, lease: Lease | None, seq: int
    ) -> tuple[BegunStep | object | None, Job | None]:
        """Begin a claimed step job's attempt: like a landing, without the run's lock when
        this process holds the run in its cache (one round trip on PostgreSQL, the
        version check standing in for the lock; a claimed queued step begins every run
        on a queue), and under the lock when that is refused or the cache cannot tell."""
        attempts = (True, False) if lease is not None and self.engine.batches_jobs else (False,)
        for optimistic in attempts:
            try:
                with self.engine.change(optimistic=optimistic) as ch:
                    prepared = self._begin_step(ch, job, lease, seq)
                return prepared, ch.eager_job
            except (NeedsLock, ConcurrentChangeError):
                if not optimistic:
                    raise
        return None, None

    def _begin_step(
        self, ch: Change, job: Job, lease: Lease | None, seq: int
    ) -> BegunStep | object | None:
        """Validate a step job and begin its attempt (or finish a transactional step)."""
        run = self.engine.lock(ch, str(job.run_id))
        if run is None or run.status not in STEP_RUNNABLE:
            self._finish_job(ch, job, lease)
            return None
        live = self.engine.live(ch, run)
        if live is None:
            self._postpone(ch, job, lease, run)
            return None
        if not 0 <= seq < len(live.history):
            self._finish_job(ch, job, lease)
            return None
        entry = live.history[seq]
        if entry.kind != "step":
            self._finish_job(ch, job, lease)
            return None
        if ch.optimistic and (
            entry.status == "running" or run.status == RunStatus.CANCELLING.value
        ):
            raise NeedsLock()  # judging a lost attempt or ending a cancel reads under the lock
        if entry.status == "running" and entry.attempts == job.attempt:
            # The job came back while its attempt is still marked running. If the process
            # running it is alive (a broker redelivered early, or a duplicate), starting
            # another attempt would run the step twice at once: look again later.
            if self._possibly_running(ch, run.id, entry, job, lease):
                self._defer(ch, job, lease, DEFER_SECONDS)
                return None
            # Its process is gone: the attempt was lost.
            self._finish_job(ch, job, lease)
            if self._recover_lost_attempt(ch, run, live, entry):
                # The next attempt runs under a job numbered like it: should that worker
                # die too, the redelivery matches the running attempt again (another
                # lost attempt) instead of looking stale and being dropped for good.
                ch.jobs.append(Job("step", run.id, seq, entry.attempts + 1, run_at=ch.now))
            return None
        stale = entry.status != "pending" or (
            job.attempt is not None and entry.attempts + 1 != job.attempt
        )
        if stale:
            self._finish_job(ch, job, lease)
            return None
        if run.status == RunStatus.CANCELLING.value:
            self._finish_job(ch, job, lease)
            if not self.engine.in_flight(live):
                self.engine.finish_cancel(ch, run, live)
            return None
        self.engine.warm(ch, run, live)
        if entry.status != "pending":  # the replay moved on (a cancelled branch)
            self._finish_job(ch, job, lease)
            return None
        definition = self.engine.step_definition(live, entry)
        owner = self._owner(lease)
        number = state.begin_attempt(entry, ch.now, owner)
        ch.events.step_started(run, entry.name, seq, number, ch.now)
        ch.touched(run.id, entry)
        started = ch.now.isoformat()
        run.status = transition(run.status, RunEvent.STEP_STARTED).value
        if definition is not None and definition.transaction:
            if ch.optimistic:
                raise NeedsLock()  # the host's writes need a transaction of their own
            # Host writes and the step's completion share this transaction: a failure
            # rolls both back, and the failure is then recorded in a new transaction.
            running = self.running.start(
                RunningAttempt(
                    run.id, seq, number, entry.name, started, owner, definition.heartbeat_timeout
                )
            )
            try:
                context = self._context(run, entry, number, ch.tx, running)
                override = self.engine.override(definition, number)
                with self.engine.events.step_span(run, entry.name, seq, number):
                    result = self.invoker.call_step(
                        definition, entry.input or {}, context, override=override
                    )
                # A result that cannot be stored fails the attempt: roll its writes back.
                contracts.stored(
                    result,
                    what=f"the result of step {entry.name} (run {run.id}, seq {seq})",
                    max_bytes=self.engine.max_value_bytes,
                )
            except Exception as exc:
                raise TransactionalStepFailed(exc) from exc
            finally:
                self.running.finish(running)
            self._finish_job(ch, job, lease)
            self.land(
                ch, run, live, entry, number, started, value=result, error=None, running=running
            )
            self._continue(ch, run, live, lease, finished=job)
            return _LANDED
        if state.needs_running_row(number):
            ch.attempt(run.id, seq, Attempt(number, "running", None, started, worker=owner))
        return BegunStep(run, entry, definition, number, started)

    def _possibly_running(
        self, ch: Change, run_id: str, entry: Entry, job: Job, lease: Lease | None
    ) -> bool:
        """Whether attempt ``entry.attempts`` may still be running somewhere, as far as
        the database and this process can tell (never by anyone's clock alone)."""
        number = entry.attempts
        me = self._owner(lease)
        if lease is not None:
            # The database's queue: an attempt runs under a job row leased to a process.
            for queued in ch.tx.load_jobs(run_id):
                other = queued.job
                if other.id == job.id or (other.kind, other.seq, other.attempt) != (
                    "step",
                    entry.seq,
                    number,
                ):
                    continue
                if queued.worker is None or queued.lease_until is None:
                    continue
                if queued.worker == me:
                    if self.running.has(run_id, entry.seq, number):
                        return True
                elif queued.lease_until > ch.now and ch.tx.owner_alive(queued.worker):
                    return True
            return self.running.has(run_id, entry.seq, number)
        # A broker's delivery: ask whether the process that began the attempt lives.
        mine = state.attempt_of(entry, ch.tx.load_attempts(run_id).get(entry.seq, []), number)
        owner = mine.worker if mine is not None else None
        if owner is None:
            return False
        if owner == me:
            return self.running.has(run_id, entry.seq, number)
        return ch.tx.owner_alive(owner)

    def _defer(self, ch: Change, job: Job, lease: Lease | None, seconds: float) -> None:
        """Hand ``job`` back to be delivered again in ``seconds`` (through the executor:
        a row of the jobs table, or a broker message with a later ETA)."""
        self._finish_job(ch, job, lease)
        ch.jobs.append(
            dataclasses.replace(job, id=None, run_at=ch.now + timedelta(seconds=seconds))
        )
        log.info(
            "run %s: %s job for seq %s attempt %s arrived while that attempt may still be "
            "running in a live process; looking again in %.0fs",
            job.run_id,
            job.kind,
            job.seq,
            job.attempt,
            seconds,
        )

    def _continue(
        self,
        ch: Change,
        run: RunRecord,
        live: Live,
        lease: Lease | None,
        finished: Job | None = None,
    ) -> None:
        """Begin the run's next due step in this transaction and hand it to the worker
        (``ch.eager_job`` once committed).

        A step on a flow-control queue is begun here only when the job this change
        finishes (``finished``) held a slot of the same queue and key, and the queue has
        no rate: the finished job's row becomes the next step's, so the slot passes from
        one step of the run to the next and no count grows. Otherwise it waits for a
        claim."""
        if lease is None or not lease.eager or run.status != RunStatus.RUNNING:
            return
        if lease.draining is not None and lease.draining.is_set():
            return
        for index, job in enumerate(ch.jobs):
            if job.kind != "step" or job.run_id != run.id or job.seq is None:
                continue
            if job.run_at is not None and job.run_at > ch.now:
                continue
            entry = live.history[job.seq]
            definition = self.engine.step_definition(live, entry)
            if definition is None or definition.transaction or entry.status != "pending":
                return
            data = step_job_data(entry)
            if data is not None and not self._inherits_slot(ch, data, finished, lease):
                return  # a queued step waits for a slot: a claim begins it
            del ch.jobs[index]
            number = state.begin_attempt(entry, ch.now, lease.worker)
            ch.events.step_started(run, entry.name, entry.seq, number, ch.now)
            ch.touched(run.id, entry)
            started = ch.now.isoformat()
            if state.needs_running_row(number):
                ch.attempt(
                    run.id,
                    entry.seq,
                    Attempt(number, "running", None, started, worker=lease.worker),
                )
            ch.eager = (
                len(ch.batch.jobs_insert),
                BegunStep(run, entry, definition, number, started),
            )
            # The row of the job this change finishes carries on as the next step's job.
            # It keeps that job's due time: its run_at is indexed (the claim order), and
            # an update that changes no indexed column is one PostgreSQL makes in place
            # (HOT, no new index entries). A leased row's run_at is read by nothing else
            # until its lease ends, when the oldest work is taken over first anyway.
            replaces = ch.batch.jobs_delete.pop() if ch.batch.jobs_delete else None
            due = ch.finishing.get(replaces) if replaces is not None else None
            ch.batch.jobs_insert.append(
                JobWrite(
                    Job("step", run.id, entry.seq, number, run_at=due or ch.now, data=data),
                    lease.worker,
                    ch.now + timedelta(seconds=lease.seconds),
                    replaces=replaces,
                )
            )
            return

    def _recover_lost_attempt(self, ch: Change, run: RunRecord, live: Live, entry: Entry) -> bool:
        """Record the attempt of a dead worker as failed; True when the step may run again.

        A lost attempt does not wait for backoff (the step did not fail, its worker did),
        but it counts as an attempt; after ``LOST_LIMIT`` losses in a row the step fails,
        so a step that kills its worker every time cannot loop forever.
        """
        lost = int(entry.meta.get("lost", 0)) + 1
        entry.meta["lost"] = lost
        tries = ch.tx.load_attempts(run.id).get(entry.seq, [])
        mine = state.attempt_of(entry, tries, entry.attempts)
        state.end_attempt(entry)
        lost_error = WorkerLost(
            f"the process running attempt {entry.attempts} of step {entry.name} "
            f"(run {run.id}, seq {entry.seq}) stopped before recording its outcome",
            details={"lost_attempts": lost, "worker": mine.worker if mine else None},
        )
        info = error_info(lost_error, retryable=lost < LOST_LIMIT, with_traceback=False)
        ch.attempt(
            run.id,
            entry.seq,
            Attempt(
                entry.attempts,
                "failed",
                info.to_json(),
                mine.started_at if mine else entry.started_at,
                ch.now.isoformat(),
                worker=mine.worker if mine else None,
                heartbeat=mine.heartbeat if mine else None,
            ),
        )
        ch.touched(run.id, entry)
        retry_in = 0.0 if lost < LOST_LIMIT else None
        ch.events.step_ended(
            run,
            entry.name,
            entry.seq,
            entry.attempts,
            entry.started_at,
            ch.now,
            error=info,
            retry_in=retry_in,
        )
        log.warning("run %s: %s", run.id, info.message)
        if lost >= LOST_LIMIT:
            entry.status = "running"
            live.history.resolve(entry.seq, "failed", error=info, at=ch.now.isoformat())
            self.engine.advance(ch, run, live)
            return False
        entry.status = "pending"
        return True

    # ------------------------------------------------------------------ tending

    def tend(self) -> None:
        """Save the heartbeats of running attempts (at most once per tick each) and
        declare lost the attempts silent past their ``heartbeat_timeout``. Called by the
        process's presence thread."""
        pending = self.running.unsaved()
        if pending:
            with self.engine.store.transaction() as tx:
                for attempt, heartbeat, _ in pending:
                    tx.record_heartbeat(
                        attempt.run_id,
                        attempt.seq,
                        Attempt(
                            attempt.number,
                            "running",
                            started_at=attempt.started_at,
                            worker=attempt.worker,
                            heartbeat=heartbeat,
                        ),
                    )
            for attempt, _, beats in pending:
                self.running.saved(attempt, beats)
        for attempt in self.running.silent():
            self._declare_silent(attempt)

    def _declare_silent(self, attempt: RunningAttempt) -> None:
        limit = attempt.heartbeat_timeout or 0.0
        error = HeartbeatTimeout(
            f"attempt {attempt.number} of step {attempt.step} (run {attempt.run_id}, seq "
            f"{attempt.seq}) sent no heartbeat for {limit:g}s (heartbeat_timeout): declared "
            "lost; call sm.step_context().heartbeat() more often, or raise the timeout"
        )
        log.warning("run %s: %s", attempt.run_id, error)
        with self.engine.change() as ch:
            run = self.engine.lock(ch, attempt.run_id)
            if run is None or run.status not in STEP_RUNNABLE:
                return
            live = self.engine.live(ch, run)
            if live is None or not 0 <= attempt.seq < len(live.history):
                return
            entry = live.history[attempt.seq]
            if entry.status != "running" or entry.attempts != attempt.number:
                return  # it landed meanwhile
            self.land(
                ch,
                run,
                live,
                entry,
                attempt.number,
                attempt.started_at,
                value=None,
                error=error,
                running=attempt,
            )

    def _record_overrun(self, overrun: invoke.Body) -> None:
        """A sync attempt that timed out has returned at last: note for how long it ran
        past its timeout in that attempt's recorded error."""
        run_id, seq, what = overrun.key
        if what != "step":
            return
        with self.engine.store.transaction() as tx:
            tries = tx.load_attempts(run_id).get(seq, [])
            mine = next((a for a in tries if a.number == overrun.attempt), None)
            error = mine.error_record if mine is not None else None
            if mine is None or error is None:
                return
            details = error.details
            error = dataclasses.replace(
                error,
                details={
                    **(details if isinstance(details, dict) else {}),
                    "overran_by_seconds": overrun.overran_by,
                },
            )
            noted = dataclasses.replace(mine, error=error.to_json())
            tx.write(WriteBatch(attempts=[(run_id, seq, noted)]))

    def retry_after_infrastructure_error(
        self, job: Job, exc: BaseException, lease: Lease | None
    ) -> None:
        """A ``transaction=True`` step's transaction failed for infrastructure reasons (a
        lost connection, a serialization failure, a deadlock): it rolled back, so nothing
        of the attempt happened. Deliver the same attempt again after a backoff; it does
        not count against ``max_attempts``."""
        if lease is None:
            raise exc  # a broker delivers it again (its own retry with backoff)
        tries = int((job.data or {}).get("infrastructure_retries", 0))
        delay = min(INFRA_BACKOFF_MAX, INFRA_BACKOFF_FIRST * 2**tries)
        log.warning(
            "run %s: step job seq %s attempt %s hit an infrastructure error inside its "
            "transaction (%s); everything was rolled back, trying again in %.1fs",
            job.run_id,
            job.seq,
            job.attempt,
            exc,
            delay,
        )
        with self.engine.change() as ch:
            self._finish_job(ch, job, lease)
            ch.jobs.append(
                dataclasses.replace(
                    job,
                    id=None,
                    run_at=ch.now + timedelta(seconds=delay),
                    data={**(job.data or {}), "infrastructure_retries": tries + 1},
                )
            )

    def retry_transactional_failure(
        self, job: Job, exc: BaseException, lease: Lease | None = None
    ) -> None:
        """Record the failure of a ``transaction=True`` step whose transaction rolled back."""
        seq = int(job.seq if job.seq is not None else -1)
        with self.engine.change() as ch:
            self._finish_job(ch, job, lease)
            run = self.engine.lock(ch, str(job.run_id))
            if run is None or run.status not in STEP_RUNNABLE:
                return
            live = self.engine.live(ch, run)
            if live is None or not 0 <= seq < len(live.history):
                return
            entry = live.history[seq]
            if entry.status != "pending":
                return
            number = state.begin_attempt(entry, ch.now)
            ch.events.step_started(run, entry.name, seq, number, ch.now)
            ch.touched(run.id, entry)
            self.land(ch, run, live, entry, number, ch.now.isoformat(), value=None, error=exc)

    def land(
        self,
        ch: Change,
        run: RunRecord,
        live: Live,
        entry: Entry,
        number: int,
        started: str,
        *,
        value: Any,
        error: BaseException | None,
        running: RunningAttempt | None = None,
    ) -> None:
        """Record the outcome of attempt ``number`` and move the run on."""
        history = live.history
        finished = ch.now.isoformat()
        worker = running.worker if running is not None else None
        beat = running.heartbeat if running is not None else None
        if entry.status != "running" or entry.attempts != number:
            # Stale: the branch was cancelled (a first() loser), the run moved on, or the
            # attempt was recorded lost while it still ran. Its outcome is kept only if
            # its record still says running: one recorded lost (and retried) stays lost,
            # so exactly one attempt of a step ever completes.
            if ch.optimistic:
                raise NeedsLock()  # reading the attempt's record needs the lock
            mine = state.attempt_of(entry, ch.tx.load_attempts(run.id).get(entry.seq, []), number)
            if mine is not None and mine.status == "running":
                status = "failed" if error is not None else "completed"
                late = Attempt(
                    number, status, None, started, finished, worker=mine.worker, heartbeat=beat
                )
                ch.attempt(run.id, entry.seq, late)
            else:
                log.warning(
                    "run %s: attempt %d of step %s (seq %d) returned after it was recorded "
                    "%s; its outcome is ignored",
                    run.id,
                    number,
                    entry.name,
                    entry.seq,
                    mine.status if mine is not None else "superseded",
                )
            if run.status == RunStatus.CANCELLING.value and not self.engine.in_flight(live):
                self.engine.finish_cancel(ch, run, live)
            return
        if error is None:
            try:
                state.complete_attempt(
                    history, entry.seq, value, ch.now, max_bytes=self.engine.max_value_bytes
                )
            except Exception as exc:  # the value cannot be stored as JSON
                error = exc
        definition = self.engine.step_definition(live, entry)
        if error is not None:
            policy = definition.retry if definition is not None else _NO_RETRY
            decision, info = state.fail_attempt(history, entry.seq, error, policy, ch.now)
            ch.attempt(
                run.id,
                entry.seq,
                Attempt(
                    number,
                    "failed",
                    info.to_json(),
                    started,
                    finished,
                    worker=worker,
                    heartbeat=beat,
                ),
            )
            retrying = decision.retry and run.status != RunStatus.CANCELLING.value
            ch.events.step_ended(
                run,
                entry.name,
                entry.seq,
                number,
                started,
                finished,
                error=info,
                retry_in=decision.delay if retrying else None,
            )
            ch.touched(run.id, entry)
            if decision.retry and run.status == RunStatus.CANCELLING.value:
                # Being cancelled: no next attempt; the run ends once nothing is in flight.
                if not self.engine.in_flight(live):
                    self.engine.finish_cancel(ch, run, live)
                return
            if decision.retry:
                ch.jobs.append(
                    Job(
                        "step",
                        run.id,
                        entry.seq,
                        number + 1,
                        run_at=ch.now + timedelta(seconds=decision.delay),
                    )
                )
                if run.status != RunStatus.CANCELLING.value:
                    waiting = state.waiting_status(history, tuple(run.waiting_on))
                    run.status = transition(run.status, RunEvent.WAITS, waiting=waiting).value
                    run.error = info.to_json()
                return
        else:
            # A first attempt that saved no heartbeat (the only way it gets a row before
            # it ends) is recorded by its completed entry; any other gets its row.
            silent = running is None or running.beats == 0
            if not (silent and state.entry_records_success(entry, number)):
                state.end_attempt(entry)
                ch.attempt(
                    run.id,
                    entry.seq,
                    Attempt(
                        number, "completed", None, started, finished, worker=worker, heartbeat=beat
                    ),
                )
            ch.events.step_ended(run, entry.name, entry.seq, number, started, finished)
            ch.touched(run.id, entry)
        if run.status == RunStatus.CANCELLING.value:
            if not self.engine.in_flight(live):
                self.engine.finish_cancel(ch, run, live)
            return
        self.engine.advance(ch, run, live)

    def _history(self, ch: Change, run: RunRecord, live: Live | None) -> History:
        """The run's history: its interpreter's, or read from storage when this process
        does not have the run's workflow (compensations need only the record)."""
        return live.history if live is not None else run_history(run, ch.tx.load_entries(run.id))

    def _perform_compensate(self, job: Job, lease: Lease | None = None) -> None:
        seq = int(job.seq if job.seq is not None else -1)
        with self.engine.change() as ch:
            run = self.engine.lock(ch, str(job.run_id))
            if run is None or run.status in (*TERMINAL_STATUSES, RunStatus.SUSPENDED):
                self._finish_job(ch, job, lease)
                return
            live = self.engine.live(ch, run)
            history = self._history(ch, run, live)
            if not 0 <= seq < len(history):
                self._finish_job(ch, job, lease)
                return
            entry = history[seq]
            comp = entry.compensation_state
            if comp is None or comp.ended:
                self._finish_job(ch, job, lease)
                return
            compensate = self.engine.compensation_for(live, entry)
            if compensate is None and live is None:
                # It may be a closure only the workflow's own process can find.
                self._postpone(ch, job, lease, run)
                return
            entry.set_compensation(COMPENSATION_RUNNING)
            ch.touched(run.id, entry)
            outcome = PendingOutcome.from_json(run.pending_outcome)
            failure = outcome.error if outcome is not None else None
            marked = ch.now
        output: Any = None
        error: ErrorRecord | None = None
        if compensate is None:
            missing = DefinitionError(
                f"compensation of step {entry.name} cannot be found in this process"
            )
            error = error_info(missing, retryable=False, with_traceback=False)
        else:
            attempts = (
                compensate.retry.max_attempts if isinstance(compensate, StepDefinition) else 1
            )
            for number in range(1, attempts + 1):
                try:
                    with self.engine.events.step_span(
                        run, entry.name, seq, number, kind="compensate"
                    ):
                        output = self.invoker.call_compensation(
                            self.engine.override(compensate, number) or compensate,
                            input=entry.input,
                            output=entry.result,
                            failure=failure.to_json() if failure is not None else None,
                            context=self._context(run, entry, number, None),
                        )
                    error = None
                    break
                except Exception as exc:
                    error = error_info(exc)
        with self.engine.change() as ch:
            self._finish_job(ch, job, lease)
            locked = self.engine.lock(ch, run.id)
            if locked is None:
                return
            run = locked
            live = self.engine.live(ch, run)
            history = self._history(ch, run, live)
            entry = history[seq]
            try:
                stored = (
                    contracts.stored(
                        output,
                        what=f"the output of the compensation of step {entry.name} "
                        f"(run {run.id}, seq {seq})",
                        max_bytes=self.engine.max_value_bytes,
                    )
                    if error is None
                    else None
                )
            except UnstorableValueError as exc:
                error, stored = error_info(exc, retryable=False), None
            state.record_compensation(history, seq, output=stored, error=error, now=ch.now)
            ch.touched(run.id, entry)
            ch.audit(
                run.id,
                "compensation_failed" if error else "compensated",
                step=entry.name,
                comment=error.message if error is not None else None,
            )
            ch.events.compensation(
                run,
                "failed" if error else "completed",
                ch.now,
                step=entry.name,
                seq=seq,
                started=marked,
                error=error,
            )
            self._after_compensation(ch, run, live, history)

    def _after_compensation(
        self, ch: Change, run: RunRecord, live: Live | None, history: History
    ) -> None:
        pending = [
            e
            for e in history.entries
            if (comp := e.compensation_state) is not None
            and comp.status is CompensationStatus.PENDING
        ]
        if pending:
            pending.sort(key=lambda e: e.order if e.order is not None else -1, reverse=True)
            ch.jobs.append(Job("compensate", run.id, pending[0].seq, run_at=ch.now))
            return
        outcome = PendingOutcome.from_json(run.pending_outcome)
        if outcome is None:  # an sm.undo(): the workflow goes on
            if live is not None:
                self.engine.advance(ch, run, live)
            else:  # in a process that has the workflow
                ch.jobs.append(Job("activate", run.id, run_at=ch.now))
            return
        failures = tuple(
            CompensationFailure(e.name, e.seq, comp.error)
            for e in history.entries
            if (comp := e.compensation_state) is not None
            and comp.status is CompensationStatus.FAILED
        )
        if outcome.status is RunStatus.FAILED:
            error = outcome.error
            if failures:
                error = dataclasses.replace(
                    error or ErrorRecord("Exception"), compensation_failures=failures
                )
            self.engine.end(
                ch,
                run,
                RunStatus.FAILED,
                error=error,
                reason="compensation_failed" if failures else outcome.reason,
            )
        else:
            if failures:
                run.error = ErrorRecord(
                    type=COMPENSATION_FAILED,
                    types=(COMPENSATION_FAILED,),
                    message="compensation failed while cancelling",
                    retryable=False,
                    compensation_failures=failures,
                ).to_json()
            self.engine.end(ch, run, RunStatus.CANCELLED, reason="cancelled")

    def _context(
        self,
        run: RunRecord,
        entry: Entry,
        attempt: int,
        tx: Transaction | None,
        running: RunningAttempt | None = None,
    ) -> Any:
        from squidmesh.core.context import StepContext

        beat = None
        if running is not None:

            def beat(details: Any) -> None:
                stored = contracts.stored(
                    details,
                    what=f"the heartbeat details of step {entry.name} (run {run.id})",
                    max_bytes=self.engine.max_value_bytes,
                )
                self.running.beat(running, stored, self.engine.clock())

        connection = tx.connection if tx is not None else None
        factory = None
        if connection is not None:

            def factory() -> Any:
                from sqlalchemy.orm import Session

                return Session(bind=connection)

        return StepContext(
            run_id=run.id,
            step=entry.name,
            seq=entry.seq,
            attempt=attempt,
            connection=connection,
            _heartbeat=beat,
            _session_factory=factory,
        )
