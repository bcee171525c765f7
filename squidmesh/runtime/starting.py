"""Starting a run: the one change that creates a run row, its first activation (and
its deadline's), its audit, and what idempotency keys and debouncing decide.

``Mesh.start_run``, ``fire_cron``, ``replay_run``, ``fork_run`` and
``squidmesh.testing`` all start runs here.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta
from typing import Any

from squidmesh.core.flow import (
    Debounce,
    deadline_job_data,
    debounce_job_data,
    debounced_start,
    with_start_at,
)
from squidmesh.core.records import Job
from squidmesh.runtime.engine import Change, Engine
from squidmesh.storage.base import JobWrite, RunRecord
from squidmesh.types import RunStatus

__all__ = ["NewRun", "Started", "create_run"]


@dataclasses.dataclass(frozen=True)
class NewRun:
    """What a run is started with (its payload already validated and stored as JSON)."""

    workflow: str
    trigger: str
    payload: dict[str, Any]
    idempotency_key: str | None = None
    schedule: dict[str, Any] | None = None
    replayed_from: str | None = None
    forked_from: str | None = None
    #: history entries the run starts with (a fork's recorded prefix)
    prefix: list[Any] | None = None
    #: (audit type, source run id): recorded on both runs (replayed, forked)
    source_audit: tuple[str, str] | None = None
    cron_tick: datetime | None = None
    run_id: str | None = None
    actor: str | None = None
    start_at: datetime | None = None
    deadline: datetime | None = None
    #: the first activation's data when the workflow has a queue (its admission)
    admission: dict[str, Any] | None = None
    debounce: Debounce | None = None


@dataclasses.dataclass(frozen=True)
class Started:
    """The run a start created or found. ``fresh`` is False for a run found by its
    idempotency key (it is returned as stored, not re-read after the commit)."""

    run: RunRecord
    fresh: bool = True


def create_run(engine: Engine, new: NewRun) -> Started:
    """Start ``new`` in one change (or return the run its idempotency key or debounce
    key already names)."""
    admission, start_at = new.admission, new.start_at
    # A plain start reads (its idempotency key) and then writes one batch: on
    # PostgreSQL one call, without BEGIN/COMMIT. A debounce locks the pending run and
    # a cron tick writes its own row: those keep the transaction.
    one_write = new.debounce is None and new.cron_tick is None
    with engine.change(one_write=one_write) as ch:
        if new.idempotency_key is not None:
            existing = ch.tx.find_run_by_key(new.workflow, new.idempotency_key)
            if existing is not None:
                return Started(existing, fresh=False)
        if new.debounce is not None:
            marker = f"{new.workflow}:{new.trigger}:{new.debounce.key}"
            pending = _debounce_again(engine, ch, marker, new.debounce, new.payload)
            if pending is not None:
                engine.evict(pending.id)
                return Started(pending)
            admission = debounce_job_data(marker, new.debounce, ch.now)
            start_at = ch.now + timedelta(seconds=new.debounce.seconds)
        run = RunRecord(
            id=new.run_id or str(uuid.uuid4()),
            workflow=new.workflow,
            trigger=new.trigger,
            status=RunStatus.PENDING.value,
            payload=new.payload,
            created_at=ch.now,
            updated_at=ch.now,
            idempotency_key=new.idempotency_key,
            schedule=new.schedule,
            replayed_from_run_id=new.replayed_from,
            forked_from_run_id=new.forked_from,
            trace_context=engine.events.trace_context(),
        )
        ch.batch.runs_insert.append(run)
        ch.events.run_created(run, ch.now)
        if new.cron_tick is not None:
            ch.tx.add_cron_tick(new.workflow, new.trigger, new.cron_tick, run.id)
        if new.prefix:
            ch.inserted(run.id, list(new.prefix))
        started: dict[str, Any] = {"trigger": new.trigger}
        if start_at is not None:
            started["start_at"] = start_at.isoformat()
        if new.deadline is not None:
            started["deadline"] = new.deadline.isoformat()
        ch.audit(run.id, "run_started", actor=new.actor, metadata=started)
        if new.source_audit is not None:
            kind, source = new.source_audit
            ch.audit(run.id, kind, actor=new.actor, metadata={"source_run_id": source})
            ch.audit(source, kind, actor=new.actor, metadata={"new_run_id": run.id})
        # A run of a workflow-level queue starts when a claim admits this job (its
        # slot: see runtime/perform.py).
        first = max(start_at or ch.now, ch.now)
        if first > ch.now:
            admission = with_start_at(admission, first)
        ch.jobs.append(Job("activate", run.id, run_at=first, data=admission))
        if new.deadline is not None:
            # Fires at the deadline: a run still active then is cancelled.
            ch.jobs.append(
                Job("activate", run.id, run_at=new.deadline, data=deadline_job_data(new.deadline))
            )
    return Started(run)


def _debounce_again(
    engine: Engine, ch: Change, marker: str, debounce: Debounce, payload: dict[str, Any]
) -> RunRecord | None:
    """A start within a debounce window: the pending run of ``marker`` takes the new
    payload and starts at the window's end (bounded by max_wait); None when there is
    no such run (the caller starts one)."""
    found = ch.tx.find_debounced(marker)
    if found is None or found.job.id is None or found.job.run_id is None:
        return None
    run = engine.lock(ch, found.job.run_id)
    if run is None or run.status != RunStatus.PENDING.value:
        return None
    start = debounced_start(found.job.data or {}, debounce.seconds, ch.now)
    data = with_start_at(found.job.data, start)
    ch.replace_payload(run, payload)
    job = dataclasses.replace(found.job, run_at=start, data=data)
    ch.batch.jobs_insert.append(JobWrite(job, replaces=found.job.id))
    return run
