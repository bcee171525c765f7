"""``explain_run``: turn a run's persisted facts into a reason and the valid next actions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from squidmesh.core.definition import StepPolicy
from squidmesh.core.flow import DEADLINE_EXCEEDED, job_start_at
from squidmesh.core.history import Entry
from squidmesh.core.records import Attempt, ErrorRecord
from squidmesh.runtime.queues import QueueState
from squidmesh.runtime.views import Explanation, build_step_runs
from squidmesh.storage.base import PARKED, QueuedJob, RunRecord
from squidmesh.types import RunStatus

__all__ = ["explain", "replay_blockers"]


def replay_blockers(entries: list[Entry]) -> list[str]:
    """Completed steps that cannot be honestly undone: replay needs an explicit override."""
    return [
        e.name
        for e in entries
        if e.kind == "step"
        and e.status == "completed"
        and not StepPolicy.from_json(e.meta).undoable
    ]


def _replay_details(entries: list[Entry]) -> dict[str, Any]:
    blocked = replay_blockers(entries)
    if blocked:
        return {
            "allowed": False,
            "blocked_by": blocked,
            "required_override": "allow_irreversible",
        }
    return {"allowed": True, "blocked_by": [], "required_override": None}


def _evidence(
    run: RunRecord, entry: Entry | None, attempts: dict[int, list[Attempt]]
) -> dict[str, Any]:
    evidence: dict[str, Any] = {
        "run": {
            "id": run.id,
            "workflow": run.workflow,
            "trigger": run.trigger,
            "status": run.status,
            "error": run.error,
            "current_steps": list(run.current_steps),
            "schedule": run.schedule,
            "created_at": run.created_at.isoformat(),
            "updated_at": run.updated_at.isoformat(),
        },
        "step_run": None,
        "attempt": None,
    }
    if entry is not None:
        step_run = build_step_runs([entry], attempts)[0]
        evidence["step_run"] = dataclasses.asdict(step_run)
        tries = attempts.get(entry.seq) or []
        evidence["attempt"] = dataclasses.asdict(tries[-1]) if tries else None
    return evidence


def _error_facts(error: ErrorRecord | None, *names: str) -> dict[str, Any]:
    """Some fields of a run's error, as ``explain_run`` shows them (None when unset)."""
    shown = error.to_json() if error is not None else {}
    return {name: shown.get(name) for name in names}


def _failed_reason(
    run: RunRecord, entries: list[Entry]
) -> tuple[str, Entry | None, dict[str, Any]]:
    error = ErrorRecord.from_json(run.error)
    if run.reason == "compensation_failed":
        failures = error.compensation_failures if error is not None else None
        return "compensation_failed", None, {"failures": [f.to_json() for f in failures or ()]}
    seq = error.seq if error is not None else None
    if error is not None and seq is not None and 0 <= seq < len(entries):
        entry = entries[seq]
        max_attempts = StepPolicy.from_json(entry.meta).max_attempts
        facts = {
            "error": _error_facts(error, "type", "message", "details"),
            "max_attempts": max_attempts,
            "latest_attempt_number": entry.attempts,
        }
        if entry.attempts >= max_attempts and error.retryable:
            return "retry_exhausted", entry, facts
        return "step_failed", entry, facts
    return (
        "workflow_failed",
        None,
        {"error": _error_facts(error, "type", "message", "details")},
    )


def _branch(entry: Entry) -> dict[str, Any]:
    found = {"seq": entry.seq, "kind": entry.kind, "name": entry.name, "status": entry.status}
    if entry.meta.get("held") and entry.status == "pending":
        found["held"] = True  # a join(limit=...) branch waiting for a slot
    if entry.kind == "child" and entry.meta.get("run_id"):
        found["child_run_id"] = entry.meta["run_id"]
    return found


def _queued_job(jobs: Sequence[QueuedJob], entry: Entry) -> dict[str, Any] | None:
    """The flow data of the step job of ``entry`` waiting (unleased) in a queue."""
    for q in jobs:
        data = q.job.data or {}
        if q.job.kind == "step" and q.job.seq == entry.seq and q.worker is None:
            if data.get("queue"):
                return data
    return None


def _admission(jobs: Sequence[QueuedJob]) -> dict[str, Any] | None:
    """The flow data of a pending run's admission to a workflow-level queue, while it
    waits (with ``position`` when the caller put it there)."""
    for q in jobs:
        data = q.job.data or {}
        if q.job.kind == "activate" and q.worker is None and data.get("hold"):
            return data
    return None


def _debouncing(jobs: Sequence[QueuedJob], now: datetime | None) -> dict[str, Any] | None:
    """Key, start and bound of a pending debounced run still in its window."""
    for q in jobs:
        data = q.job.data or {}
        if q.job.kind != "activate" or not data.get("debounce") or q.worker is not None:
            continue
        if now is None or q.job.run_at is None or q.job.run_at <= now:
            return None
        bound = None
        if isinstance(data.get("max_wait"), (int, float)):
            first = datetime.fromisoformat(str(data["first_at"]))
            bound = (first + timedelta(seconds=data["max_wait"])).isoformat()
        return {
            "key": data.get("debounce_key"),
            "start_at": q.job.run_at.isoformat(),
            "first_start_at": data.get("first_at"),
            "max_wait_until": bound,
        }
    return None


def _queue_counts(state: QueueState) -> dict[str, Any]:
    """What a queue holds and allows, as the details of ``queued``/``rate_limited``."""
    return {
        "running": state.running,
        "waiting": state.waiting,
        "limit": {
            "concurrency": state.concurrency,
            "key_concurrency": state.key_concurrency,
            "rate": state.rate,
        },
    }


def _scheduled_start(jobs: Sequence[QueuedJob], now: datetime | None) -> str | None:
    """When a pending run starts (ISO 8601), if it was started for later and that is
    still ahead. The start asked for is recorded in the activation's data: its
    ``run_at`` also moves when a worker gives the job back after an error, and an
    immediate start's ``run_at`` may look ahead to a caller whose clock estimate lags
    the one that created the run."""
    starts = [
        datetime.fromisoformat(start)
        for q in jobs
        if q.job.kind == "activate" and (start := job_start_at(q.job.data)) is not None
    ]
    if now is None or not starts:
        return None
    first = min(starts)
    return first.isoformat() if first > now else None


def _dispatch_retry(jobs: Sequence[QueuedJob]) -> dict[str, Any]:
    """Why a pending run's first activation has not happened yet when a worker tried
    and failed: when it is tried again, how often it failed, the last error."""
    failed = [q for q in jobs if q.job.kind == "activate" and q.failures and q.worker != PARKED]
    if not failed:
        return {}
    latest = max(failed, key=lambda q: q.failures)
    return {
        "retry_at": latest.job.run_at.isoformat() if latest.job.run_at else None,
        "failures": latest.failures,
        "last_error": latest.last_error,
    }


def explain(
    run: RunRecord,
    entries: list[Entry],
    attempts: dict[int, list[Attempt]],
    *,
    workflow_available: bool,
    events_waiting: int = 0,
    jobs: Sequence[QueuedJob] = (),
    explain_child: Callable[[str], Explanation | None] | None = None,
    now: datetime | None = None,
    queues: Mapping[str, QueueState] | None = None,
) -> Explanation:
    """``explain_child(run_id)``: the explanation of a child run the run waits for (the
    run its ``sm.child`` entry names), or None when it cannot be read."""
    status = RunStatus(run.status)
    waiting = [entries[s] for s in run.waiting_on if 0 <= s < len(entries)]
    entry: Entry | None = waiting[0] if waiting else None
    details: dict[str, Any] = {}
    actions: list[str] = []

    if status in (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.FAILED):
        replay = _replay_details(entries)
        if status is RunStatus.FAILED:
            reason, entry, details = _failed_reason(run, entries)
        else:
            reason, entry = status.value, None
        request = run.cancel_request or {}
        if status is RunStatus.CANCELLED and request.get("reason") == DEADLINE_EXCEEDED:
            reason = DEADLINE_EXCEEDED
            details["deadline"] = request.get("deadline")
        if status is RunStatus.COMPLETED:
            details["result"] = run.result
        if status is RunStatus.COMPLETED and run.reason == "continued_as_new":
            reason = "continued_as_new"
            details["continued_as_run_id"] = run.continued_as_run_id
        if not workflow_available:
            replay = {**replay, "allowed": False, "workflow_definition": "unavailable"}
        details["replay"] = replay
        actions = ["replay_run", "fork_run"] if replay["allowed"] else []
        if workflow_available and not replay["allowed"] and entries:
            actions = ["fork_run"]
    elif not workflow_available:
        reason = "workflow_unavailable"
        details = {"workflow": run.workflow, "hint": "register the workflow with this Mesh"}
        actions = ["cancel_run"]
    elif status is RunStatus.SUSPENDED:
        reason = (
            run.reason if run.reason in ("nondeterminism", "workflow_error") else "workflow_error"
        )
        error = ErrorRecord.from_json(run.error)
        facts = error.details if error is not None and reason == "nondeterminism" else None
        details = {
            "error": _error_facts(error, "type", "message", "traceback"),
            **(facts if isinstance(facts, dict) else {}),
        }
        actions = ["resume_run", "cancel_run"]
    elif status is RunStatus.CANCELLING:
        reason = "compensating" if run.pending_outcome else "waiting_for_cancellation"
        in_flight = [
            e.name for e in entries if e.kind in ("step", "child") and e.status == "running"
        ]
        details = {"in_flight": in_flight, "request": run.cancel_request}
        children = [
            e.meta["run_id"]
            for e in entries
            if e.kind == "child" and e.status == "running" and e.meta.get("run_id")
        ]
        if children:
            details["children"] = children  # attached child runs still being cancelled
        actions = ["wait_for_cancellation"]
    elif run.reason == "compensating":
        reason = "compensating"
        details = {
            "pending": [
                e.name
                for e in entries
                if (comp := e.compensation_state) is not None and not comp.ended
            ]
        }
        actions = ["wait_for_step"]
    elif status is RunStatus.PENDING and (debouncing := _debouncing(jobs, now)) is not None:
        reason = "debouncing"
        details = debouncing
        actions = ["wait_for_timer", "cancel_run"]
    elif status is RunStatus.PENDING and (start := _scheduled_start(jobs, now)) is not None:
        reason = "scheduled_start"
        details = {"start_at": start}
        actions = ["wait_for_timer", "cancel_run"]
    elif status is RunStatus.PENDING and (admission := _admission(jobs)) is not None:
        state = (queues or {}).get(str(admission.get("queue")))
        reason = "queued"
        details = {
            "queue": admission.get("queue"),
            "key": admission.get("flow_key"),
            "priority": admission.get("priority"),
            "position": admission.get("position"),
        }
        if state is not None:
            details.update(_queue_counts(state))
        actions = ["cancel_run"]
    elif status is RunStatus.PENDING:
        reason = "pending_dispatch"
        details = _dispatch_retry(jobs)
        actions = ["wait_for_step", "cancel_run"]
    elif status is RunStatus.PAUSED and entry is not None:
        # A join may wait on a person and on a timer or step at once: name the person's.
        entry = next((e for e in waiting if e.kind in ("approval", "pause")), entry)
        if entry.kind == "approval":
            reason = "paused_for_approval"
            actions = ["approve_run", "reject_run", "cancel_run"]
            details = {"approval": entry.name, "timeout_at": entry.wake_at}
        else:
            reason = "paused_for_manual_action"
            actions = ["unblock_run", "cancel_run"]
            details = {"pause": entry.name, "reason": (entry.input or {}).get("reason")}
    elif status is RunStatus.RETRYING and entry is not None:
        reason = "waiting_for_retry"
        actions = ["wait_for_retry", "cancel_run"]
        details = {
            "next_attempt_number": entry.attempts + 1,
            "next_attempt_at": entry.wake_at,
            "max_attempts": StepPolicy.from_json(entry.meta).max_attempts,
            "last_error": entry.error,
        }
    elif len(waiting) > 1 or (entry is not None and entry.parent is not None):
        reason = "waiting_for_join"
        parent = entry.parent if entry is not None and entry.parent is not None else None
        branches = [e for e in entries if parent is not None and e.parent == parent]
        details = {"branches": [_branch(b) for b in branches]}
        limit = (entries[parent].input or {}).get("limit") if parent is not None else None
        if limit:
            details["limit"] = limit
        actions = ["wait_for_step", "cancel_run"]
    elif entry is not None and entry.kind == "child":
        reason = "waiting_for_child"
        child_id = entry.meta.get("run_id")
        details = {"child_run_id": child_id, "workflow": entry.name}
        found = explain_child(str(child_id)) if child_id and explain_child else None
        if found is not None:
            details.update(
                {
                    "child_run_id": found.evidence["run"]["id"],
                    "child_status": found.status.value,
                    "child_reason": found.reason,
                    "child_step": found.step,
                    "child_details": found.details,
                    "child_next_actions": list(found.next_actions),
                }
            )
        actions = ["wait_for_step", "cancel_run"]
    elif entry is None:
        reason = "pending_dispatch"
        actions = ["wait_for_step", "cancel_run"]
    elif entry.kind == "sleep":
        reason = "waiting_for_timer"
        details = {"wake_at": entry.wake_at}
        actions = ["wait_for_timer", "cancel_run"]
    elif entry.kind == "event":
        reason = "waiting_for_event"
        details = {
            "event": entry.name,
            "timeout_at": entry.wake_at,
            "buffered_events": events_waiting,
        }
        actions = ["send_event", "wait_for_event", "cancel_run"]
    elif entry.status == "running":
        reason = "step_running"
        tries = attempts.get(entry.seq) or []
        details = {
            "attempt": entry.attempts,
            "worker": tries[-1].worker if tries else None,
            # the latest step_context().heartbeat(details), once saved
            "heartbeat": tries[-1].heartbeat if tries else None,
        }
        actions = ["wait_for_step", "cancel_run"]
    elif (flow := _queued_job(jobs, entry)) is not None:
        state = (queues or {}).get(str(flow.get("queue")))
        limited = (
            state is not None
            and state.rate is not None
            and (state.started_in_window or 0) >= state.rate["limit"]
        )
        reason = "rate_limited" if limited else "queued"
        details = {
            "attempt": entry.attempts + 1,
            "queue": flow.get("queue"),
            "key": flow.get("flow_key"),
            "priority": flow.get("priority"),
        }
        if state is not None:
            details.update(_queue_counts(state))
            if state.rate is not None:
                details["started_in_window"] = state.started_in_window
        actions = ["wait_for_step", "cancel_run"]
    else:
        reason = "step_scheduled"
        details = {"attempt": entry.attempts + 1}
        actions = ["wait_for_step", "cancel_run"]

    parked = [q for q in jobs if q.worker == PARKED]
    if parked and not status.is_terminal:
        # Work that failed too often to be tried again: nothing moves the run until an
        # operator acts (the cause is in last_error).
        details = {
            **details,
            "parked_jobs": [
                {**q.job.to_json(), "failures": q.failures, "last_error": q.last_error}
                for q in parked
            ],
        }
    return Explanation(
        status=status,
        reason=reason,
        step=entry.name if entry is not None else None,
        details=details,
        next_actions=tuple(actions),
        evidence=_evidence(run, entry, attempts),
    )
