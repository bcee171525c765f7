"""Plain records shared by storage and the runtime: jobs, attempts, audit events, the
run's cancel request and pending outcome, recorded errors and a step's compensation state.

Rows and history entries hold these as JSON (the shape stored, exported and shown); the
core and the runtime build and read them as the frozen values below, through their
``to_json``/``from_json``, which read rows written before the values existed."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from squidmesh.errors import InvalidArgumentError, shown
from squidmesh.types import JSON, RunStatus

__all__ = [
    "CANCELLED_OUTCOME",
    "COMPENSATION_PENDING",
    "COMPENSATION_RUNNING",
    "JOB_KINDS",
    "Attempt",
    "AuditEvent",
    "CancelRequest",
    "Compensation",
    "CompensationFailure",
    "CompensationStatus",
    "ErrorRecord",
    "Job",
    "PendingOutcome",
]

JOB_KINDS = frozenset({"activate", "step", "compensate", "cron"})


@dataclasses.dataclass(frozen=True)
class ErrorRecord:
    """An error as squidmesh records it: on a failed entry or attempt, on a failed or
    suspended run, on a compensation that failed.

    ``type`` is the exception's qualified name, ``types`` those of its classes (so a
    handler can match a base class on replay), ``retryable`` whether the step's policy
    may try again. A run that failed because a step did also names the step (``step``,
    ``seq``, ``attempts``), and one whose compensations failed lists them
    (``compensation_failures``); these are written only when set.
    """

    type: str
    types: tuple[str, ...] = ()
    message: str = ""
    details: JSON = None
    traceback: str | None = None
    retryable: bool = True
    step: str | None = None
    seq: int | None = None
    attempts: int | None = None
    compensation_failures: tuple[CompensationFailure, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": self.type,
            "types": list(self.types),
            "message": self.message,
            "details": self.details,
            "traceback": self.traceback,
            "retryable": self.retryable,
        }
        if self.step is not None:
            data["step"] = self.step
        if self.seq is not None:
            data["seq"] = self.seq
        if self.attempts is not None:
            data["attempts"] = self.attempts
        if self.compensation_failures is not None:
            data["compensation_failures"] = [f.to_json() for f in self.compensation_failures]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ErrorRecord | None:
        """The record of a stored error. Missing keys take their defaults: rows written
        by earlier versions (or by hand) may lack some; a missing ``retryable`` reads as
        True, as it always has."""
        if data is None:
            return None
        message = data.get("message")
        trace = data.get("traceback")
        step, seq, attempts = data.get("step"), data.get("seq"), data.get("attempts")
        failures = data.get("compensation_failures")
        return cls(
            type=str(data.get("type") or "Exception"),
            types=tuple(str(t) for t in data.get("types") or ()),
            message="" if message is None else str(message),
            details=data.get("details"),
            traceback=None if trace is None else str(trace),
            retryable=bool(data.get("retryable", True)),
            step=None if step is None else str(step),
            seq=seq if isinstance(seq, int) else None,
            attempts=attempts if isinstance(attempts, int) else None,
            compensation_failures=None
            if failures is None
            else tuple(
                CompensationFailure.from_json(f) for f in failures if isinstance(f, Mapping)
            ),
        )


@dataclasses.dataclass(frozen=True)
class CompensationFailure:
    """A compensation that failed while a run was being rolled back (listed on the
    run's error)."""

    step: str
    seq: int
    error: ErrorRecord | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "seq": self.seq,
            "error": self.error.to_json() if self.error is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CompensationFailure:
        error = data.get("error")
        return cls(
            step=str(data.get("step", "")),
            seq=int(data.get("seq", -1)),
            error=ErrorRecord.from_json(error) if isinstance(error, Mapping) else None,
        )


class CompensationStatus(str, enum.Enum):
    """Where the compensation of a completed step stands (its entry's ``compensation``):
    due (``pending``), called (``running``), then ``completed`` or ``failed``."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @property
    def ended(self) -> bool:
        return self in (CompensationStatus.COMPLETED, CompensationStatus.FAILED)


@dataclasses.dataclass(frozen=True)
class Compensation:
    """The compensation state of a step's history entry. Once ended it carries the
    compensation's ``output`` or ``error`` and when it ended (``completed_at``, ISO)."""

    status: CompensationStatus
    output: JSON = None
    error: ErrorRecord | None = None
    completed_at: str | None = None

    @property
    def ended(self) -> bool:
        return self.status.ended

    def to_json(self) -> dict[str, Any]:
        if not self.ended:  # due or running: the status is all there is
            return {"status": self.status.value}
        return {
            "status": self.status.value,
            "output": self.output,
            "error": self.error.to_json() if self.error is not None else None,
            "completed_at": self.completed_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Compensation | None:
        if data is None:
            return None
        error = data.get("error")
        completed = data.get("completed_at")
        return cls(
            status=CompensationStatus(data["status"]),
            output=data.get("output"),
            error=ErrorRecord.from_json(error) if isinstance(error, Mapping) else None,
            completed_at=None if completed is None else str(completed),
        )


#: a compensation due, and one being called
COMPENSATION_PENDING = Compensation(CompensationStatus.PENDING)
COMPENSATION_RUNNING = Compensation(CompensationStatus.RUNNING)


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One execution attempt of a step."""

    number: int
    status: str  # running | completed | failed
    #: the attempt's error (an ``ErrorRecord``'s JSON; read it with ``error_record``)
    error: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    #: the worker that ran the attempt (its id in the workers table)
    worker: str | None = None
    #: the latest ``step_context().heartbeat(details)``: {"at": ISO time, "details": ...}
    heartbeat: dict[str, Any] | None = None

    @property
    def error_record(self) -> ErrorRecord | None:
        return ErrorRecord.from_json(self.error)


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """An append-only fact about a run: who did what, when."""

    type: str
    step: str | None = None
    actor: str | None = None
    comment: str | None = None
    metadata: dict[str, Any] | None = None
    at: str | None = None  # ISO 8601


@dataclasses.dataclass(frozen=True)
class Job:
    """A unit of work handed to an executor. JSON in, JSON out.

    ``kind`` is activate (advance a run, fire its due timers), step (run attempt
    ``attempt`` of the step at ``seq``), compensate (run the compensation of the step at
    ``seq``) or cron (start a scheduled run; details in ``data``).
    """

    kind: str
    run_id: str | None = None
    seq: int | None = None
    attempt: int | None = None
    run_at: datetime | None = None
    data: dict[str, Any] | None = None
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "run_id": self.run_id,
            "seq": self.seq,
            "attempt": self.attempt,
            "run_at": self.run_at.isoformat() if self.run_at else None,
            "data": self.data,
            "id": self.id,
        }

    @classmethod
    def from_json(cls, data: Any) -> Job:
        """The job of ``to_json``'s output; ``InvalidArgumentError`` for anything else (a
        broker may hand back whatever it holds)."""
        if not isinstance(data, Mapping):
            raise InvalidArgumentError(f"not a squidmesh job: {shown(data)} is not a mapping")
        kind = data.get("kind")
        if not isinstance(kind, str) or kind not in JOB_KINDS:
            raise InvalidArgumentError(
                f"not a squidmesh job: kind {shown(kind)} (expected one of {sorted(JOB_KINDS)})"
            )
        for name, wanted in (("run_id", str), ("seq", int), ("attempt", int), ("id", int)):
            value = data.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, wanted)):
                raise InvalidArgumentError(
                    f"not a squidmesh job: {name} {shown(value)} is not {wanted.__name__}"
                )
        details = data.get("data")
        if details is not None and not isinstance(details, dict):
            raise InvalidArgumentError(f"not a squidmesh job: data {shown(details)} is not a dict")
        run_at = data.get("run_at")
        try:
            moment = datetime.fromisoformat(run_at) if run_at else None
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"not a squidmesh job: run_at {shown(run_at)} is not an ISO 8601 time"
            ) from None
        return cls(
            kind=kind,
            run_id=data.get("run_id"),
            seq=data.get("seq"),
            attempt=data.get("attempt"),
            run_at=moment,
            data=details,
            id=data.get("id"),
        )


@dataclasses.dataclass(frozen=True)
class CancelRequest:
    """Who asked for a run's cancellation, why, and whether to compensate (the run row's
    ``cancel_request`` column, kept until the run ends)."""

    actor: str | None = None
    reason: str | None = None
    compensate: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"actor": self.actor, "reason": self.reason, "compensate": self.compensate}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> CancelRequest | None:
        if data is None:
            return None
        return cls(
            actor=data.get("actor"),
            reason=data.get("reason"),
            compensate=bool(data.get("compensate")),
        )


@dataclasses.dataclass(frozen=True)
class PendingOutcome:
    """How a run ends once the compensations now running are done (the run row's
    ``pending_outcome`` column): failed with ``error``, or cancelled."""

    status: RunStatus
    reason: str | None = None
    error: ErrorRecord | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": self.status.value, "reason": self.reason}
        if self.error is not None:
            data["error"] = self.error.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> PendingOutcome | None:
        if data is None:
            return None
        error = data.get("error")
        return cls(
            status=RunStatus(data["status"]),
            reason=data.get("reason"),
            error=ErrorRecord.from_json(error) if isinstance(error, Mapping) else None,
        )


#: the outcome of a run cancelled while its compensations run
CANCELLED_OUTCOME = PendingOutcome(RunStatus.CANCELLED, reason="cancelled")
