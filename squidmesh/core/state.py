"""Pure state transitions on a history: the facts a runtime records between activations.

The engine (with a database) and the in-memory test interpreter both record outcomes
through these functions, so retries, timers, reviews, events and compensations mean the
same thing everywhere.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from squidmesh.core import contracts
from squidmesh.core.commands import Decision
from squidmesh.core.failures import error_info, timeout_error
from squidmesh.core.history import Entry, History
from squidmesh.core.records import Attempt, Compensation, CompensationStatus, ErrorRecord
from squidmesh.core.retry import Retry, RetryDecision
from squidmesh.errors import NonRetryable, RetryLater, UnstorableValueError
from squidmesh.types import EntryStatus, RunStatus

__all__ = [
    "ATTEMPT_WORKER",
    "Attempt",
    "attempt_of",
    "begin_attempt",
    "complete_attempt",
    "deliver_decision",
    "deliver_event",
    "deliver_unblock",
    "due_entries",
    "end_attempt",
    "entry_records_success",
    "fail_attempt",
    "fire_due",
    "needs_running_row",
    "record_compensation",
    "waiting_status",
    "with_entry_attempts",
]

_PENDING = EntryStatus.PENDING.value
_RUNNING = EntryStatus.RUNNING.value
_DONE = EntryStatus.COMPLETED.value
_FAILED = EntryStatus.FAILED.value


def _iso(moment: datetime) -> str:
    return moment.isoformat()


#: ``Entry.meta`` key naming the worker of a step's first attempt (None when it has none)
#: for as long as the entry is what records that attempt (see ``attempt_of``)
ATTEMPT_WORKER = "worker"


def begin_attempt(entry: Entry, now: datetime, worker: str | None = None) -> int:
    """Mark a pending step running and return the new attempt number.

    A first attempt is recorded by its entry alone while it runs (``attempts`` of 1,
    ``started_at``, and ``ATTEMPT_WORKER`` in its meta, naming ``worker`` or None), and,
    when it completes on a named worker without heartbeats, after that too
    (``entry_records_success``): a sequential step then writes no attempt row at all. A
    later attempt starts at another time than the entry's ``started_at``, so the caller
    records it running as a row of its own (``needs_running_row``)."""
    if entry.kind != "step" or entry.status != _PENDING:
        raise ValueError(f"entry {entry.seq} ({entry.label()}) is {entry.status}, not pending")
    entry.status = _RUNNING
    entry.attempts += 1
    entry.wake_at = None
    if entry.started_at is None:
        entry.started_at = _iso(now)
    if entry.attempts == 1:
        entry.meta[ATTEMPT_WORKER] = worker
    return entry.attempts


def needs_running_row(number: int) -> bool:
    """Whether attempt ``number``, begun, is recorded running by a row of its own."""
    return number != 1


def entry_records_success(entry: Entry, number: int) -> bool:
    """Whether attempt ``number`` of ``entry``, which just completed, is recorded by the
    completed entry alone: a first attempt whose entry names its worker. The caller
    writes its row instead when it has one already (a saved heartbeat), and then calls
    ``end_attempt``."""
    return number == 1 and isinstance(entry.meta.get(ATTEMPT_WORKER), str)


def end_attempt(entry: Entry) -> None:
    """The entry's first attempt is recorded by its row from now on (or the entry is a
    copy, whose attempts belong to the run it was copied from)."""
    entry.meta.pop(ATTEMPT_WORKER, None)


def _first_from_entry(entry: Entry) -> Attempt:
    worker = entry.meta.get(ATTEMPT_WORKER)
    named = worker if isinstance(worker, str) else None
    if entry.status == _DONE:
        return Attempt(1, _DONE, None, entry.started_at, entry.completed_at, worker=named)
    return Attempt(1, _RUNNING, None, entry.started_at, worker=named)


def attempt_of(entry: Entry, stored: list[Attempt], number: int) -> Attempt | None:
    """Attempt ``number`` of ``entry``'s step: its row (from ``stored``), or, for a
    first attempt that has none, the attempt its entry records (``begin_attempt``).

    Only its attempt completes a step's entry, so a first attempt recorded by a
    completed entry is that completion. Any other ending (a failure, a lost or silent
    attempt, a late outcome) writes a row and leaves the entry (``end_attempt``), so a
    first attempt the entry of an unfinished step still records never ended: it runs,
    or ran on after its branch was cancelled or its run moved on."""
    found = next((a for a in stored if a.number == number), None)
    if found is None and number == 1 and ATTEMPT_WORKER in entry.meta:
        return _first_from_entry(entry)
    return found


def with_entry_attempts(
    entries: list[Entry], stored: dict[int, list[Attempt]]
) -> dict[int, list[Attempt]]:
    """A run's attempts by seq, each list ordered by number (``Transaction.load_attempts``
    gives ``stored``), with each first attempt that its entry records instead of a row
    (``attempt_of``). Every reader of a run's attempts goes through here."""
    found = dict(stored)
    for entry in entries:
        tries = found.get(entry.seq, [])
        if tries and tries[0].number == 1:
            continue
        first = attempt_of(entry, tries, 1)
        if first is not None:
            found[entry.seq] = [first, *tries]
    return found


def complete_attempt(
    history: History, seq: int, value: Any, now: datetime, *, max_bytes: int | None = None
) -> Entry:
    """Record a step's return value; a value that cannot be stored (not JSON, or over
    ``max_bytes``) raises, and must go to ``fail_attempt``."""
    where = f" (run {history.run_id}, seq {seq})" if history.run_id else f" (seq {seq})"
    what = f"the result of step {history[seq].name}{where}"
    result = contracts.stored(value, what=what, max_bytes=max_bytes)
    return history.resolve(seq, _DONE, result=result, at=_iso(now))


def fail_attempt(
    history: History, seq: int, exc: BaseException, policy: Retry, now: datetime
) -> tuple[RetryDecision, ErrorRecord]:
    """Record a failed attempt: schedule the next one per policy, or fail the entry."""
    entry = history[seq]
    retryable = not (
        isinstance(exc, (NonRetryable, UnstorableValueError)) or policy.is_non_retryable(exc)
    )
    requested = exc.after if isinstance(exc, RetryLater) else None
    decision = policy.decide(entry.attempts, retryable=retryable, requested_delay=requested)
    error = error_info(exc, retryable=retryable)
    end_attempt(entry)
    if decision.retry:
        entry.status = _PENDING
        entry.error = error.to_json()
        entry.wake_at = _iso(now + timedelta(seconds=decision.delay))
    else:
        history.resolve(seq, _FAILED, error=error, at=_iso(now))
    return decision, error


def due_entries(history: History, now: datetime) -> list[Entry]:
    """Entries whose ``wake_at`` has passed: timers, wait timeouts and retries."""
    stamp = _iso(now)
    due = [
        e
        for e in history.entries
        if e.wake_at is not None and e.status in (_PENDING, _RUNNING) and e.wake_at <= stamp
    ]
    due.sort(key=lambda e: (e.wake_at or "", e.seq))
    return due


def fire_due(history: History, entry: Entry, now: datetime) -> None:
    """Resolve a waiting entry whose time has come (a pending retry only loses its timer)."""
    if entry.kind == "sleep":
        history.resolve(entry.seq, _DONE, at=_iso(now))
    elif entry.kind in ("approval", "event"):
        history.resolve(entry.seq, _FAILED, error=timeout_error(entry), at=_iso(now))
    else:
        entry.wake_at = None


def deliver_unblock(history: History, seq: int, data: Any, now: datetime) -> Entry:
    return history.resolve(
        seq, _DONE, result=contracts.encode(data, what="unblock data"), at=_iso(now)
    )


def deliver_decision(
    history: History,
    seq: int,
    *,
    approved: bool,
    actor: str,
    comment: str | None,
    metadata: dict[str, Any] | None,
    now: datetime,
) -> Entry:
    decision = Decision(
        approved=approved,
        decision="approved" if approved else "rejected",
        actor=actor,
        comment=comment,
        metadata=contracts.encode(metadata, what="decision metadata") if metadata else None,
        decided_at=_iso(now),
    )
    return history.resolve(seq, _DONE, result=decision.to_json(), at=_iso(now))


def deliver_event(history: History, name: str, data: Any, now: datetime) -> Entry | None:
    """Resolve the oldest wait for event ``name``; None means the caller must buffer it."""
    for entry in history.entries:
        if entry.kind == "event" and entry.name == name and entry.status == _RUNNING:
            return history.resolve(
                entry.seq, _DONE, result=contracts.encode(data, what="event data"), at=_iso(now)
            )
    return None


def record_compensation(
    history: History,
    seq: int,
    *,
    output: Any = None,
    error: ErrorRecord | None = None,
    now: datetime,
) -> Entry:
    """Record how the compensation of the step at ``seq`` ended: failed with ``error``,
    else completed with ``output``."""
    entry = history[seq]
    status = CompensationStatus.FAILED if error is not None else CompensationStatus.COMPLETED
    entry.set_compensation(Compensation(status, output, error, _iso(now)))
    return entry


def waiting_status(history: History, waiting_on: tuple[int, ...]) -> RunStatus:
    """The run status while the workflow waits on these entries (SPEC section 4)."""
    entries = [history[s] for s in waiting_on]
    if any(e.kind in ("pause", "approval") for e in entries):
        return RunStatus.PAUSED
    if any(e.kind == "step" and e.status == _PENDING and e.attempts > 0 for e in entries):
        return RunStatus.RETRYING
    return RunStatus.RUNNING
