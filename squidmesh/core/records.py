"""Plain records shared by storage and the runtime: jobs, attempts and audit events."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

__all__ = ["JOB_KINDS", "Attempt", "AuditEvent", "Job"]

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
    def from_json(cls, data: dict[str, Any]) -> Job:
        kind = data.get("kind")
        if kind not in JOB_KINDS:
            raise ValueError(
                f"not a squidmesh job: kind {kind!r} (expected one of {sorted(JOB_KINDS)})"
            )
        run_at = data.get("run_at")
        return cls(
            kind=str(kind),
            run_id=data.get("run_id"),
            seq=data.get("seq"),
            attempt=data.get("attempt"),
            run_at=datetime.fromisoformat(run_at) if run_at else None,
            data=data.get("data"),
            id=data.get("id"),
        )
