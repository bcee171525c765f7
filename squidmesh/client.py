"""``RunClient``: starting runs and reading them, the half of ``Mesh`` an application calls.

``Mesh`` builds one and delegates ``start_run``, ``fire_cron``, ``inspect_run``,
``get_published``, ``queues``, ``explain_run``, ``list_runs``, ``count_runs`` and
``export_history`` to it; those ``Mesh`` methods carry the documentation. The client
is also the seam ``OperatorActions`` reads and starts runs through (``reading``,
``create``, ``fresh``).

Everything it uses is given to its constructor: the engine (and, through it, the store,
the registered workflows and the clock), the schema gate every call passes first, the
telemetry its API spans go to, and the size limit on stored values.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from squidmesh.core.arguments import count, optional_count
from squidmesh.core.contracts import json_text
from squidmesh.core.definition import CronTrigger, WorkflowDefinition, registered_workflow
from squidmesh.core.flow import Debounce, declared_queues, run_flow_data, start_times
from squidmesh.core.state import with_entry_attempts
from squidmesh.errors import (
    ConflictError,
    InvalidArgumentError,
    PayloadError,
    RunNotFoundError,
    UnknownTriggerError,
    ValueTooLargeError,
    shown,
)
from squidmesh.runtime import cron
from squidmesh.runtime.composition import CHILD_KINDS
from squidmesh.runtime.engine import Engine
from squidmesh.runtime.explain import explain
from squidmesh.runtime.queues import QueueState, queue_states
from squidmesh.runtime.replaying import run_history
from squidmesh.runtime.schema_gate import SchemaGate
from squidmesh.runtime.starting import NewRun, create_run
from squidmesh.runtime.telemetry import Telemetry, api_call
from squidmesh.runtime.views import Explanation, Run, build_children, build_run
from squidmesh.storage.base import RunRecord, Store, Transaction, run_id_prefix
from squidmesh.types import RunStatus

__all__ = ["RunClient", "parse_run_id"]


#: how deep ``explain_run`` follows a chain of runs waiting for child runs
_EXPLAIN_DEPTH = 16


def parse_run_id(value: Any) -> str:
    """The canonical text of a run id; ``RunNotFoundError`` for anything not a UUID."""
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        raise RunNotFoundError(f"run {shown(value)} not found: run ids are UUIDs") from None


class RunClient:
    """Starts runs and reads them (each method is the body of the ``Mesh`` method of the
    same name, which documents it)."""

    def __init__(
        self,
        engine: Engine,
        *,
        gate: SchemaGate,
        telemetry: Telemetry | None,
        max_value_bytes: int | None,
    ) -> None:
        self.engine = engine
        self.store: Store = engine.store
        #: the Mesh's registry (the same dict: ``Mesh.register`` adds to it)
        self.workflows: Mapping[str, WorkflowDefinition] = engine.workflows
        self.clock: Callable[[], datetime] = engine.clock
        #: passed before the first call that touches the database
        self.gate = gate
        #: spans of API calls (``api_call``); None when ``Mesh(telemetry=False)``
        self.telemetry = telemetry
        #: the largest JSON (bytes) of a payload
        self.max_value_bytes = max_value_bytes

    # ------------------------------------------------------------------ the seam

    @contextmanager
    def reading(self, run_id: Any) -> Iterator[tuple[Transaction, RunRecord]]:
        """A read transaction holding the run; ``RunNotFoundError`` when there is none."""
        rid = parse_run_id(run_id)
        self.gate.ready()
        with self.store.transaction() as tx:
            run = tx.get_run(rid)
            if run is None:
                raise RunNotFoundError(f"run {rid} not found")
            yield tx, run

    def create(self, new: NewRun) -> Run:
        """Start a run (one state change); the run as stored once the call returns."""
        started = create_run(self.engine, new)
        run = build_run(started.run)
        return self.fresh(run) if started.fresh else run

    def fresh(self, run: Run) -> Run:
        """An executor that works right after commit (inline) may already have moved
        the run on: return what is stored now, not what the call committed."""
        if not self.engine.capabilities.after_commit:
            return run
        return self.inspect_run(run.id)

    def _sized_payload(self, wf: WorkflowDefinition, payload: Any, trigger: str) -> dict[str, Any]:
        stored = wf.validate_payload(payload, trigger)
        try:
            json_text(stored, what="the payload", max_bytes=self.max_value_bytes)
        except ValueTooLargeError as exc:
            raise PayloadError(f"workflow {wf.name}, trigger {trigger}: {exc}") from None
        return stored

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
        wf = registered_workflow(self.workflows, workflow)
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
        self.gate.ready()
        try:
            created = self.create(
                NewRun(
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
        return self.fresh(created)

    @api_call
    def fire_cron(
        self,
        workflow: str | WorkflowDefinition,
        trigger: str,
        fire_time: datetime,
        *,
        payload: Mapping[str, Any] | None = None,
    ) -> Run:
        wf = registered_workflow(self.workflows, workflow)
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
        self.gate.ready()
        facts = cron.schedule_facts(wf, trig, fire_time)
        try:
            return self.create(
                NewRun(
                    wf.name,
                    trig.name,
                    stored,
                    idempotency_key=facts["signal_id"],
                    schedule=facts,
                    cron_tick=fire_time,
                    deadline=deadline,
                    admission=admission,
                )
            )
        except ConflictError:
            # Another scheduler or host fired this tick concurrently (unique run key /
            # cron tick): its run is the tick's run.
            with self.store.transaction() as tx:
                existing = tx.find_run_by_key(wf.name, facts["signal_id"])
            if existing is None:
                raise
            return self.fresh(build_run(existing))

    # ------------------------------------------------------------------ reading

    def inspect_run(self, run_id: Any, *, include_history: bool = False) -> Run:
        with self.reading(run_id) as (tx, run):
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
                attempts=with_entry_attempts(entries, tx.load_attempts(rid)),
                audit=tx.load_audit(rid),
                workflow=self.workflows.get(run.workflow),
                published=published,
                children=build_children(entries, children),
            )

    def get_published(self, run_id: Any, name: str | None = None) -> Any:
        if name is not None and (not isinstance(name, str) or not name):
            raise InvalidArgumentError(
                f"get_published name= must be a non-empty string, got {shown(name)}"
            )
        with self.reading(run_id) as (tx, run):
            published = tx.load_published(run.id)
        return published if name is None else published.get(name)

    def queues(self) -> list[QueueState]:
        self.gate.ready()
        with self.store.transaction() as tx:
            return queue_states(tx, self.clock(), declared_queues())

    def explain_run(self, run_id: Any) -> Explanation:
        return self._explain(run_id, depth=0)

    def _explain(self, run_id: Any, *, depth: int) -> Explanation:
        with self.reading(run_id) as (tx, run):
            entries = tx.load_entries(run.id)
            attempts = with_entry_attempts(entries, tx.load_attempts(run.id))
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
                with self.reading(child_id) as (tx, found):
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
        self.gate.ready()
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
        name = workflow.name if isinstance(workflow, WorkflowDefinition) else workflow
        optional_count(limit, what="count_runs limit")
        self.gate.ready()
        with self.store.transaction() as tx:
            counts = tx.count_runs(workflow=name, limit=limit)
        return {status: counts.get(status.value, 0) for status in RunStatus}

    def export_history(self, run_id: Any) -> dict[str, Any]:
        with self.reading(run_id) as (tx, run):
            entries = tx.load_entries(run.id)
        return run_history(run, entries).to_json()
