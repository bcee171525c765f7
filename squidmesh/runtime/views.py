"""The frozen values the Mesh API returns: runs, step runs, audit events, explanations."""

from __future__ import annotations

import dataclasses
import uuid
import weakref
from datetime import datetime
from typing import Any

from squidmesh.analysis import step_graph
from squidmesh.core.definition import WorkflowDefinition
from squidmesh.core.history import Entry
from squidmesh.core.records import Attempt, AuditEvent, CompensationStatus
from squidmesh.storage.base import RunRecord
from squidmesh.types import TERMINAL_STATUSES, RunStatus

__all__ = [
    "ChildRun",
    "DeclaredStep",
    "Explanation",
    "Run",
    "StepRun",
    "build_children",
    "build_run",
    "build_step_runs",
]

WAITABLE = frozenset({"step", "sleep", "pause", "approval", "event", "child"})


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
class ChildRun:
    """A run started by another (``sm.child``, ``sm.start_child``), as its parent sees it.

    ``seq`` is the parent's history entry that started it; ``detached`` is True for
    ``sm.start_child`` (the parent does not wait for it, nor cancel it). A child that
    continued as new is listed with its successors (``continued_from_run_id`` set)."""

    run_id: uuid.UUID
    workflow: str
    status: RunStatus
    reason: str | None
    seq: int | None
    detached: bool
    continued_from_run_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


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
    #: the run that started this one (sm.child / sm.start_child), None for a top run
    parent_run_id: uuid.UUID | None = None
    #: sm.continue_as_new lineage: the run this one continues, the run continuing it
    continued_from_run_id: uuid.UUID | None = None
    continued_as_run_id: uuid.UUID | None = None
    #: the values recorded with sm.publish (latest per name); from inspect_run only
    published: dict[str, Any] | None = None
    #: the runs this one started (with history)
    children: tuple[ChildRun, ...] | None = None


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
    comp = entry.compensation_state
    if comp is not None and comp.status is CompensationStatus.COMPLETED:
        return "compensated"
    if entry.meta.get("held") and entry.status == "pending":
        return "waiting"  # a join(limit=...) branch waiting for a slot
    if entry.status == "pending":
        return "scheduled" if entry.attempts == 0 else "waiting"
    if entry.status == "running":
        return "running" if entry.kind == "step" else "waiting"
    if entry.status == "cancelled":
        return "skipped"
    return entry.status


# The declared steps of a workflow, read once per definition object: parsing its source
# again on every inspect_run would be wasted work (definitions are immutable in practice).
_DECLARED: weakref.WeakKeyDictionary[WorkflowDefinition, tuple[tuple[str, str], ...]] = (
    weakref.WeakKeyDictionary()
)
# Above this many (declared x reached) pairs the alignment is greedy instead of optimal.
_ALIGN_LIMIT = 250_000


def _declared(workflow: WorkflowDefinition) -> tuple[tuple[str, str], ...]:
    found = _DECLARED.get(workflow)
    if found is None:
        found = tuple((s.kind, s.name) for s in step_graph(workflow).steps())
        _DECLARED[workflow] = found
    return found


def _align(declared: tuple[tuple[str, str], ...], reached: list[Entry]) -> list[int | None]:
    """For each reached entry, the index of the declared step it is (or None).

    An order-preserving alignment on (kind, name) — a longest common subsequence — so a
    step written twice (``walk_home`` in two branches) is matched to the occurrence on
    the path the run took. Entries left over whose (kind, name) is declared are repeats
    (loops): they go to the last declared occurrence matched at or before them.
    """
    keys = [(e.kind, e.name) for e in reached]
    n, m = len(declared), len(keys)
    match: list[int | None] = [None] * m
    if n * m <= _ALIGN_LIMIT:
        table = [[0] * (m + 1) for _ in range(n + 1)]
        for i in range(n - 1, -1, -1):
            for j in range(m - 1, -1, -1):
                table[i][j] = (
                    table[i + 1][j + 1] + 1
                    if declared[i] == keys[j]
                    else max(table[i + 1][j], table[i][j + 1])
                )
        i = j = 0
        while i < n and j < m:
            if declared[i] == keys[j]:
                match[j] = i
                i, j = i + 1, j + 1
            elif table[i + 1][j] >= table[i][j + 1]:
                i += 1
            else:
                j += 1
    else:
        i = 0
        for j, key in enumerate(keys):
            at = next((k for k in range(i, n) if declared[k] == key), None)
            if at is not None:
                match[j], i = at, at + 1
    last = -1
    for j, key in enumerate(keys):
        if match[j] is not None:
            last = match[j] or 0
            continue
        candidates = [k for k in range(n) if declared[k] == key]
        if candidates:
            before = [k for k in candidates if k <= last]
            match[j] = before[-1] if before else candidates[0]
    return match


def declared_steps(
    entries: list[Entry], workflow: WorkflowDefinition | None, status: RunStatus
) -> tuple[DeclaredStep, ...]:
    """The workflow's steps with their state in this run.

    Without a definition: the waitable history entries, in yield order. With one: the
    statically declared steps in source order; a step not reached yet is ``waiting`` (a
    finished run lists only what it reached: the rest is a path it did not take); steps
    reached but absent from the graph (chosen at run time) are appended.
    """
    reached = [e for e in entries if e.kind in WAITABLE]
    if workflow is None:
        return tuple(DeclaredStep(e.name, e.kind, declared_status(e)) for e in reached)
    declared = _declared(workflow)
    match = _align(declared, reached)
    latest: dict[int, Entry] = {}
    extra: list[Entry] = []
    for entry, index in zip(reached, match, strict=True):
        if index is None:
            extra.append(entry)
        elif index not in latest or latest[index].seq < entry.seq:
            latest[index] = entry  # a loop's step shows its latest iteration
    finished = status in TERMINAL_STATUSES
    steps: list[DeclaredStep] = []
    for index, (kind, name) in enumerate(declared):
        seen = latest.get(index)
        if seen is not None:
            steps.append(DeclaredStep(name, kind, declared_status(seen)))
        elif not finished:
            steps.append(DeclaredStep(name, kind, "waiting"))
    steps.extend(DeclaredStep(e.name, e.kind, declared_status(e)) for e in extra)
    return tuple(steps)


def build_children(entries: list[Entry], records: list[RunRecord]) -> tuple[ChildRun, ...]:
    """A parent's children: ``records`` (the runs naming it as their parent, and runs its
    entries reused by key), each with the seq of the parent's entry that started it."""
    seqs: dict[str, tuple[int, bool]] = {}
    for entry in entries:
        rid = entry.meta.get("run_id") if entry.kind in ("child", "start_child") else None
        if rid:
            seqs[str(rid)] = (entry.seq, entry.kind == "start_child")
    out = []
    # In the parent's order: by the seq that started each (a child and the runs that
    # continue it share one), then by creation.
    ordered = sorted(
        records,
        key=lambda r: (
            seqs.get(r.id, (r.parent_seq if r.parent_seq is not None else 1 << 62,))[0],
            r.created_at,
            r.id,
        ),
    )
    for record in ordered:
        # A continuation of a child (same parent link) or a child found by the index.
        seq, detached = seqs.get(record.id, (record.parent_seq, record.parent_seq is None))
        out.append(
            ChildRun(
                run_id=uuid.UUID(record.id),
                workflow=record.workflow,
                status=RunStatus(record.status),
                reason=record.reason,
                seq=seq,
                detached=detached,
                continued_from_run_id=_uuid(record.continued_from_run_id),
                created_at=record.created_at,
                updated_at=record.updated_at,
            )
        )
    return tuple(out)


def build_run(
    record: RunRecord,
    *,
    entries: list[Entry] | None = None,
    attempts: dict[int, list[Attempt]] | None = None,
    audit: list[AuditEvent] | None = None,
    workflow: WorkflowDefinition | None = None,
    published: dict[str, Any] | None = None,
    children: tuple[ChildRun, ...] | None = None,
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
        steps=declared_steps(entries or [], workflow, RunStatus(record.status))
        if with_history
        else None,
        step_runs=build_step_runs(entries or [], attempts or {}) if with_history else None,
        audit_events=tuple(audit or ()) if with_history else None,
        parent_run_id=_uuid(record.parent_run_id),
        continued_from_run_id=_uuid(record.continued_from_run_id),
        continued_as_run_id=_uuid(record.continued_as_run_id),
        published=published,
        children=children,
    )
