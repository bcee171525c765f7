"""``sm.Mesh``: the runtime API a host application holds (no module-level singleton).

A Mesh is composed of parts, each built here with what it needs and usable on its own:

- ``RunClient`` (``squidmesh/client.py``): starting runs and reading them;
- ``OperatorActions`` (``squidmesh/operator.py``): decisions, events, cancel, resume,
  replay, fork and retention;
- ``Runner`` (``squidmesh/runtime/runner.py``): performing jobs (workers, ``drain``,
  ``perform``), public as ``mesh.runner``;
- ``AsyncPool`` (``squidmesh/async_api.py``): the threads behind the ``_async`` twins.

Each public method of the Mesh is one explicit call of the part that does it, so the
type checker, the layering test and the API reference see every one; the docstrings
here are the documentation.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, cast

from squidmesh.async_api import DEFAULT_ASYNC_THREADS, AsyncPool
from squidmesh.client import RunClient
from squidmesh.core.arguments import optional_count
from squidmesh.core.definition import CronTrigger, WorkflowDefinition
from squidmesh.core.flow import Debounce, declared_queues
from squidmesh.core.records import Job
from squidmesh.errors import DefinitionError, InvalidArgumentError, shown
from squidmesh.operator import OperatorActions
from squidmesh.runtime import cron
from squidmesh.runtime.clock import DatabaseClock, local_now
from squidmesh.runtime.engine import Engine, EngineHooks
from squidmesh.runtime.events import EventBus, LifecycleEvent
from squidmesh.runtime.executors import Binds, DatabaseExecutor, Executor, capabilities_of
from squidmesh.runtime.queues import QueueState, queue_states
from squidmesh.runtime.runner import Runner
from squidmesh.runtime.schema_gate import SchemaGate
from squidmesh.runtime.telemetry import Telemetry
from squidmesh.runtime.views import Explanation, Run
from squidmesh.runtime.worker import Worker
from squidmesh.storage.base import Store
from squidmesh.types import RunStatus

__all__ = ["Mesh"]


class Mesh:
    """Durable workflows in the host's database.

    ``Mesh("postgresql+psycopg://app@localhost/app", workflows=[...])``, or
    ``Mesh(engine=host_engine, schema="squidmesh", ...)`` to share the host's engine, or
    ``Mesh()`` for the embedded default, a SQLite file ``./squidmesh.db``.

    ``hooks`` are for ``squidmesh.testing`` (stubbed steps, checks after each
    activation); applications leave them out.

    ``telemetry=False`` turns off the lifecycle log lines (loggers ``squidmesh.step``
    and ``squidmesh.run``) and OpenTelemetry spans and metrics; ``subscribe`` callbacks
    are still called (docs/observability.md).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        engine: Any = None,
        schema: str = "squidmesh",
        workflows: Iterable[WorkflowDefinition] = (),
        executor: Executor | None = None,
        store: Store | None = None,
        clock: Callable[[], datetime] | None = None,
        auto_migrate: bool | None = None,
        cache_size: int = 1024,
        max_value_bytes: int | None = 1_048_576,
        telemetry: bool = True,
        async_threads: int = DEFAULT_ASYNC_THREADS,
        hooks: EngineHooks | None = None,
    ) -> None:
        #: the threads of the _async twins (async_api.py)
        self._async = AsyncPool(async_threads)
        if store is None:
            from squidmesh.storage import open_store

            store = open_store(url, engine=engine, schema=schema)
        self.store: Store = store
        self.executor: Executor = executor if executor is not None else DatabaseExecutor()
        self.workflows: dict[str, WorkflowDefinition] = {}
        for wf in workflows:
            self.register(wf)
        # On PostgreSQL every process reads the database's clock (through a measured
        # offset), so timers, retries and leases agree across machines.
        self.clock = clock or (
            DatabaseClock(self.store) if self.store.dialect == "postgresql" else local_now
        )
        self._telemetry: Telemetry | None = (
            Telemetry(
                database=_database_label(self.store),
                ready_jobs=self._count_ready_jobs,
                queue_jobs=self._count_queue_jobs,
            )
            if telemetry
            else None
        )
        self._engine = Engine(
            self.store,
            self.workflows,
            self.executor,
            self.clock,
            cache_size=cache_size,
            events=EventBus(self._telemetry),
            hooks=hooks,
        )
        #: performs this Mesh's jobs (workers, ``drain``, ``perform``)
        self.runner = Runner(
            self._engine, fire_cron=self._fire_cron_job, schedule=self._run_scheduler
        )
        if max_value_bytes is not None and max_value_bytes < 1:
            raise InvalidArgumentError(
                f"max_value_bytes must be positive or None, got {max_value_bytes}"
            )
        #: the largest JSON (bytes) of a payload, step result, event or unblock data
        self.max_value_bytes = max_value_bytes
        self._engine.max_value_bytes = max_value_bytes
        # Embedded stores migrate themselves; on PostgreSQL the operator decides when.
        self.schema_gate = SchemaGate(
            self.store,
            auto_migrate=(
                auto_migrate if auto_migrate is not None else self.store.dialect != "postgresql"
            ),
        )
        self._runs = RunClient(
            self._engine,
            gate=self.schema_gate,
            telemetry=self._telemetry,
            max_value_bytes=max_value_bytes,
        )
        self._operator = OperatorActions(self._runs)
        self._workers: list[Worker] = []
        if capabilities_of(self.executor).binds:
            cast(Binds, self.executor).bind(self)  # last: the Mesh is whole now

    def __repr__(self) -> str:
        return f"<Mesh {self.store.dialect} workflows={sorted(self.workflows)}>"

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ setup

    def register(self, workflow: WorkflowDefinition) -> None:
        """Make a workflow runnable by this Mesh."""
        if not isinstance(workflow, WorkflowDefinition):
            raise DefinitionError(
                f"Mesh(workflows=...) takes @sm.workflow objects, got {shown(workflow)}"
            )
        existing = self.workflows.get(workflow.name)
        if existing is not None and existing is not workflow:
            raise DefinitionError(f"two different workflows are named {workflow.name!r}")
        for trigger in workflow.triggers:
            if isinstance(trigger, CronTrigger):
                _validate_cron(workflow, trigger)
        if workflow.queue is not None and not capabilities_of(self.executor).jobs_in_table:
            # A broker would start every run at once: the queue's limits would not hold,
            # and nothing would say so.
            raise DefinitionError(
                f"workflow {workflow.name} is on queue {workflow.queue.name!r}, whose limits "
                "hold where squidmesh's workers claim jobs from its jobs table; executor "
                f"{type(self.executor).__name__} hands jobs to a broker, which would start "
                "its runs without them. Run queued workflows with the default executor "
                "(squidmesh worker / mesh.worker()) or drop queue="
            )
        self.workflows[workflow.name] = workflow

    def migrate(self) -> list[str]:
        """Create or upgrade squidmesh's tables; idempotent and safe to call concurrently.

        Returns the file names of the migrations applied, oldest first (empty when the
        schema was already up to date)."""
        return self.schema_gate.migrate()

    def close(self) -> None:
        """Stop this Mesh's workers (gracefully), release connections and caches."""
        self._async.close()
        for worker in self._workers:
            worker.stop()
        self._workers.clear()
        self.runner.close()
        if self._telemetry is not None:
            self._telemetry.close()
        self._engine.close()
        self.store.close()

    # ------------------------------------------------------------------ observing

    def subscribe(self, callback: Callable[[LifecycleEvent], object]) -> Callable[[], None]:
        """Call ``callback(event)`` with each ``sm.LifecycleEvent`` of this Mesh's runs
        (``run.created``, ``run.transition``, ``step.started``, ``step.completed``,
        ``step.failed``, ``step.retry_scheduled``, ``run.compensation``), after the
        transaction that recorded it committed, in the thread that committed it. A
        callback that raises is logged and changes nothing. Returns a function that
        unsubscribes."""
        return self._engine.events.subscribe(callback)

    def _count_ready_jobs(self) -> int | None:
        """Jobs due and unclaimed (the ``squidmesh.jobs.ready`` gauge); None when this
        Mesh's executor keeps no jobs table or the schema is not there."""
        if not capabilities_of(self.executor).jobs_in_table or not self.schema_gate.checked:
            return None
        now = self.clock()
        with self.store.transaction() as tx:
            return tx.count_ready_jobs(now)

    def _count_queue_jobs(self) -> list[tuple[str, str, int]]:
        """(queue, state, count) of the ``squidmesh.queue.jobs`` gauge (none when this
        Mesh's executor keeps no jobs table or the schema is not there)."""
        if not capabilities_of(self.executor).jobs_in_table or not self.schema_gate.checked:
            return []
        with self.store.transaction() as tx:
            states = queue_states(tx, self.clock(), declared_queues())
        return [
            (q.name, state, count)
            for q in states
            for state, count in (("running", q.running), ("waiting", q.waiting))
        ]

    # ------------------------------------------------------------------ starting runs

    def start_run(
        self,
        workflow: str | WorkflowDefinition,
        payload: Mapping[str, Any] | None = None,
        *,
        trigger: str | None = None,
        idempotency_key: str | None = None,
        schedule: dict[str, Any] | None = None,
        actor: str | None = None,
        start_at: datetime | None = None,
        delay: float | None = None,
        deadline: datetime | None = None,
        key: Any = None,
        priority: int | None = None,
        debounce: Debounce | None = None,
    ) -> Run:
        """Validate, persist and dispatch a new run (or return the run with this key).

        ``actor`` (who started it) is recorded on the ``run_started`` audit event.
        ``start_at=`` (an aware datetime) or ``delay=`` (seconds) start it later: it is
        ``pending`` until then (explain reason ``scheduled_start``). ``deadline=`` (or the
        workflow's ``timeout=``, counted from the start): a run still active then is
        cancelled with compensation (reason ``deadline_exceeded``, audit ``timed_out``).
        ``key=`` and ``priority=`` place a run of a workflow declared with
        ``@sm.workflow(queue=...)`` in its queue: at most ``concurrency`` runs of the
        queue are active (``key_concurrency`` per key), higher priorities first; the
        others wait ``pending`` (explain reason ``queued``)."""
        return self._runs.start_run(
            workflow,
            payload,
            trigger=trigger,
            idempotency_key=idempotency_key,
            schedule=schedule,
            actor=actor,
            start_at=start_at,
            delay=delay,
            deadline=deadline,
            key=key,
            priority=priority,
            debounce=debounce,
        )

    def fire_cron(
        self,
        workflow: str | WorkflowDefinition,
        trigger: str,
        fire_time: datetime,
        *,
        payload: Mapping[str, Any] | None = None,
    ) -> Run:
        """Start the run of one cron tick; the same tick always yields the same run."""
        return self._runs.fire_cron(workflow, trigger, fire_time, payload=payload)

    # ------------------------------------------------------------------ reading

    def inspect_run(self, run_id: Any, *, include_history: bool = False) -> Run:
        """The run's persisted facts and its published state (``Run.published``); with
        history also steps, step runs, audit events and the runs it started
        (``Run.children``)."""
        return self._runs.inspect_run(run_id, include_history=include_history)

    def get_published(self, run_id: Any, name: str | None = None) -> Any:
        """The state the run published with ``sm.publish``: every name's latest value as
        a dict, or with ``name`` that name's latest value (None if never published).
        Readable while the run is active; replay never publishes again."""
        return self._runs.get_published(run_id, name)

    def queues(self) -> list[QueueState]:
        """The flow-control queues: for each declared queue (and each queue that has
        jobs) its jobs running and waiting, its limits and starts within its rate
        window, per key. What ``squidmesh queues`` prints."""
        return self._runs.queues()

    def explain_run(self, run_id: Any) -> Explanation:
        """Why the run is where it is, and what can be done next. A run waiting for a
        child run (``waiting_for_child``) names the child and its own reason."""
        return self._runs.explain_run(run_id)

    def list_runs(
        self,
        *,
        status: str | RunStatus | None = None,
        workflow: str | WorkflowDefinition | None = None,
        limit: int = 50,
        before: datetime | Run | None = None,
        trigger: str | None = None,
        step: str | None = None,
        idempotency_key: str | None = None,
        id_prefix: str | None = None,
    ) -> list[Run]:
        """Runs newest first, filtered by every filter given.

        ``step`` matches a step an unfinished run is at now (``current_steps``);
        ``id_prefix`` the beginning of the run id, dashes optional (``"1a2b3c4d"``).
        """
        return self._runs.list_runs(
            status=status,
            workflow=workflow,
            limit=limit,
            before=before,
            trigger=trigger,
            step=step,
            idempotency_key=idempotency_key,
            id_prefix=id_prefix,
        )

    def count_runs(
        self,
        *,
        workflow: str | WorkflowDefinition | None = None,
        limit: int | None = None,
    ) -> dict[str, int]:
        """How many runs have each status (every status, zero included, keyed by
        ``RunStatus`` in its order), optionally of one workflow. With ``limit``, each
        count stops there: ``count_runs(limit=1_001)`` reads at most 1,001 index
        entries per status however many runs are stored, and a count of 1,001 then
        means "more than 1,000"."""
        return self._runs.count_runs(workflow=workflow, limit=limit)

    def export_history(self, run_id: Any) -> dict[str, Any]:
        """The run's history as JSON, for ``squidmesh.testing.replay``."""
        return self._runs.export_history(run_id)

    # ------------------------------------------------------------------ operator actions

    def approve_run(
        self,
        run_id: Any,
        *,
        actor: str,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Run:
        """Approve the approval the run is paused at; the workflow continues."""
        return self._operator.approve_run(run_id, actor=actor, comment=comment, metadata=metadata)

    def reject_run(
        self,
        run_id: Any,
        *,
        actor: str,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Run:
        """Reject the approval the run is paused at; a decision, not a failure."""
        return self._operator.reject_run(run_id, actor=actor, comment=comment, metadata=metadata)

    def unblock_run(
        self,
        run_id: Any,
        *,
        actor: str | None = None,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
        data: Any = None,
    ) -> Run:
        """Resume a run paused at ``sm.pause``; the yield returns ``data``."""
        return self._operator.unblock_run(
            run_id, actor=actor, comment=comment, metadata=metadata, data=data
        )

    def send_event(
        self, run_id: Any, name: str, data: Any = None, *, actor: str | None = None
    ) -> Run:
        """Deliver an event to ``wait_for_event(name)``; buffered if the run is not waiting yet."""
        return self._operator.send_event(run_id, name, data, actor=actor)

    def cancel_run(
        self,
        run_id: Any,
        *,
        actor: str | None = None,
        reason: str | None = None,
        compensate: bool = False,
    ) -> Run:
        """Cancel a run; a step in flight finishes first (status ``cancelling``)."""
        return self._operator.cancel_run(run_id, actor=actor, reason=reason, compensate=compensate)

    def resume_run(self, run_id: Any, *, actor: str | None = None) -> Run:
        """Re-activate a suspended run (after the workflow code was fixed)."""
        return self._operator.resume_run(run_id, actor=actor)

    def replay_run(
        self, run_id: Any, *, allow_irreversible: bool = False, actor: str | None = None
    ) -> Run:
        """Start a new run of the same workflow, trigger and stored payload."""
        return self._operator.replay_run(run_id, allow_irreversible=allow_irreversible, actor=actor)

    def fork_run(self, run_id: Any, *, at_seq: int, actor: str | None = None) -> Run:
        """A new run that reuses the source's recorded results before ``at_seq``."""
        return self._operator.fork_run(run_id, at_seq=at_seq, actor=actor)

    # ------------------------------------------------------------------ retention

    def prune(
        self,
        older_than: timedelta | datetime,
        statuses: Iterable[str] = ("completed", "cancelled", "failed"),
        *,
        batch_size: int = 500,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Delete finished runs last updated before a cutoff, with everything recorded
        for them (history, attempts, audit events, buffered events, jobs).

        ``older_than`` is an age (``timedelta``, measured from this Mesh's clock) or a
        timezone-aware cutoff ``datetime``. Only terminal statuses may be pruned. Runs go
        in batches of ``batch_size``, each its own short transaction, so no lock is held
        for long; ``progress(total_so_far)`` is called after each batch. Returns how many
        runs were deleted.
        """
        return self._operator.prune(older_than, statuses, batch_size=batch_size, progress=progress)

    # ------------------------------------------------------------------ work

    def perform(self, job: Job | Mapping[str, Any]) -> None:
        """Execute one delivered job; duplicate, late or stale deliveries change nothing."""
        the_job = job if isinstance(job, Job) else Job.from_json(job)
        self.schema_gate.ready()
        self.runner.perform(the_job, None)

    def _fire_cron_job(self, workflow: str, trigger: str, fire_time: datetime) -> None:
        self.fire_cron(workflow, trigger, fire_time)

    def drain(self, *, limit: int | None = None) -> int:
        """Run every due job in this thread until none is left; returns how many ran."""
        optional_count(limit, what="drain limit")
        self.schema_gate.ready()
        return self.runner.drain(limit)

    def worker(
        self,
        *,
        concurrency: int = 4,
        poll_interval: float = 2.0,
        lease_seconds: float = 30.0,
        scheduler: bool = True,
        name: str | None = None,
        sweep_interval: float = 30.0,
    ) -> Worker:
        """Start a worker thread in this process; ``close()`` stops it (gracefully)."""
        self.schema_gate.ready()
        worker = Worker(
            self.runner,
            concurrency=concurrency,
            poll_interval=poll_interval,
            lease_seconds=lease_seconds,
            scheduler=scheduler,
            name=name,
            sweep_interval=sweep_interval,
        )
        self._workers.append(worker)
        return worker.start()

    def _run_scheduler(self, stop: threading.Event) -> None:
        cron.Scheduler(self).run(stop)

    # ================================================================== the _async twins
    # Each runs its sync method on this Mesh's AsyncPool (async_api.py says what a caller
    # can rely on); tests/runtime/test_async_api.py pins their parameters to the sync ones.

    # -------------------------------------------------- _async twins: setup

    async def register_async(self, workflow: WorkflowDefinition) -> None:
        """Async twin of [`register`][squidmesh.Mesh.register]."""
        await self._async.run(self.register, workflow)

    async def migrate_async(self) -> list[str]:
        """Async twin of [`migrate`][squidmesh.Mesh.migrate]."""
        return await self._async.run(self.migrate)

    async def close_async(self) -> None:
        """Async twin of [`close`][squidmesh.Mesh.close]: waits for the calls of other
        twins already under way, stops the workers, releases the connections."""
        # Not on the pool: close() shuts the pool down and waits for its threads.
        await asyncio.to_thread(self.close)

    # -------------------------------------------------- _async twins: observing

    async def subscribe_async(
        self, callback: Callable[[LifecycleEvent], object]
    ) -> Callable[[], None]:
        """Async twin of [`subscribe`][squidmesh.Mesh.subscribe]. The callback is still
        called synchronously, in the thread that committed the change."""
        return await self._async.run(self.subscribe, callback)

    # -------------------------------------------------- _async twins: starting runs

    async def start_run_async(
        self,
        workflow: str | WorkflowDefinition,
        payload: Mapping[str, Any] | None = None,
        *,
        trigger: str | None = None,
        idempotency_key: str | None = None,
        schedule: dict[str, Any] | None = None,
        actor: str | None = None,
        start_at: datetime | None = None,
        delay: float | None = None,
        deadline: datetime | None = None,
        key: Any = None,
        priority: int | None = None,
        debounce: Debounce | None = None,
    ) -> Run:
        """Async twin of [`start_run`][squidmesh.Mesh.start_run]."""
        return await self._async.run(
            self.start_run,
            workflow,
            payload,
            trigger=trigger,
            idempotency_key=idempotency_key,
            schedule=schedule,
            actor=actor,
            start_at=start_at,
            delay=delay,
            deadline=deadline,
            key=key,
            priority=priority,
            debounce=debounce,
        )

    async def fire_cron_async(
        self,
        workflow: str | WorkflowDefinition,
        trigger: str,
        fire_time: datetime,
        *,
        payload: Mapping[str, Any] | None = None,
    ) -> Run:
        """Async twin of [`fire_cron`][squidmesh.Mesh.fire_cron]."""
        return await self._async.run(self.fire_cron, workflow, trigger, fire_time, payload=payload)

    # -------------------------------------------------- _async twins: reading

    async def inspect_run_async(self, run_id: Any, *, include_history: bool = False) -> Run:
        """Async twin of [`inspect_run`][squidmesh.Mesh.inspect_run]."""
        return await self._async.run(self.inspect_run, run_id, include_history=include_history)

    async def get_published_async(self, run_id: Any, name: str | None = None) -> Any:
        """Async twin of [`get_published`][squidmesh.Mesh.get_published]."""
        return await self._async.run(self.get_published, run_id, name)

    async def queues_async(self) -> list[QueueState]:
        """Async twin of [`queues`][squidmesh.Mesh.queues]."""
        return await self._async.run(self.queues)

    async def explain_run_async(self, run_id: Any) -> Explanation:
        """Async twin of [`explain_run`][squidmesh.Mesh.explain_run]."""
        return await self._async.run(self.explain_run, run_id)

    async def list_runs_async(
        self,
        *,
        status: str | RunStatus | None = None,
        workflow: str | WorkflowDefinition | None = None,
        limit: int = 50,
        before: datetime | Run | None = None,
        trigger: str | None = None,
        step: str | None = None,
        idempotency_key: str | None = None,
        id_prefix: str | None = None,
    ) -> list[Run]:
        """Async twin of [`list_runs`][squidmesh.Mesh.list_runs]."""
        return await self._async.run(
            self.list_runs,
            status=status,
            workflow=workflow,
            limit=limit,
            before=before,
            trigger=trigger,
            step=step,
            idempotency_key=idempotency_key,
            id_prefix=id_prefix,
        )

    async def count_runs_async(
        self,
        *,
        workflow: str | WorkflowDefinition | None = None,
        limit: int | None = None,
    ) -> dict[str, int]:
        """Async twin of [`count_runs`][squidmesh.Mesh.count_runs]."""
        return await self._async.run(self.count_runs, workflow=workflow, limit=limit)

    async def export_history_async(self, run_id: Any) -> dict[str, Any]:
        """Async twin of [`export_history`][squidmesh.Mesh.export_history]."""
        return await self._async.run(self.export_history, run_id)

    # -------------------------------------------------- _async twins: operator actions

    async def approve_run_async(
        self,
        run_id: Any,
        *,
        actor: str,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Run:
        """Async twin of [`approve_run`][squidmesh.Mesh.approve_run]."""
        return await self._async.run(
            self.approve_run, run_id, actor=actor, comment=comment, metadata=metadata
        )

    async def reject_run_async(
        self,
        run_id: Any,
        *,
        actor: str,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Run:
        """Async twin of [`reject_run`][squidmesh.Mesh.reject_run]."""
        return await self._async.run(
            self.reject_run, run_id, actor=actor, comment=comment, metadata=metadata
        )

    async def unblock_run_async(
        self,
        run_id: Any,
        *,
        actor: str | None = None,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
        data: Any = None,
    ) -> Run:
        """Async twin of [`unblock_run`][squidmesh.Mesh.unblock_run]."""
        return await self._async.run(
            self.unblock_run,
            run_id,
            actor=actor,
            comment=comment,
            metadata=metadata,
            data=data,
        )

    async def send_event_async(
        self, run_id: Any, name: str, data: Any = None, *, actor: str | None = None
    ) -> Run:
        """Async twin of [`send_event`][squidmesh.Mesh.send_event]."""
        return await self._async.run(self.send_event, run_id, name, data, actor=actor)

    async def cancel_run_async(
        self,
        run_id: Any,
        *,
        actor: str | None = None,
        reason: str | None = None,
        compensate: bool = False,
    ) -> Run:
        """Async twin of [`cancel_run`][squidmesh.Mesh.cancel_run]."""
        return await self._async.run(
            self.cancel_run, run_id, actor=actor, reason=reason, compensate=compensate
        )

    async def resume_run_async(self, run_id: Any, *, actor: str | None = None) -> Run:
        """Async twin of [`resume_run`][squidmesh.Mesh.resume_run]."""
        return await self._async.run(self.resume_run, run_id, actor=actor)

    async def replay_run_async(
        self, run_id: Any, *, allow_irreversible: bool = False, actor: str | None = None
    ) -> Run:
        """Async twin of [`replay_run`][squidmesh.Mesh.replay_run]."""
        return await self._async.run(
            self.replay_run, run_id, allow_irreversible=allow_irreversible, actor=actor
        )

    async def fork_run_async(self, run_id: Any, *, at_seq: int, actor: str | None = None) -> Run:
        """Async twin of [`fork_run`][squidmesh.Mesh.fork_run]."""
        return await self._async.run(self.fork_run, run_id, at_seq=at_seq, actor=actor)

    async def prune_async(
        self,
        older_than: timedelta | datetime,
        statuses: Iterable[str] = ("completed", "cancelled", "failed"),
        *,
        batch_size: int = 500,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Async twin of [`prune`][squidmesh.Mesh.prune]; ``progress`` is called in the
        thread that runs the prune, not on the event loop."""
        return await self._async.run(
            self.prune, older_than, statuses, batch_size=batch_size, progress=progress
        )

    # -------------------------------------------------- _async twins: work

    async def perform_async(self, job: Job | Mapping[str, Any]) -> None:
        """Async twin of [`perform`][squidmesh.Mesh.perform]: the job's step runs in the
        pool's thread (an ``async def`` step on the Mesh's own step loop, as always)."""
        await self._async.run(self.perform, job)

    async def drain_async(self, *, limit: int | None = None) -> int:
        """Async twin of [`drain`][squidmesh.Mesh.drain]."""
        return await self._async.run(self.drain, limit=limit)

    async def worker_async(
        self,
        *,
        concurrency: int = 4,
        poll_interval: float = 2.0,
        lease_seconds: float = 30.0,
        scheduler: bool = True,
        name: str | None = None,
        sweep_interval: float = 30.0,
    ) -> Worker:
        """Async twin of [`worker`][squidmesh.Mesh.worker]: starts the worker thread
        (its schema check touches the database) without blocking the loop."""
        return await self._async.run(
            self.worker,
            concurrency=concurrency,
            poll_interval=poll_interval,
            lease_seconds=lease_seconds,
            scheduler=scheduler,
            name=name,
            sweep_interval=sweep_interval,
        )


def _database_label(store: Store) -> str:
    """The database as the ready-jobs gauge names it (never with a password)."""
    engine = getattr(store, "engine", None)
    if engine is None:
        return store.dialect
    url = engine.url.set(drivername=engine.url.get_backend_name())
    shown = str(url.render_as_string(hide_password=True))
    schema = getattr(store, "schema", None)
    return f"{shown} (schema {schema})" if schema and store.dialect == "postgresql" else shown


def _validate_cron(workflow: WorkflowDefinition, trigger: CronTrigger) -> None:
    import zoneinfo

    from croniter import croniter

    if not croniter.is_valid(trigger.expr):
        raise DefinitionError(
            f"workflow {workflow.name}, trigger {trigger.name}: invalid cron expression "
            f"{trigger.expr!r}"
        )
    try:
        zoneinfo.ZoneInfo(trigger.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise DefinitionError(
            f"workflow {workflow.name}, trigger {trigger.name}: unknown timezone "
            f"{trigger.timezone!r}"
        ) from None
