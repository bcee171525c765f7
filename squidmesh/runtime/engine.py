"""The engine: load history, replay, persist the decision, all in one transaction.

Every state change of a run happens inside ``Engine.change()``: one store transaction
that locks the run, applies facts to its history, advances the interpreter, writes the
entries, the run row, the audit events and the jobs the change produced, and commits
them together. Live interpreters are cached per run and reused while the run row's
``version`` proves nobody else changed the run since (the hot path needs no history
read); any rollback evicts them.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

from squidmesh.core import state
from squidmesh.core.definition import StepDefinition, StepPolicy, WorkflowDefinition
from squidmesh.core.history import Entry, History
from squidmesh.core.lifecycle import ENDINGS, RunEvent, transition
from squidmesh.core.records import (
    CANCELLED_OUTCOME,
    COMPENSATION_PENDING,
    Attempt,
    AuditEvent,
    CancelRequest,
    ErrorRecord,
    Job,
    PendingOutcome,
)
from squidmesh.core.replay import Activation, Interpreter, compensation_plan
from squidmesh.errors import DispatchError, SquidmeshError, StorageError
from squidmesh.runtime import composition, invoke
from squidmesh.runtime.events import EventBus, Recorder
from squidmesh.runtime.executors import AfterCommit, Executor, capabilities_of
from squidmesh.runtime.replaying import run_history, run_interpreter
from squidmesh.storage.base import (
    HOLDING,
    RUN_FIXED_FIELDS,
    JobWrite,
    RunRecord,
    Store,
    Transaction,
    WriteBatch,
)
from squidmesh.types import TERMINAL_STATUSES, RunStatus

__all__ = [
    "ACTIVE",
    "ADVANCING",
    "STEP_RUNNABLE",
    "BegunStep",
    "Change",
    "Engine",
    "EngineHooks",
    "Live",
    "NeedsLock",
    "step_job_data",
]

log = logging.getLogger("squidmesh")
workflow_log = logging.getLogger("squidmesh.workflow")

#: statuses of a run whose interpreter is worth keeping (it moves again)
ACTIVE = frozenset(
    {
        RunStatus.PENDING,
        RunStatus.RUNNING,
        RunStatus.RETRYING,
        RunStatus.PAUSED,
        RunStatus.CANCELLING,
    }
)
# A step may run while the run is paused: a join can wait on an approval and a step at once.
STEP_RUNNABLE = ACTIVE - {RunStatus.PENDING}
#: statuses in which an activation advances the workflow (cancelling only settles)
ADVANCING = ACTIVE - {RunStatus.CANCELLING}


class NeedsLock(Exception):
    """An optimistic change found it needs the run's lock; it is redone with it."""


def _check_fixed(before: RunRecord, after: RunRecord) -> None:
    """A state change alters only ``RUN_MUTABLE_FIELDS``; stores do not write the rest,
    so a change that alters them would be lost silently: fail loudly instead."""
    altered = [f for f in RUN_FIXED_FIELDS if getattr(before, f) != getattr(after, f)]
    if altered:
        raise SquidmeshError(
            f"internal error: a state change of run {after.id} alters {', '.join(altered)}, "
            "which are fixed when a run is created; please report this"
        )


def _copy_run(run: RunRecord) -> RunRecord:
    """A copy a change may alter without touching ``run``: its fields are values, but
    for the two lists. ``copy.copy``, not ``dataclasses.replace``: a step copies a run
    three times, and replace (``__init__`` with every field by keyword) cost 4x more."""
    copied = copy.copy(run)
    copied.current_steps = list(run.current_steps)
    copied.waiting_on = list(run.waiting_on)
    return copied


@dataclasses.dataclass(frozen=True)
class BegunStep:
    """An attempt of a step that a change began: what running it needs."""

    run: RunRecord
    entry: Entry
    definition: StepDefinition[Any, Any] | None
    #: the attempt's number, and when it started (ISO 8601, as its attempt is recorded)
    number: int
    started: str


@dataclasses.dataclass
class Live:
    """A run's interpreter and the history it has consumed."""

    interpreter: Interpreter
    history: History


@dataclasses.dataclass
class _Slot:
    """The cache's knowledge of one run: the newest version this process committed or
    read, and its live interpreter unless a change has it checked out (``live`` None).

    The slot outlives a check-out so that a slower thread finishing an older change can
    see that a newer version exists and must not publish its interpreter over it.
    """

    version: int
    live: Live | None
    run: RunRecord


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
    #: histories read with a run's lock (its interpreter was not cached at that version)
    histories: dict[str, list[Entry]] = dataclasses.field(default_factory=dict)
    #: every write of this change, applied in one ``tx.write`` just before commit
    batch: WriteBatch = dataclasses.field(default_factory=WriteBatch)
    #: an eagerly begun step: its index in batch.jobs_insert and what it needs to run
    eager: tuple[int, BegunStep] | None = None
    #: that step's job once written (with its id), for the worker to run next
    eager_job: Job | None = None
    #: when each job this change finishes was due, by id: a row carried on to the next
    #: step keeps it (``JobRunner._continue``)
    finishing: dict[int, datetime | None] = dataclasses.field(default_factory=dict)
    #: True once ``jobs`` went into the batch (the database executor)
    jobs_written: bool = False
    #: no lock was taken: the change must consist of its batch alone (one statement)
    optimistic: bool = False
    #: runs written (with a new version) even if nothing else about them changed
    forced: set[str] = dataclasses.field(default_factory=set)
    #: the lifecycle facts this change reports, delivered after its commit
    events: Recorder = dataclasses.field(default_factory=lambda: Recorder(False))

    def force_write(self, run: RunRecord) -> None:
        """Write ``run`` with a new version even if this change altered nothing in it, so
        that concurrent changes decided on its old version fail their version check."""
        self.forced.add(run.id)

    def replace_payload(self, run: RunRecord, payload: dict[str, Any]) -> None:
        """Give the locked pending ``run`` a new input (a start within its debounce
        window). The payload is fixed for a run's state changes, so it travels in a
        batch section of its own; the run is written with a new version, so a change
        decided on the old input fails its check."""
        run.payload = payload
        self.batch.payloads.append((run.id, payload))
        before = self.read.get(run.id)
        if before is not None:
            before.payload = payload
        self.force_write(run)

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


@dataclasses.dataclass(frozen=True)
class EngineHooks:
    """What ``squidmesh.testing`` changes in an engine, given when it is built."""

    #: what to call instead of a step or compensation for attempt n (None: the real one)
    step_override: Callable[[Any, int], Callable[..., Any] | None] | None = None
    #: a check run after each activation (the tester raises never-yielded step calls)
    on_activation: Callable[[RunRecord, History, Activation], None] | None = None


def step_job_data(entry: Entry) -> dict[str, Any] | None:
    """What the job of the step at ``entry`` carries: its flow-control queue, key and
    priority (``squidmesh.core.flow``), recorded with the call; None without a queue."""
    flow = entry.meta.get("flow") if entry.kind == "step" else None
    return dict(flow) if isinstance(flow, dict) else None


def _stamp_flow(ch: Change, *, unlimited: set[str] | None) -> None:
    """Give each step job of a queued call its queue, key and priority (``Job.data``),
    wherever in the change it was made. ``unlimited`` is not None when the executor
    hands jobs to a broker, whose workers start them without a queue's limits: that is
    said once per queue (a step's queue is known only when it is called), and the
    queues said are added to it."""
    for index, job in enumerate(ch.jobs):
        if job.kind != "step" or job.data is not None or job.run_id is None or job.seq is None:
            continue
        entry = ch.new.get(job.run_id, {}).get(job.seq) or ch.changed.get(job.run_id, {}).get(
            job.seq
        )
        if entry is None:
            live = ch.lives.get(job.run_id)
            if live is not None and 0 <= job.seq < len(live.history):
                entry = live.history[job.seq]
        if entry is None:
            continue
        data = step_job_data(entry)
        if data is not None:
            ch.jobs[index] = dataclasses.replace(job, data=data)
            queue = str(data.get("queue"))
            if unlimited is not None and queue not in unlimited:
                unlimited.add(queue)
                log.warning(
                    "run %s: step %s is on queue %r, but this Mesh's executor hands jobs "
                    "to a broker, which runs them without the queue's limits (they hold "
                    "where squidmesh's workers claim jobs from its jobs table: use the "
                    "default executor for queued steps)",
                    job.run_id,
                    entry.name,
                    queue,
                )


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
        events: EventBus | None = None,
        hooks: EngineHooks | None = None,
    ) -> None:
        self.store = store
        #: lifecycle events and telemetry: told after each commit (squidmesh.runtime.events)
        self.events = events if events is not None else EventBus()
        self.workflows = workflows
        self.executor = executor
        #: what the executor declares it does beyond ``enqueue``
        self.capabilities = capabilities_of(executor)
        self.clock = clock
        self.cache_size = cache_size
        #: run id -> the newest version known here and its live interpreter (LRU order)
        self._cache: OrderedDict[str, _Slot] = OrderedDict()
        #: job threads share the cache: check-outs and publications happen under this lock
        self._cache_lock = threading.Lock()
        #: the largest JSON value (bytes) a step may return; None means no limit
        self.max_value_bytes: int | None = None
        #: steps begun by eager continuation, by job id, until the worker runs them
        self.begun: dict[int, BegunStep] = {}
        #: called after a commit that produced jobs (wakes this process's workers)
        self.wakers: list[Callable[[], None]] = []
        #: the queues of steps this engine handed to a broker, which runs them without
        #: their limits (said once each in the log); None when the executor's jobs are
        #: claimed from the jobs table, where the limits hold
        self.unlimited_queues: set[str] | None = None if self.capabilities.jobs_in_table else set()
        #: testing hooks (``squidmesh.testing``); none in production
        self.hooks = hooks if hooks is not None else EngineHooks()

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def change(self, *, optimistic: bool = False, one_write: bool = False) -> Iterator[Change]:
        """One transaction; jobs are enqueued inside it, logs emitted after commit.

        ``one_write``: the change only reads, then writes one batch (starting a run)."""
        ch: Change | None = None
        try:
            # A change made without the run's lock writes one batch and nothing else, so
            # it needs no explicit transaction (the batch checks and commits as a whole),
            # unless an executor of its own enqueues jobs in it too.
            single = (optimistic or one_write) and self.batches_jobs
            with self.store.transaction(autocommit=single) as tx:
                ch = Change(
                    tx=tx, now=self.clock(), optimistic=optimistic, events=self.events.recorder()
                )
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
                sealed = ch.events.seal(ch.read, ch.runs.values())
        except BaseException:
            if ch is not None:
                for run_id, run in ch.read.items():
                    # The interpreters this change checked out may hold its uncommitted
                    # effects: drop them, and forget what is not newer than they were.
                    live = ch.lives.get(run_id)
                    if live is not None:
                        live.interpreter.close()
                    self._forget(run_id, up_to=run.version)
            raise
        for run_id, run in ch.runs.items():
            live = ch.lives.get(run_id)
            keep = live is not None and live.interpreter.is_live and run.status in ACTIVE
            self._publish(run_id, run, live if keep else None)
        self.events.publish(sealed)
        for run_id, entry in ch.logs:
            _emit(run_id, entry)
        if ch.jobs:
            for wake in list(self.wakers):
                wake()
            if self.capabilities.after_commit:
                cast(AfterCommit, self.executor).after_commit()

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
            unchanged = not ch.new.get(run.id) and not ch.changed.get(run.id)
            if unchanged and run.id not in ch.forced and ch.read.get(run.id) == run:
                # A duplicate, late or stale delivery: nothing to write. Without a lock
                # that judgement rests on a cached row, so the database must confirm the
                # version it was made at, or the change is redone under the lock.
                if ch.optimistic:
                    batch.guards.append((run.id, run.version))
                continue
            before = ch.read.get(run.id)
            if before is not None:
                _check_fixed(before, run)
            run.version += 1
            run.updated_at = ch.now
            batch.runs.append(run)
            if run.status in TERMINAL_STATUSES and self._queued(run):
                # The run ends: the slot of its workflow-level queue goes with it.
                batch.jobs_delete.extend(
                    q.job.id
                    for q in ch.tx.load_jobs(run.id)
                    if q.worker == HOLDING and q.job.id is not None
                )
        if ch.jobs:
            _stamp_flow(ch, unlimited=self.unlimited_queues)
        if ch.jobs and self.batches_jobs:
            # The default executor's jobs are rows of this very batch.
            batch.jobs_insert.extend(JobWrite(job) for job in ch.jobs)
            ch.jobs_written = True
        if not batch:
            return
        # Final unless an executor of its own enqueues the jobs after it (see change()).
        inserted = ch.tx.write(batch, final=not ch.jobs or ch.jobs_written)
        if ch.eager is not None:
            index, begun = ch.eager
            stored = inserted[index]
            self.begun[int(stored.id or 0)] = begun
            ch.eager_job = stored

    def _queued(self, run: RunRecord) -> bool:
        """Whether ``run``'s workflow has a workflow-level queue (so a slot to release)."""
        workflow = self.workflows.get(run.workflow)
        return workflow is not None and workflow.queue is not None

    @property
    def batches_jobs(self) -> bool:
        """True when the executor's jobs are rows written in the change's own batch (the
        built-in executors); other executors enqueue through the open transaction."""
        return self.capabilities.batched

    def _publish(self, run_id: str, run: RunRecord, live: Live | None) -> None:
        """Record what a committed change left: version ``run.version`` and, for an
        active run, its interpreter. A version is committed by one change only (the
        version check), so an older one arriving late is dropped, never put back."""
        stale: list[Live] = []
        with self._cache_lock:
            slot = self._cache.get(run_id)
            if slot is not None and slot.version == run.version and slot.live is None:
                # A change that wrote nothing hands back the interpreter it checked out.
                slot.live = live
                self._cache.move_to_end(run_id)
            elif slot is not None and slot.version >= run.version:
                if live is not None and live is not slot.live:
                    stale.append(live)
            else:
                if slot is not None and slot.live is not None:
                    stale.append(slot.live)
                self._cache[run_id] = _Slot(run.version, live, _copy_run(run))
                self._cache.move_to_end(run_id)
                while len(self._cache) > self.cache_size:
                    old = self._cache.popitem(last=False)[1]
                    if old.live is not None:
                        stale.append(old.live)
        for dropped in stale:
            dropped.interpreter.close()

    def _forget(self, run_id: str, *, up_to: int) -> None:
        """Drop the interpreter of ``run_id`` unless it is newer than version ``up_to``."""
        with self._cache_lock:
            slot = self._cache.get(run_id)
            if slot is None or slot.version > up_to:
                return
            live, slot.live = slot.live, None
        if live is not None:
            live.interpreter.close()

    def _check_out(self, run: RunRecord) -> Live | None:
        """Take the cached interpreter of ``run`` at exactly its version, if there is one:
        it then belongs to the calling change until that change publishes or drops it."""
        with self._cache_lock:
            slot = self._cache.get(run.id)
            if slot is None:
                return None
            live = slot.live
            if live is not None and slot.version == run.version and live.interpreter.is_live:
                slot.live = None
                return live
            if slot.version > run.version:
                return None  # a newer version is cached; this change will fail its check
            slot.live = None
        if live is not None:
            live.interpreter.close()  # older than what this change read: useless
        return None

    def evict(self, run_id: str) -> None:
        """Drop the interpreter of ``run_id``; the version stays known (see ``_Slot``)."""
        self._forget(run_id, up_to=1 << 62)

    def discard(self, run_id: str) -> None:
        """Forget ``run_id`` entirely (the run was deleted)."""
        with self._cache_lock:
            slot = self._cache.pop(run_id, None)
        if slot is not None and slot.live is not None:
            slot.live.interpreter.close()

    def close(self) -> None:
        for run_id in list(self._cache):
            self.discard(run_id)

    def cached_runs(self) -> int:
        """How many runs have a live interpreter in this process's cache."""
        with self._cache_lock:
            return sum(1 for slot in self._cache.values() if slot.live is not None)

    # ------------------------------------------------------------------ loading

    def workflow_for(self, run: RunRecord) -> WorkflowDefinition | None:
        return self.workflows.get(run.workflow)

    def lock(self, ch: Change, run_id: str) -> RunRecord | None:
        if ch.optimistic:
            # No lock and no read: the cached row stands in for it, and the batch's
            # version check rejects the write if anyone changed the run meanwhile.
            with self._cache_lock:
                slot = self._cache.get(run_id)
                if slot is None or slot.live is None or not slot.live.interpreter.is_live:
                    raise NeedsLock()
                found: RunRecord | None = _copy_run(slot.run)
        else:
            # The history comes with the lock (one round trip on PostgreSQL) unless the
            # cached interpreter is at the run's version.
            with self._cache_lock:
                slot = self._cache.get(run_id)
                known = slot.version if slot is not None and slot.live is not None else None
            locked = ch.tx.lock_run_with_history(run_id, known)
            found = None
            if locked is not None:
                found, history = locked
                if history is not None:
                    ch.histories[run_id] = history
        if found is not None:
            ch.runs[found.id] = found
            ch.read[found.id] = _copy_run(found)
        return found

    def live(self, ch: Change, run: RunRecord) -> Live | None:
        """The run's interpreter: from the cache when current, else a fresh replay."""
        if run.id in ch.lives:
            return ch.lives[run.id]
        # Taken OUT of the cache: a live interpreter belongs to one change at a time (it is
        # put back when that change commits). Shared, two concurrent changes of one run
        # (join branches landing in two threads) would see each other's uncommitted
        # mutations, and a rolled-back landing could be cached and later judged stale.
        live = self._check_out(run)
        if live is None:
            workflow = self.workflow_for(run)
            if workflow is None:
                return None
            interpreter = run_interpreter(run, workflow, max_value_bytes=self.max_value_bytes)
            entries = ch.histories.pop(run.id, None)
            if entries is None:
                entries = ch.tx.load_entries(run.id)
            live = Live(interpreter, run_history(run, entries))
        ch.lives[run.id] = live
        return live

    def step_definition(self, live: Live, entry: Entry) -> StepDefinition[Any, Any] | None:
        """The definition of the call at ``entry`` (with its per-call options)."""
        found = live.interpreter.step_calls.get(entry.seq)
        if found is None:
            obj = invoke.resolve_ref(StepPolicy.from_json(entry.meta).ref)
            found = obj if isinstance(obj, StepDefinition) else None
        if found is None:
            found = self._replayed_call(live, entry)
        return found

    def compensation_for(self, live: Live | None, entry: Entry) -> Any:
        """The compensation callable of the step at ``entry``, if it can be found (by
        import alone when this process does not have the run's workflow: ``live`` None)."""
        definition = live.interpreter.step_calls.get(entry.seq) if live is not None else None
        if definition is not None:
            return definition.compensate
        found = invoke.resolve_ref(StepPolicy.from_json(entry.meta).compensate or "")
        if found is None and live is not None:
            definition = self._replayed_call(live, entry)
            found = definition.compensate if definition is not None else None
        return found

    def _replayed_call(self, live: Live, entry: Entry) -> StepDefinition[Any, Any] | None:
        """Find a step call no import reaches (a closure, a local function) by replaying a
        copy of the history with a fresh interpreter: the workflow yields it again."""
        workflow = live.interpreter.workflow
        history = live.history.copy()
        fresh = Interpreter(
            workflow,
            run_id=live.interpreter.run_id,
            trigger=live.interpreter.trigger,
            payload=live.interpreter.payload,
            schedule=live.interpreter.schedule,
        )
        try:
            fresh.advance(history, now=self.clock())
        finally:
            fresh.close()
        found = fresh.step_calls.get(entry.seq)
        return found if isinstance(found, StepDefinition) else None

    def warm(self, ch: Change, run: RunRecord, live: Live) -> None:
        """Replay a cold interpreter once so it knows each step call and its options."""
        if not live.interpreter.is_live and run.status in STEP_RUNNABLE:
            self.advance(ch, run, live)

    # ------------------------------------------------------------------ advancing

    def advance(self, ch: Change, run: RunRecord, live: Live) -> None:
        """Run the workflow as far as it can go and record what it decided."""
        started = time.time_ns()
        act = live.interpreter.advance(live.history, now=ch.now)
        ch.events.activated(run, started, act.outcome, act.error)
        if self.hooks.on_activation is not None:
            self.hooks.on_activation(run, live.history, act)
        self.apply(ch, run, live, act)

    def override(self, target: Any, attempt: int) -> Callable[..., Any] | None:
        """What to call instead of step (or compensation) ``target``: None, the real one."""
        override = self.hooks.step_override
        return None if override is None else override(target, attempt)

    def apply(self, ch: Change, run: RunRecord, live: Live, act: Activation) -> None:
        history = live.history
        ch.inserted(run.id, act.new_entries)
        ch.touched(run.id, *act.updates)
        ch.logs.extend((run.id, e) for e in act.logs)
        for warning in act.warnings:  # step calls never yielded: audit, not history
            ch.audit(run.id, "warning", **warning)
        if ch.optimistic and (act.children or act.continued or composition.abandoned(act)):
            raise NeedsLock()  # creating or cancelling runs needs reads and the lock
        if composition.abandoned(act):
            composition.cancel_abandoned(self, ch, run, act)
        if act.outcome == "waiting":
            if self._deliver_buffered_events(ch, run, live, act):
                self.advance(ch, run, live)
                return
            if act.children and composition.start_children(self, ch, run, live, act):
                self.advance(ch, run, live)  # some child entry resolved at once
                return
            for entry in [*act.new_entries, *act.started]:
                if entry.meta.get("held"):
                    continue  # a join(limit=...) branch waiting for a slot
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
                run.status = transition(run.status, RunEvent.COMPENSATING).value
                run.reason = "compensating"
            else:
                waiting = state.waiting_status(history, act.waiting_on)
                run.status = transition(run.status, RunEvent.WAITS, waiting=waiting).value
                run.reason = None
            return
        run.waiting_on = []
        if act.outcome == "completed":
            run.status = transition(run.status, RunEvent.COMPLETED).value
            run.result = act.result
            run.error = None
            run.reason = "completed"
            run.current_steps = []
            if act.continued is not None:
                composition.continue_as_new(ch, run, act)
            composition.on_end(ch, run)
        elif act.outcome == "failed":
            if act.compensate:
                run.pending_outcome = PendingOutcome(
                    RunStatus.FAILED, reason=act.reason, error=act.error
                ).to_json()
                run.reason = "compensating"
                run.error = act.error.to_json() if act.error is not None else None
                self._start_compensation(ch, run, act.compensate)
            else:
                self.end(ch, run, RunStatus.FAILED, error=act.error, reason=act.reason)
        elif act.outcome == "suspended":
            run.status = transition(run.status, RunEvent.SUSPENDED).value
            run.error = act.error.to_json() if act.error is not None else None
            run.reason = act.reason
            ch.audit(
                run.id,
                "suspended",
                comment=act.error.message if act.error is not None else None,
                metadata={"reason": act.reason},
            )
        elif act.outcome == "cancelled":
            if act.compensate:
                run.pending_outcome = CANCELLED_OUTCOME.to_json()
                run.status = transition(run.status, RunEvent.CANCEL_REQUESTED).value
                self._start_compensation(ch, run, act.compensate)
            else:
                self.end(ch, run, RunStatus.CANCELLED, reason="cancelled")

    def end(
        self,
        ch: Change,
        run: RunRecord,
        status: RunStatus,
        *,
        error: ErrorRecord | None = None,
        reason: str | None = None,
    ) -> None:
        run.status = transition(run.status, ENDINGS[status]).value
        run.reason = reason
        run.pending_outcome = None
        run.current_steps = []
        run.waiting_on = []
        if error is not None:
            run.error = error.to_json()
        if status is RunStatus.CANCELLED:
            request = CancelRequest.from_json(run.cancel_request) or CancelRequest()
            ch.audit(run.id, "cancelled", actor=request.actor, comment=request.reason)
        composition.on_end(ch, run)

    def _deliver_buffered_events(
        self, ch: Change, run: RunRecord, live: Live, act: Activation
    ) -> bool:
        started = [*act.new_entries, *act.started]
        if not any(e.kind == "event" and e.status == "running" for e in started):
            return False
        if ch.optimistic:
            raise NeedsLock()  # consuming buffered events needs reads and a lock
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
        ch.events.compensation(run, "started", ch.now)
        ch.jobs.append(Job("compensate", run.id, first, run_at=ch.now))

    def in_flight(self, live: Live) -> list[Entry]:
        """Steps whose attempt is running, and attached child runs not ended yet: a run
        being cancelled waits for them before it ends."""
        return [
            e for e in live.history.entries if e.kind in ("step", "child") and e.status == "running"
        ]

    def finish_cancel(self, ch: Change, run: RunRecord, live: Live | None) -> None:
        """Deliver cancellation into the workflow and end (or compensate) the run."""
        request = CancelRequest.from_json(run.cancel_request)
        compensate = request is not None and request.compensate
        if live is None:
            # No interpreter to unwind (suspended run, or workflow not registered): the
            # compensation plan still comes from the recorded history.
            entries = ch.tx.load_entries(run.id) if compensate else []
            plan = compensation_plan(History(entries))
            if plan:
                for seq in plan:
                    entries[seq].set_compensation(COMPENSATION_PENDING)
                    ch.touched(run.id, entries[seq])
                run.pending_outcome = CANCELLED_OUTCOME.to_json()
                run.status = transition(run.status, RunEvent.CANCEL_REQUESTED).value
                self._start_compensation(ch, run, tuple(plan))
                return
            self.end(ch, run, RunStatus.CANCELLED, reason="cancelled")
            return
        act = live.interpreter.cancel(live.history, now=ch.now, compensate=compensate)
        self.apply(ch, run, live, act)

    # ------------------------------------------------------------------ jobs


def _emit(run_id: str, entry: Entry) -> None:
    data = entry.input or {}
    level = logging.getLevelName(str(data.get("level", "info")).upper())
    workflow_log.log(
        level if isinstance(level, int) else logging.INFO,
        data.get("message"),
        extra={"squidmesh": {"run_id": run_id, "seq": entry.seq, **(data.get("fields") or {})}},
    )
