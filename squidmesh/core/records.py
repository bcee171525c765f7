"""Plain records shared by storage and the runtime: jobs, attempts, audit events, and
the run's cancel request and pending outcome (stored as JSON, handled as values)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from squidmesh.errors import InvalidArgumentError, shown
from squidmesh.types import RunStatus

__all__ = [
    "CANCELLED_OUTCOME",
    "JOB_KINDS",
    "Attempt",
    "AuditEvent",
    "CancelRequest",
    "Job",
    "PendingOutcome",
]

JOB_KINDS = frozenset({"activate", "step", "compensate", "cron"})


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One execution attempt of a step."""

    number: int
    status: str  # running | completed | failed
    error: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    #: the worker that ran the attempt (its id in the workers table)
    worker: str | None = None
    #: the latest ``step_context().heartbeat(details)``: {"at": ISO time, "details": ...}
    heartbeat: dict[str, Any] | None = None


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
    error: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": self.status.value, "reason": self.reason}
        if self.error is not None:
            data["error"] = self.error
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> PendingOutcome | None:
        if data is None:
            return None
        error = data.get("error")
        return cls(
            status=RunStatus(data["status"]),
            reason=data.get("reason"),
            error=dict(error) if isinstance(error, Mapping) else None,
        )


#: the outcome of a run cancelled while its compensations run
CANCELLED_OUTCOME = PendingOutcome(RunStatus.CANCELLED, reason="cancelled")
