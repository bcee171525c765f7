"""``sm.Mesh``: the runtime API a host application holds (no module-level singleton)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, cast

from squidmesh.async_api import DEFAULT_ASYNC_THREADS, AsyncMeshMethods
from squidmesh.core.arguments import count, optional_count
from squidmesh.core.contracts import json_text
from squidmesh.core.definition import CronTrigger, WorkflowDefinition, registered_workflow
from squidmesh.core.flow import Debounce, declared_queues, run_flow_data, start_times
from squidmesh.core.records import Job
from squidmesh.errors import (
    ConflictError,
    DefinitionError,
    InvalidArgumentError,
    PayloadError,
    RunNotFoundError,
    UnknownTriggerError,
    ValueTooLargeError,
    shown,
)
from squidmesh.operator import OperatorActions
from squidmesh.runtime import cron
from squidmesh.runtime.clock import DatabaseClock, local_now
from squidmesh.runtime.composition import CHILD_KINDS
from squidmesh.runtime.engine import Engine, EngineHooks
from squidmesh.runtime.events import EventBus, LifecycleEvent
from squidmesh.runtime.executors import Binds, DatabaseExecutor, Executor, capabilities_of
from squidmesh.runtime.explain import explain
from squidmesh.runtime.queues import QueueState, queue_states
from squidmesh.runtime.replaying import run_history
from squidmesh.runtime.runner import Runner
from squidmesh.runtime.schema_gate import SchemaGate
from squidmesh.runtime.telemetry import Telemetry, api_call
from squidmesh.runtime.views import Explanation, Run, build_children, build_run
from squidmesh.runtime.worker import Worker
from squidmesh.storage.base import Store, run_id_prefix
from squidmesh.types import RunStatus

__all__ = ["Mesh"]


#: how deep ``explain_run`` follows a chain of runs waiting for child runs
_EXPLAIN_DEPTH = 16


class Mesh(OperatorActions, AsyncMeshMethods):
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
        self._init_async(async_threads)  # the pool of the _async twins (async_api.py)
        if store is None:
            from squidmesh.storage import open_store

            store = open_store(url, engine=engine, schema=schema)
        self.store: Store = store
        self.workflows: dict[str, WorkflowDefinition] = {}
        for wf in workflows:
            self.register(wf)
        self.executor: Executor = executor if executor is not None else DatabaseExecutor()
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
        # Embedded stores migrate themselves; on PostgreSQL the operator decides when.
        self.schema_gate = SchemaGate(
            self.store,
            auto_migrate=(
                auto_migrate if auto_migrate is not None else self.store.dialect != "postgresql"
            ),
        )
        self._workers: list[Worker] = []
        if capabilities_of(self.executor).binds:
            cast(Binds, self.executor).bind(self)  # last: the Mesh is whole now

    def _fresh(self, run: Run) -> Run:
        """An executor that works right after commit (inline) may already have moved
        the run on: return what is stored now, not what the call committed."""
        if not capabilities_of(self.executor).after_commit:
            return run
        return self.inspect_run(run.id)

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
        self.workflows[workflow.name] = workflow

    def migrate(self) -> list[str]:
        """Create or upgrade squidmesh's tables; idempotent and safe to call concurrently.

        Returns the file names of the migrations applied, oldest first (empty when the
        schema was already up to date)."""
        return self.schema_gate.migrate()

    def _ready(self) -> None:
        self.schema_gate.ready()

    def close(self) -> None:
        """Stop this Mesh's workers (gracefully), release connections and caches."""
        self._close_async()
        for worker in self._workers:
            worker.stop()
        self._workers.clear()
        self.runner.close()
        if self._telemetry is not None:
            self._telemetry.close()
        self._engine.close()
        self.store.close()

    def _sized_payload(self, wf: WorkflowDefinition, payload: Any, trigger: str) -> dict[str, Any]:
        stored = wf.validate_payload(payload, trigger)
        try:
            json_text(stored, what="the payload", max_bytes=self.max_value_bytes)
        except ValueTooLargeError as exc:
            raise PayloadError(f"workflow {wf.name}, trigger {trigger}: {exc}") from None
        return stored

    def _workflow(self, workflow: str | WorkflowDefinition) -> WorkflowDefinition:
        return registered_workflow(self.workflows, workflow)

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

    @api_call
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
        wf = self._workflow(workflow)
        trig = wf.trigger(trigger)
        begin, end = start_times(
            self.clock(), start_at=start_at, delay=delay, deadline=deadline, timeout=wf.timeout
        )
        admission = run_flow_data(wf.queue, key, priority)
        if debounce is not None:
            if not isinstance(debounce, Debounce):
                raise InvalidArgumentError(
                    f"start_run: debounce must be sm.Debounce(key, seconds, max_wait=None), "
                    f"got {shown(debounce)}"
                )
            if idempotency_key is not None or begin is not None or admission is not None:
                raise InvalidArgumentError(
                    "start_run: debounce= does not go with idempotency_key=, start_at=/delay= "
                    "or a workflow queue (the debounce window decides when the run starts)"
                )
        stored = self._sized_payload(wf, payload, trig.name)
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not idempotency_key
        ):
            raise InvalidArgumentError("idempotency_key must be a non-empty string")
        if idempotency_key is not None:
            json_text(idempotency_key, what="start_run: the idempotency key")
        self._ready()
        try:
            created = self._create_run(
                wf.name,
                trig.name,
                stored,
                idempotency_key=idempotency_key,
                schedule=schedule,
                actor=actor,
                start_at=begin,
                deadline=end,
                admission=admission,
                debounce=debounce,
            )
        except ConflictError:
            if idempotency_key is None:
                raise
            # A concurrent caller inserted the run with this key first (unique index):
            # that run is the answer, as it would have been a moment later.
            with self.store.transaction() as tx:
                existing = tx.find_run_by_key(wf.name, idempotency_key)
            if existing is None:
                raise
            created = build_run(existing)
        return self._fresh(created)

    # ------------------------------------------------------------------ reading

    def inspect_run(self, run_id: Any, *, include_history: bool = False) -> Run:
        """The run's persisted facts and its published state (``Run.published``); with
        history also steps, step runs, audit events and the runs it started
        (``Run.children``)."""
        with self._reading(run_id) as (tx, run):
            rid = run.id
            published = tx.load_published(rid)
            if not include_history:
                return build_run(run, published=published)
            entries = tx.load_entries(rid)
            children = tx.list_children(rid)
            known = {child.id for child in children}
            for entry in entries:  # runs reused by key name another parent (or none)
                other = entry.meta.get("run_id") if entry.kind in CHILD_KINDS else None
                if other and other not in known:
                    found = tx.get_run(str(other))
                    if found is not None:
                        children.append(found)
                        known.add(found.id)
            return build_run(
                run,
                entries=entries,
                attempts=tx.load_attempts(rid),
                audit=tx.load_audit(rid),
                workflow=self.workflows.get(run.workflow),
                published=published,
                children=build_children(entries, children),
            )

    def get_published(self, run_id: Any, name: str | None = None) -> Any:
        """The state the run published with ``sm.publish``: every name's latest value as
        a dict, or with ``name`` that name's latest value (None if never published).
        Readable while the run is active; replay never publishes again."""
        if name is not None and (not isinstance(name, str) or not name):
            raise InvalidArgumentError(
                f"get_published name= must be a non-empty string, got {shown(name)}"
            )
        with self._reading(run_id) as (tx, run):
            published = tx.load_published(run.id)
        return published if name is None else published.get(name)

    def queues(self) -> list[QueueState]:
        """The flow-control queues: for each declared queue (and each queue that has
        jobs) its jobs running and waiting, its limits and starts within its rate
        window, per key. What ``squidmesh queues`` prints."""
        self._ready()
        with self.store.transaction() as tx:
            return queue_states(tx, self.clock(), declared_queues())

    def explain_run(self, run_id: Any) -> Explanation:
        """Why the run is where it is, and what can be done next. A run waiting for a
        child run (``waiting_for_child``) names the child and its own reason."""
        return self._explain(run_id, depth=0)

    def _explain(self, run_id: Any, *, depth: int) -> Explanation:
        with self._reading(run_id) as (tx, run):
            entries = tx.load_entries(run.id)
            attempts = tx.load_attempts(run.id)
            events = len(tx.load_events(run.id))
            jobs = tx.load_jobs(run.id)
            queued = any((q.job.data or {}).get("queue") for q in jobs)
            now = self.clock()
            for index, q in enumerate(jobs):
                data = q.job.data or {}
                if data.get("hold") and q.worker is None and q.job.id is not None:
                    place = tx.queue_position(q.job.id, now)
                    jobs[index] = dataclasses.replace(
                        q, job=dataclasses.replace(q.job, data={**data, "position": place})
                    )
            queues = (
                {q.name: q for q in queue_states(tx, self.clock(), declared_queues())}
                if queued
                else None
            )

        def child(child_id: str) -> Explanation | None:
            if depth >= _EXPLAIN_DEPTH:
                return None
            try:
                with self._reading(child_id) as (tx, found):
                    # a child that continued as new: explain the run that carries on
                    final = found
                    while final.reason == "continued_as_new" and final.continued_as_run_id:
                        nxt = tx.get_run(final.continued_as_run_id)
                        if nxt is None:
                            break
                        final = nxt
                return self._explain(final.id, depth=depth + 1)
            except RunNotFoundError:
                return None

        return explain(
            run,
            entries,
            attempts,
            workflow_available=run.workflow in self.workflows,
            events_waiting=events,
            jobs=jobs,
            explain_child=child,
            now=self.clock(),
            queues=queues,
        )

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
        if status is not None:
            try:
                status = RunStatus(status).value
            except ValueError:
                valid = ", ".join(s.value for s in RunStatus)
                raise InvalidArgumentError(
                    f"unknown run status {shown(status)} (valid: {valid})"
                ) from None
        name = workflow.name if isinstance(workflow, WorkflowDefinition) else workflow
        if name is not None and not isinstance(name, str):
            raise InvalidArgumentError(
                f"list_runs(workflow=...) takes a name or a workflow, got {shown(workflow)}"
            )
        count(limit, what="list_runs limit")
        if before is not None and not isinstance(before, (datetime, Run)):
            raise InvalidArgumentError(
                f"list_runs(before=...) takes a datetime or a Run, got {shown(before)}"
            )
        for label, value in (
            ("trigger", trigger),
            ("step", step),
            ("idempotency_key", idempotency_key),
            ("id_prefix", id_prefix),
        ):
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidArgumentError(
                    f"list_runs {label}= must be a non-empty string, got {shown(value)}"
                )
        prefix = run_id_prefix(id_prefix) if id_prefix is not None else None
        if id_prefix is not None and prefix is None:
            return []  # not hex digits (and dashes): no run id starts with it
        # A Run is a keyset cursor (created_at, id): runs created in the same instant as
        # the cursor are not skipped. A bare datetime keeps runs created before it.
        cursor = before.created_at if isinstance(before, Run) else before
        cursor_id = str(before.id) if isinstance(before, Run) else None
        self._ready()
        with self.store.transaction() as tx:
            if trigger is None and step is None and idempotency_key is None and prefix is None:
                records = tx.list_runs(
                    status=status, workflow=name, limit=limit, before=cursor, before_id=cursor_id
                )
            else:
                records = tx.search_runs(
                    status=status,
                    workflow=name,
                    trigger=trigger,
                    step=step,
                    idempotency_key=idempotency_key,
                    id_prefix=prefix,
                    limit=limit,
                    before=cursor,
                    before_id=cursor_id,
                )
        return [build_run(r) for r in records]

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
        name = workflow.name if isinstance(workflow, WorkflowDefinition) else workflow
        optional_count(limit, what="count_runs limit")
        self._ready()
        with self.store.transaction() as tx:
            counts = tx.count_runs(workflow=name, limit=limit)
        return {status: counts.get(status.value, 0) for status in RunStatus}

    def export_history(self, run_id: Any) -> dict[str, Any]:
        """The run's history as JSON, for ``squidmesh.testing.replay``."""
        with self._reading(run_id) as (tx, run):
            entries = tx.load_entries(run.id)
        return run_history(run, entries).to_json()

    # ------------------------------------------------------------------ work

    def perform(self, job: Job | Mapping[str, Any]) -> None:
        """Execute one delivered job; duplicate, late or stale deliveries change nothing."""
        the_job = job if isinstance(job, Job) else Job.from_json(job)
        self._ready()
        self.runner.perform(the_job, None)

    def _fire_cron_job(self, workflow: str, trigger: str, fire_time: datetime) -> None:
        self.fire_cron(workflow, trigger, fire_time)

    def drain(self, *, limit: int | None = None) -> int:
        """Run every due job in this thread until none is left; returns how many ran."""
        optional_count(limit, what="drain limit")
        self._ready()
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
        self._ready()
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

    @api_call
    def fire_cron(
        self,
        workflow: str | WorkflowDefinition,
        trigger: str,
        fire_time: datetime,
        *,
        payload: Mapping[str, Any] | None = None,
    ) -> Run:
        """Start the run of one cron tick; the same tick always yields the same run."""
        wf = self._workflow(workflow)
        trig = wf.trigger(trigger)
        if not isinstance(trig, CronTrigger):
            raise UnknownTriggerError(
                f"workflow {wf.name}: trigger {trig.name!r} is not a cron trigger"
            )
        if not isinstance(fire_time, datetime) or fire_time.tzinfo is None:
            raise InvalidArgumentError(
                f"fire_cron needs a timezone-aware datetime as fire_time, got {shown(fire_time)}"
            )
        stored = self._sized_payload(wf, payload, trig.name)
        _, deadline = start_times(self.clock(), timeout=wf.timeout)
        admission = run_flow_data(wf.queue, None, None)
        self._ready()
        facts = cron.schedule_facts(wf, trig, fire_time)
        try:
            return self._create_run(
                wf.name,
                trig.name,
                stored,
                idempotency_key=facts["signal_id"],
                schedule=facts,
                cron_tick=fire_time,
                deadline=deadline,
                admission=admission,
            )
        except ConflictError:
            # Another scheduler or host fired this tick concurrently (unique run key /
            # cron tick): its run is the tick's run.
            with self.store.transaction() as tx:
                existing = tx.find_run_by_key(wf.name, facts["signal_id"])
            if existing is None:
                raise
            return self._fresh(build_run(existing))


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
