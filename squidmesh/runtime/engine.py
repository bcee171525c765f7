"""The engine: load history, replay, persist the decision, all in one transaction.

Every state change of a run happens inside ``Engine.change()``: one store transaction
that locks the run, applies facts to its history, advances the interpreter, writes the
entries, the run row, the audit events and the jobs the change produced, and commits
them together. Live interpreters are cached per run and reused while the run row's
``version`` proves nobody else changed the run since (the hot path needs no history
read); any rollback evicts them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from squidmesh.core import contracts, state
from squidmesh.core.definition import StepDefinition, WorkflowDefinition
from squidmesh.core.history import Entry, History
from squidmesh.core.records import Attempt, AuditEvent, Job
from squidmesh.core.replay import Activation, Interpreter, compensation_plan
from squidmesh.errors import ConcurrentChangeError, DispatchError, SquidmeshError, StorageError
from squidmesh.runtime import invoke
from squidmesh.runtime.executors import DatabaseExecutor, Executor, InlineExecutor
from squidmesh.storage.base import RunRecord, Store, Transaction, WriteBatch
from squidmesh.types import RunStatus

__all__ = ["Change", "Engine", "Lease", "Live"]

log = logging.getLogger("squidmesh")
workflow_log = logging.getLogger("squidmesh.workflow")

ACTIVE = frozenset({"pending", "running", "retrying", "paused", "cancelling"})
# A step may run while the run is paused: a join can wait on an approval and a step at once.
#: a step whose worker died this many times in a row fails instead of running again
LOST_LIMIT = 5
STEP_RUNNABLE = frozenset({"running", "retrying", "paused", "cancelling"})


@dataclasses.dataclass(frozen=True)
class Lease:
    """The worker a job is leased to, and for how long each lease lasts."""

    worker: str
    seconds: float
    #: begin the run's next step in the same transaction (off while a worker drains)
    eager: bool = True
    #: the worker's stop event: once set (draining), begin nothing further, even for a
    #: job that started before the worker was asked to stop
    draining: Any = None


class _NeedsLock(Exception):
    """An optimistic change found it needs the run's lock; it is redone with it."""


def _copy_run(run: RunRecord) -> RunRecord:
    return dataclasses.replace(
        run, current_steps=list(run.current_steps), waiting_on=list(run.waiting_on)
    )


#: a transactional step that finished inside its own job's transaction
_LANDED = object()


#: what an eagerly begun step needs to run: run, entry, definition, attempt, started at
_Begun = tuple[RunRecord, Entry, Any, int, str]


@dataclasses.dataclass
class Live:
    """A run's interpreter and the history it has consumed."""

    interpreter: Interpreter
    history: History


@dataclasses.dataclass
class Change:
    """What one transaction touches; flushed just before commit."""

    tx: Transaction
    now: datetime
    jobs: list[Job] = dataclasses.field(default_factory=list)
    new: dict[str, dict[int, Entry]] = dataclasses.field(default_factory=dict)
    changed: dict[str, dict[int, Entry]] = dataclasses.field(default_factory=dict)
    runs: dict[str, RunRecord] = dataclasses.field(default_factory=dict)
    lives: dict[str, Live] = dataclasses.field(default_factory=dict)
    logs: list[tuple[str, Entry]] = dataclasses.field(default_factory=list)
    #: each locked run as it was read, so a change that decided nothing writes nothing
    read: dict[str, RunRecord] = dataclasses.field(default_factory=dict)
    #: every write of this change, applied in one ``tx.write`` just before commit
    batch: WriteBatch = dataclasses.field(default_factory=WriteBatch)
    #: an eagerly begun step: its index in batch.jobs_insert and what it needs to run
    eager: tuple[int, _Begun] | None = None
    #: that step's job once written (with its id), for the worker to run next
    eager_job: Job | None = None
    #: True once ``jobs`` went into the batch (the database executor)
    jobs_written: bool = False
    #: no lock was taken: the change must consist of its batch alone (one statement)
    optimistic: bool = False

    def inserted(self, run_id: str, entries: list[Entry]) -> None:
        bucket = self.new.setdefault(run_id, {})
        for entry in entries:
            bucket[entry.seq] = entry

    def touched(self, run_id: str, *entries: Entry) -> None:
        bucket = self.changed.setdefault(run_id, {})
        for entry in entries:
            bucket[entry.seq] = entry

    def audit(self, run_id: str, type_: str, **fields: Any) -> None:
        self.batch.audits.append(
            (run_id, AuditEvent(type=type_, at=self.now.isoformat(), **fields))
        )

    def attempt(self, run_id: str, seq: int, attempt: Attempt) -> None:
        # One change may save an attempt twice (running, then finished): keep the last,
        # since a batch may touch each attempt row only once.
        for index, (rid, s, old) in enumerate(self.batch.attempts):
            if rid == run_id and s == seq and old.number == attempt.number:
                self.batch.attempts[index] = (run_id, seq, attempt)
                return
        self.batch.attempts.append((run_id, seq, attempt))


class Engine:
    """Executes the state changes of runs against a ``Store``."""

    def __init__(
        self,
        store: Store,
        workflows: Mapping[str, WorkflowDefinition],
        executor: Executor,
        clock: Callable[[], datetime],
        *,
        cache_size: int = 1024,
    ) -> None:
        self.store = store
        self.workflows = workflows
        self.executor = executor
        self.clock = clock
        self.cache_size = cache_size
        #: run id -> (version, live interpreter, the run row at that version)
        self._cache: OrderedDict[str, tuple[int, Live, RunRecord]] = OrderedDict()
        #: steps begun by eager continuation, by job id, until the worker runs them
        self._begun: dict[int, _Begun] = {}
        #: called after a commit that produced jobs (wakes this process's workers)
        self.wakers: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def change(self, *, optimistic: bool = False) -> Iterator[Change]:
        """One transaction; jobs are enqueued inside it, logs emitted after commit."""
        ch: Change | None = None
        try:
            with self.store.transaction(autocommit=optimistic) as tx:
                ch = Change(tx=tx, now=self.clock(), optimistic=optimistic)
                yield ch
                self._flush(ch)
                if ch.jobs and not ch.jobs_written:
                    try:
                        self.executor.enqueue(ch.jobs, connection=tx)
                    except (SquidmeshError, StorageError):
                        raise
                    except Exception as exc:
                        raise DispatchError(
                            f"the executor refused {len(ch.jobs)} job(s) for run(s) "
                            f"{', '.join(sorted({j.run_id or '-' for j in ch.jobs}))}: {exc}; "
                            "nothing was changed"
                        ) from exc
        except BaseException:
            if ch is not None:
                for run_id in ch.runs:
                    self.evict(run_id)
            raise
        for run_id, run in ch.runs.items():
            live = ch.lives.get(run_id)
            if live is not None and live.interpreter.is_live and run.status in ACTIVE:
                self._cache[run_id] = (run.version, live, _copy_run(run))
                self._cache.move_to_end(run_id)
                while len(self._cache) > self.cache_size:
                    _, (_, old, _) = self._cache.popitem(last=False)
                    old.interpreter.close()
            else:
                self.evict(run_id)
        for run_id, entry in ch.logs:
            _emit(run_id, entry)
        if ch.jobs:
            for wake in list(self.wakers):
                wake()
            after = getattr(self.executor, "after_commit", None)
            if after is not None:
                after()

    def _flush(self, ch: Change) -> None:
        batch = ch.batch
        for run_id, bucket in ch.new.items():
            batch.entries_insert.extend((run_id, bucket[s]) for s in sorted(bucket))
        for run_id, bucket in ch.changed.items():
            fresh = ch.new.get(run_id, {})
            batch.entries_update.extend(
                (run_id, bucket[s]) for s in sorted(bucket) if s not in fresh
            )
        for run in ch.runs.values():
            if not ch.new.get(run.id) and not ch.changed.get(run.id) and ch.read.get(run.id) == run:
                continue  # a duplicate, late or stale delivery: nothing to write
            run.version += 1
            run.updated_at = ch.now
            batch.runs.append(run)
        if ch.jobs and type(self.executor) in (DatabaseExecutor, InlineExecutor):
            # The default executor's jobs are rows of this very batch.
            batch.jobs_insert.extend((job, None, None) for job in ch.jobs)
            ch.jobs_written = True
        if not batch:
            return
        inserted = ch.tx.write(batch)
        if ch.eager is not None:
            index, begun = ch.eager
            stored = inserted[index]
            self._begun[int(stored.id or 0)] = begun
            ch.eager_job = stored

    def evict(self, run_id: str) -> None:
        cached = self._cache.pop(run_id, None)
        if cached is not None:
            cached[1].interpreter.close()

    def close(self) -> None:
        for run_id in list(self._cache):
            self.evict(run_id)

    # ------------------------------------------------------------------ loading

    def workflow_for(self, run: RunRecord) -> WorkflowDefinition | None:
        return self.workflows.get(run.workflow)

    def lock(self, ch: Change, run_id: str) -> RunRecord | None:
        if ch.optimistic:
            # No lock and no read: the cached row stands in for it, and the batch's
            # version check rejects the write if anyone changed the run meanwhile.
            cached = self._cache.get(run_id)
            if cached is None or not cached[1].interpreter.is_live:
                raise _NeedsLock()
            found: RunRecord | None = _copy_run(cached[2])
        else:
            found = ch.tx.lock_run(run_id)
        if found is not None:
            ch.runs[found.id] = found
            ch.read[found.id] = _copy_run(found)
        return found

    def live(self, ch: Change, run: RunRecord) -> Live | None:
        """The run's interpreter: from the cache when current, else a fresh replay."""
        if run.id in ch.lives:
            return ch.lives[run.id]
        cached = self._cache.get(run.id)
        if cached is not None and cached[0] == run.version and cached[1].interpreter.is_live:
            live = cached[1]
        else:
            self.evict(run.id)
            workflow = self.workflow_for(run)
            if workflow is None:
                return None
            history = History(
                ch.tx.load_entries(run.id),
                run_id=run.id,
                workflow=run.workflow,
                trigger=run.trigger,
                payload=run.payload,
                schedule=run.schedule,
            )
            interpreter = Interpreter(
                workflow,
                run_id=run.id,
                trigger=run.trigger,
                payload=run.payload,
                schedule=run.schedule,
            )
            live = Live(interpreter, history)
        ch.lives[run.id] = live
        return live

    def step_definition(self, live: Live, entry: Entry) -> StepDefinition[Any, Any] | None:
        """The definition of the call at ``entry`` (with its per-call options)."""
        found = live.interpreter.step_calls.get(entry.seq)
        if found is None:
            obj = invoke.resolve_ref(str(entry.meta.get("ref", "")))
            found = obj if isinstance(obj, StepDefinition) else None
        return found

    def compensation_for(self, live: Live, entry: Entry) -> Any:
        """The compensation callable of the step at ``entry``, if it can be found."""
        definition = live.interpreter.step_calls.get(entry.seq)
        if definition is not None:
            return definition.compensate
        return invoke.resolve_ref(str(entry.meta.get("compensate") or ""))

    def warm(self, ch: Change, run: RunRecord, live: Live) -> None:
        """Replay a cold interpreter once so it knows each step call and its options."""
        if not live.interpreter.is_live and run.status in STEP_RUNNABLE:
            self.advance(ch, run, live)

    # ------------------------------------------------------------------ advancing

    def advance(self, ch: Change, run: RunRecord, live: Live) -> None:
        """Run the workflow as far as it can go and record what it decided."""
        act = live.interpreter.advance(live.history, now=ch.now)
        self.apply(ch, run, live, act)

    def apply(self, ch: Change, run: RunRecord, live: Live, act: Activation) -> None:
        history = live.history
        ch.inserted(run.id, act.new_entries)
        ch.touched(run.id, *act.updates)
        ch.logs.extend((run.id, e) for e in act.logs)
        if act.outcome == "waiting":
            if self._deliver_buffered_events(ch, run, live, act):
                self.advance(ch, run, live)
                return
            for entry in act.new_entries:
                if entry.kind == "step" and entry.status == "pending":
                    ch.jobs.append(
                        Job("step", run.id, entry.seq, entry.attempts + 1, run_at=ch.now)
                    )
                elif entry.wake_at is not None and entry.status == "running":
                    ch.jobs.append(
                        Job("activate", run.id, run_at=datetime.fromisoformat(entry.wake_at))
                    )
                if entry.kind in ("pause", "approval") and entry.status == "running":
                    ch.audit(run.id, "paused", step=entry.name)
            run.waiting_on = list(act.waiting_on)
            run.current_steps = [history[s].name for s in act.waiting_on]
            if act.compensate:
                ch.audit(run.id, "undo", step="undo")
                self._start_compensation(ch, run, act.compensate)
                run.status = RunStatus.RUNNING.value
                run.reason = "compensating"
            else:
                if run.status != RunStatus.CANCELLING.value:
                    run.status = state.waiting_status(history, act.waiting_on).value
                run.reason = None
            return
        run.waiting_on = []
        if act.outcome == "completed":
            run.status = RunStatus.COMPLETED.value
            run.result = act.result
            run.error = None
            run.reason = "completed"
            run.current_steps = []
        elif act.outcome == "failed":
            if act.compensate:
                run.pending_outcome = {
                    "status": RunStatus.FAILED.value,
                    "error": act.error,
                    "reason": act.reason,
                }
                run.reason = "compensating"
                run.error = act.error
                self._start_compensation(ch, run, act.compensate)
            else:
                self._end(ch, run, RunStatus.FAILED, error=act.error, reason=act.reason)
        elif act.outcome == "suspended":
            run.status = RunStatus.SUSPENDED.value
            run.error = act.error
            run.reason = act.reason
            ch.audit(
                run.id,
                "suspended",
                comment=(act.error or {}).get("message"),
                metadata={"reason": act.reason},
            )
        elif act.outcome == "cancelled":
            if act.compensate:
                run.pending_outcome = {"status": RunStatus.CANCELLED.value, "reason": "cancelled"}
                run.status = RunStatus.CANCELLING.value
                self._start_compensation(ch, run, act.compensate)
            else:
                self._end(ch, run, RunStatus.CANCELLED, reason="cancelled")

    def _end(
        self,
        ch: Change,
        run: RunRecord,
        status: RunStatus,
        *,
        error: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        run.status = status.value
        run.reason = reason
        run.pending_outcome = None
        run.current_steps = []
        run.waiting_on = []
        if error is not None:
            run.error = error
        if status is RunStatus.CANCELLED:
            request = run.cancel_request or {}
            ch.audit(run.id, "cancelled", actor=request.get("actor"), comment=request.get("reason"))

    def _deliver_buffered_events(
        self, ch: Change, run: RunRecord, live: Live, act: Activation
    ) -> bool:
        if not any(e.kind == "event" and e.status == "running" for e in act.new_entries):
            return False
        if ch.optimistic:
            raise _NeedsLock()  # consuming buffered events needs reads and a lock
        delivered = False
        for event in ch.tx.load_events(run.id):
            entry = state.deliver_event(live.history, event.name, event.data, ch.now)
            if entry is not None:
                ch.tx.delete_events(run.id, [event.id])
                ch.touched(run.id, entry)
                ch.audit(run.id, "event_received", step=event.name)
                delivered = True
        return delivered

    def _start_compensation(self, ch: Change, run: RunRecord, plan: tuple[int, ...]) -> None:
        first = plan[0]
        ch.audit(run.id, "compensation_started", step=None, metadata={"plan": list(plan)})
        ch.jobs.append(Job("compensate", run.id, first, run_at=ch.now))

    def in_flight(self, live: Live) -> list[Entry]:
        return [e for e in live.history.entries if e.kind == "step" and e.status == "running"]

    def finish_cancel(self, ch: Change, run: RunRecord, live: Live | None) -> None:
        """Deliver cancellation into the workflow and end (or compensate) the run."""
        compensate = bool((run.cancel_request or {}).get("compensate"))
        if live is None:
            # No interpreter to unwind (suspended run, or workflow not registered): the
            # compensation plan still comes from the recorded history.
            entries = ch.tx.load_entries(run.id) if compensate else []
            plan = compensation_plan(History(entries))
            if plan:
                for seq in plan:
                    entries[seq].compensation = {"status": "pending"}
                    ch.touched(run.id, entries[seq])
                run.pending_outcome = {"status": RunStatus.CANCELLED.value, "reason": "cancelled"}
                run.status = RunStatus.CANCELLING.value
                self._start_compensation(ch, run, tuple(plan))
                return
            self._end(ch, run, RunStatus.CANCELLED, reason="cancelled")
            return
        act = live.interpreter.cancel(live.history, now=ch.now, compensate=compensate)
        self.apply(ch, run, live, act)

    # ------------------------------------------------------------------ jobs

    def perform(self, job: Job, lease: Lease | None = None) -> Job | None:
        """Execute one delivered job. Duplicate, late or stale deliveries change nothing.

        A database worker passes its ``lease``: the job's row is then deleted in the
        transaction that records the job's outcome, and when that outcome schedules the
        run's next step right away, the step is begun in the same transaction and
        returned, leased to the worker, to run at once (eager continuation: about one
        commit per step of a sequential run).
        """
        if job.kind == "activate":
            return self._perform_activate(job, lease)
        if job.kind == "step":
            return self._perform_step(job, lease)
        if job.kind == "compensate":
            self._perform_compensate(job, lease)
            return None
        raise ValueError(f"job kind {job.kind!r} is not handled by the engine")

    def _finish_job(self, ch: Change, job: Job, lease: Lease | None) -> None:
        if lease is not None and job.id is not None:
            ch.batch.jobs_delete.append(job.id)

    def _perform_activate(self, job: Job, lease: Lease | None) -> Job | None:
        with self.change() as ch:
            self._finish_job(ch, job, lease)
            run = self.lock(ch, str(job.run_id))
            if run is None or run.status not in ("pending", "running", "retrying", "paused"):
                return None
            live = self.live(ch, run)
            if live is None:
                return None
            for entry in state.due_entries(live.history, ch.now):
                if entry.kind == "step":
                    continue
                state.fire_due(live.history, entry, ch.now)
                ch.touched(run.id, entry)
                if entry.kind in ("approval", "event"):
                    ch.audit(run.id, "timed_out", step=entry.name)
            if run.status == "pending":
                run.status = RunStatus.RUNNING.value
            self.advance(ch, run, live)
            self._continue(ch, run, live, lease)
        return ch.eager_job

    def _perform_step(self, job: Job, lease: Lease | None) -> Job | None:
        seq = int(job.seq if job.seq is not None else -1)
        begun = self._begun.pop(int(job.id), None) if job.id is not None else None
        if begun is not None:
            run, entry, definition, number, started = begun
        else:
            with self.change() as ch:
                prepared = self._begin_step(ch, job, lease, seq)
            if prepared is None:
                return None
            if prepared is _LANDED:  # a transactional step, finished in that transaction
                return ch.eager_job
            assert isinstance(prepared, tuple)
            run, entry, definition, number, started = prepared
        # The attempt runs outside any transaction: its outcome is recorded afterwards.
        value: Any = None
        failure: BaseException | None = None
        if definition is None:
            failure = SquidmeshError(
                f"step {entry.name} of run {run.id} cannot be found in this process "
                f"({entry.meta.get('ref')}): import the module that defines it in the worker"
            )
        else:
            try:
                value = invoke.call_step(
                    definition, entry.input or {}, self._context(run, entry, number, None)
                )
            except Exception as exc:
                failure = exc
        # A run this process holds in its cache is landed without a lock (one round trip
        # on PostgreSQL); if someone else changed it meanwhile, land again under the lock.
        for optimistic in (True, False):
            try:
                with self.change(optimistic=optimistic) as ch:
                    self._finish_job(ch, job, lease)
                    run2 = self.lock(ch, run.id)
                    if run2 is None:
                        return None
                    live = self.live(ch, run2)
                    if live is None:
                        return None
                    entry = live.history[seq]
                    self.land(ch, run2, live, entry, number, started, value=value, error=failure)
                    self._continue(ch, run2, live, lease)
                return ch.eager_job
            except (_NeedsLock, ConcurrentChangeError):
                if not optimistic:
                    raise
        return None

    def _begin_step(
        self, ch: Change, job: Job, lease: Lease | None, seq: int
    ) -> _Begun | object | None:
        """Validate a step job and begin its attempt (or finish a transactional step)."""
        run = self.lock(ch, str(job.run_id))
        if run is None or run.status not in STEP_RUNNABLE:
            self._finish_job(ch, job, lease)
            return None
        live = self.live(ch, run)
        if live is None or not 0 <= seq < len(live.history):
            self._finish_job(ch, job, lease)
            return None
        entry = live.history[seq]
        if entry.kind != "step":
            self._finish_job(ch, job, lease)
            return None
        recovered = False
        if entry.status == "running" and entry.attempts == job.attempt:
            # The job came back while its attempt is still marked running: a job is
            # only redelivered once its lease expired, so the worker that ran it died.
            if not self._recover_lost_attempt(ch, run, live, entry):
                self._finish_job(ch, job, lease)
                return None
            recovered = True
        stale = entry.status != "pending" or (
            not recovered and job.attempt is not None and entry.attempts + 1 != job.attempt
        )
        if stale:
            self._finish_job(ch, job, lease)
            return None
        if run.status == RunStatus.CANCELLING.value:
            self._finish_job(ch, job, lease)
            if not self.in_flight(live):
                self.finish_cancel(ch, run, live)
            return None
        self.warm(ch, run, live)
        if entry.status != "pending":  # the replay moved on (a cancelled branch)
            self._finish_job(ch, job, lease)
            return None
        definition = self.step_definition(live, entry)
        number = state.begin_attempt(entry, ch.now)
        ch.touched(run.id, entry)
        started = ch.now.isoformat()
        if run.status == RunStatus.RETRYING.value:
            run.status = RunStatus.RUNNING.value
        if definition is not None and definition.transaction:
            # Host writes and the step's completion share this transaction: a failure
            # rolls both back, and the failure is then recorded in a new transaction.
            context = self._context(run, entry, number, ch.tx)
            try:
                result = invoke.call_step(definition, entry.input or {}, context)
                # A result that cannot be stored fails the attempt: roll its writes back.
                contracts.encode(result, what=f"the result of step {entry.name}")
            except Exception as exc:
                raise _TransactionalStepFailed(exc) from exc
            ch.attempt(run.id, seq, Attempt(number, "running", None, started))
            self._finish_job(ch, job, lease)
            self.land(ch, run, live, entry, number, started, value=result, error=None)
            self._continue(ch, run, live, lease)
            return _LANDED
        ch.attempt(run.id, seq, Attempt(number, "running", None, started))
        return (run, entry, definition, number, started)

    def _continue(self, ch: Change, run: RunRecord, live: Live, lease: Lease | None) -> None:
        """Begin the run's next due step in this transaction and hand it to the worker
        (``ch.eager_job`` once committed)."""
        if lease is None or not lease.eager or run.status != "running":
            return
        if lease.draining is not None and lease.draining.is_set():
            return
        for index, job in enumerate(ch.jobs):
            if job.kind != "step" or job.run_id != run.id or job.seq is None:
                continue
            if job.run_at is not None and job.run_at > ch.now:
                continue
            entry = live.history[job.seq]
            definition = self.step_definition(live, entry)
            if definition is None or definition.transaction or entry.status != "pending":
                return
            del ch.jobs[index]
            number = state.begin_attempt(entry, ch.now)
            ch.touched(run.id, entry)
            started = ch.now.isoformat()
            ch.attempt(run.id, entry.seq, Attempt(number, "running", None, started))
            ch.eager = (
                len(ch.batch.jobs_insert),
                (run, entry, definition, number, started),
            )
            ch.batch.jobs_insert.append(
                (
                    Job("step", run.id, entry.seq, number, run_at=ch.now),
                    lease.worker,
                    ch.now + timedelta(seconds=lease.seconds),
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
        info = {
            "type": "squidmesh.WorkerLost",
            "types": ["squidmesh.WorkerLost"],
            "message": f"the worker running attempt {entry.attempts} of step {entry.name} "
            "stopped before recording its outcome (lease expired)",
            "details": {"lost_attempts": lost},
            "traceback": None,
            "retryable": lost < LOST_LIMIT,
        }
        ch.attempt(
            run.id,
            entry.seq,
            Attempt(entry.attempts, "failed", info, entry.started_at, ch.now.isoformat()),
        )
        ch.touched(run.id, entry)
        log.warning("run %s: %s", run.id, info["message"])
        if lost >= LOST_LIMIT:
            entry.status = "running"
            live.history.resolve(entry.seq, "failed", error=info, at=ch.now.isoformat())
            self.advance(ch, run, live)
            return False
        entry.status = "pending"
        return True

    def retry_transactional_failure(
        self, job: Job, exc: BaseException, lease: Lease | None = None
    ) -> None:
        """Record the failure of a ``transaction=True`` step whose transaction rolled back."""
        seq = int(job.seq if job.seq is not None else -1)
        with self.change() as ch:
            self._finish_job(ch, job, lease)
            run = self.lock(ch, str(job.run_id))
            if run is None or run.status not in STEP_RUNNABLE:
                return
            live = self.live(ch, run)
            if live is None or not 0 <= seq < len(live.history):
                return
            entry = live.history[seq]
            if entry.status != "pending":
                return
            number = state.begin_attempt(entry, ch.now)
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
    ) -> None:
        """Record the outcome of attempt ``number`` and move the run on."""
        history = live.history
        finished = ch.now.isoformat()
        if entry.status != "running" or entry.attempts != number:
            # Stale: the branch was cancelled (a first() loser) or the run moved on.
            status = "failed" if error is not None else "completed"
            ch.attempt(run.id, entry.seq, Attempt(number, status, None, started, finished))
            if run.status == RunStatus.CANCELLING.value and not self.in_flight(live):
                self.finish_cancel(ch, run, live)
            return
        if error is None:
            try:
                state.complete_attempt(history, entry.seq, value, ch.now)
            except Exception as exc:  # the value cannot be stored as JSON
                error = exc
        definition = self.step_definition(live, entry)
        if error is not None:
            policy = definition.retry if definition is not None else _NO_RETRY
            decision, info = state.fail_attempt(history, entry.seq, error, policy, ch.now)
            ch.attempt(run.id, entry.seq, Attempt(number, "failed", info, started, finished))
            ch.touched(run.id, entry)
            if decision.retry and run.status == RunStatus.CANCELLING.value:
                # Being cancelled: no next attempt; the run ends once nothing is in flight.
                if not self.in_flight(live):
                    self.finish_cancel(ch, run, live)
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
                    run.status = state.waiting_status(history, tuple(run.waiting_on)).value
                    run.error = info
                return
        else:
            ch.attempt(run.id, entry.seq, Attempt(number, "completed", None, started, finished))
            ch.touched(run.id, entry)
        if run.status == RunStatus.CANCELLING.value:
            if not self.in_flight(live):
                self.finish_cancel(ch, run, live)
            return
        self.advance(ch, run, live)

    def _perform_compensate(self, job: Job, lease: Lease | None = None) -> None:
        seq = int(job.seq if job.seq is not None else -1)
        with self.change() as ch:
            run = self.lock(ch, str(job.run_id))
            if run is None or run.status in ("completed", "failed", "cancelled", "suspended"):
                self._finish_job(ch, job, lease)
                return
            live = self.live(ch, run)
            if live is None or not 0 <= seq < len(live.history):
                return
            entry = live.history[seq]
            if (entry.compensation or {}).get("status") not in ("pending", "running"):
                self._finish_job(ch, job, lease)
                return
            compensate = self.compensation_for(live, entry)
            entry.compensation = {"status": "running"}
            ch.touched(run.id, entry)
            failure = (run.pending_outcome or {}).get("error")
        output: Any = None
        error: dict[str, Any] | None = None
        if compensate is None:
            error = {
                "type": "squidmesh.errors.DefinitionError",
                "message": f"compensation of step {entry.name} cannot be found in this process",
            }
        else:
            attempts = (
                compensate.retry.max_attempts if isinstance(compensate, StepDefinition) else 1
            )
            for number in range(1, attempts + 1):
                try:
                    output = invoke.call_compensation(
                        compensate,
                        input=entry.input,
                        output=entry.result,
                        failure=failure,
                        context=self._context(run, entry, number, None),
                    )
                    error = None
                    break
                except Exception as exc:
                    from squidmesh.core.failures import error_info

                    error = error_info(exc)
        with self.change() as ch:
            self._finish_job(ch, job, lease)
            locked = self.lock(ch, run.id)
            if locked is None:
                return
            run = locked
            live = self.live(ch, run)
            if live is None:
                return
            entry = live.history[seq]
            try:
                from squidmesh.core.contracts import encode

                stored = encode(output, what="compensation output") if error is None else None
            except Exception as exc:
                from squidmesh.core.failures import error_info

                error, stored = error_info(exc), None
            state.record_compensation(
                live.history,
                seq,
                status="failed" if error else "completed",
                output=stored,
                error=error,
                now=ch.now,
            )
            ch.touched(run.id, entry)
            ch.audit(
                run.id,
                "compensation_failed" if error else "compensated",
                step=entry.name,
                comment=(error or {}).get("message"),
            )
            self._after_compensation(ch, run, live)

    def _after_compensation(self, ch: Change, run: RunRecord, live: Live) -> None:
        pending = [
            e for e in live.history.entries if (e.compensation or {}).get("status") == "pending"
        ]
        if pending:
            pending.sort(key=lambda e: e.order if e.order is not None else -1, reverse=True)
            ch.jobs.append(Job("compensate", run.id, pending[0].seq, run_at=ch.now))
            return
        outcome = run.pending_outcome
        if outcome is None:  # an sm.undo(): the workflow goes on
            self.advance(ch, run, live)
            return
        failures = [
            {"step": e.name, "seq": e.seq, "error": (e.compensation or {}).get("error")}
            for e in live.history.entries
            if (e.compensation or {}).get("status") == "failed"
        ]
        if outcome["status"] == RunStatus.FAILED.value:
            error = dict(outcome.get("error") or {})
            if failures:
                error["compensation_failures"] = failures
            self._end(
                ch,
                run,
                RunStatus.FAILED,
                error=error,
                reason="compensation_failed" if failures else outcome.get("reason"),
            )
        else:
            if failures:
                run.error = {
                    "type": "squidmesh.errors.CompensationFailed",
                    "message": "compensation failed while cancelling",
                    "compensation_failures": failures,
                }
            self._end(ch, run, RunStatus.CANCELLED, reason="cancelled")

    def _context(self, run: RunRecord, entry: Entry, attempt: int, tx: Transaction | None) -> Any:
        from squidmesh.core.context import StepContext

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
            _session_factory=factory,
        )


class _TransactionalStepFailed(Exception):
    """Carries a ``transaction=True`` step's exception out of its rolled-back transaction."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        super().__init__(str(error))


_NO_RETRY = __import__("squidmesh.core.retry", fromlist=["Retry"]).Retry()


def _emit(run_id: str, entry: Entry) -> None:
    data = entry.input or {}
    level = logging.getLevelName(str(data.get("level", "info")).upper())
    workflow_log.log(
        level if isinstance(level, int) else logging.INFO,
        data.get("message"),
        extra={"squidmesh": {"run_id": run_id, "seq": entry.seq, **(data.get("fields") or {})}},
    )
