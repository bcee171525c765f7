"""The frozen values the Mesh API returns: runs, step runs, audit events, explanations."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Any

from squidmesh.core.history import Entry
from squidmesh.core.records import Attempt, AuditEvent
from squidmesh.storage.base import RunRecord
from squidmesh.types import RunStatus

__all__ = ["DeclaredStep", "Explanation", "Run", "StepRun", "build_run", "build_step_runs"]

WAITABLE = frozenset({"step", "sleep", "pause", "approval", "event"})


@dataclasses.dataclass(frozen=True)
class DeclaredStep:
    """A step of the workflow and its state in this run."""

    name: str
    kind: str
    status: str  # waiting|scheduled|running|completed|failed|compensated|skipped|cancelled


@dataclasses.dataclass(frozen=True)
class StepRun:
    """One yielded command of a run, with its attempts (history entry, made readable)."""

    seq: int
    name: str
    kind: str
    status: str
    input: Any
    output: Any
    error: dict[str, Any] | None
    attempts: tuple[Attempt, ...]
    compensation: dict[str, Any] | None
    started_at: str | None
    completed_at: str | None
    parent: int | None = None
    loc: str | None = None
    wake_at: str | None = None


@dataclasses.dataclass(frozen=True)
class Run:
    """The persisted facts of a run."""

    id: uuid.UUID
    workflow: str
    trigger: str
    status: RunStatus
    payload: dict[str, Any]
    result: Any
    error: dict[str, Any] | None
    current_steps: tuple[str, ...]
    replayed_from_run_id: uuid.UUID | None
    forked_from_run_id: uuid.UUID | None
    idempotency_key: str | None
    schedule: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    reason: str | None = None
    steps: tuple[DeclaredStep, ...] | None = None
    step_runs: tuple[StepRun, ...] | None = None
    audit_events: tuple[AuditEvent, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Why a run is where it is, and what can be done about it."""

    status: RunStatus
    reason: str
    step: str | None
    details: dict[str, Any]
    next_actions: tuple[str, ...]
    evidence: dict[str, Any]


def _uuid(value: str | None) -> uuid.UUID | None:
    return uuid.UUID(value) if value else None


def build_step_runs(
    entries: list[Entry], attempts: dict[int, list[Attempt]]
) -> tuple[StepRun, ...]:
    return tuple(
        StepRun(
            seq=e.seq,
            name=e.name,
            kind=e.kind,
            status=e.status,
            input=e.input,
            output=e.result,
            error=e.error,
            attempts=tuple(attempts.get(e.seq, ())),
            compensation=e.compensation,
            started_at=e.started_at or e.created_at,
            completed_at=e.completed_at,
            parent=e.parent,
            loc=e.loc,
            wake_at=e.wake_at,
        )
        for e in entries
    )


def declared_status(entry: Entry) -> str:
    comp = (entry.compensation or {}).get("status")
    if comp == "completed":
        return "compensated"
    if entry.status == "pending":
        return "scheduled" if entry.attempts == 0 else "waiting"
    if entry.status == "running":
        return "running" if entry.kind == "step" else "waiting"
    if entry.status == "cancelled":
        return "skipped"
    return entry.status


def build_run(
    record: RunRecord,
    *,
    entries: list[Entry] | None = None,
    attempts: dict[int, list[Attempt]] | None = None,
    audit: list[AuditEvent] | None = None,
) -> Run:
    with_history = entries is not None
    return Run(
        id=uuid.UUID(record.id),
        workflow=record.workflow,
        trigger=record.trigger,
        status=RunStatus(record.status),
        payload=dict(record.payload),
        result=record.result,
        error=record.error,
        current_steps=tuple(record.current_steps),
        replayed_from_run_id=_uuid(record.replayed_from_run_id),
        forked_from_run_id=_uuid(record.forked_from_run_id),
        idempotency_key=record.idempotency_key,
        schedule=record.schedule,
        created_at=record.created_at,
        updated_at=record.updated_at,
        reason=record.reason,
        steps=tuple(
            DeclaredStep(e.name, e.kind, declared_status(e))
            for e in (entries or [])
            if e.kind in WAITABLE
        )
        if with_history
        else None,
        step_runs=build_step_runs(entries or [], attempts or {}) if with_history else None,
        audit_events=tuple(audit or ()) if with_history else None,
    )
