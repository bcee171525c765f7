"""The cancel request and pending outcome a run row stores as JSON, as values."""

from __future__ import annotations

from squidmesh.core.records import CANCELLED_OUTCOME, CancelRequest, PendingOutcome
from squidmesh.types import RunStatus


def test_a_cancel_request_round_trips_and_reads_rows_written_before_it_existed() -> None:
    request = CancelRequest(actor="ops@example.com", reason="duplicate order", compensate=True)
    assert CancelRequest.from_json(request.to_json()) == request
    assert CancelRequest.from_json({"actor": "ops"}) == CancelRequest(actor="ops")
    assert CancelRequest.from_json(None) is None


def test_a_pending_outcome_keeps_its_status_reason_and_error() -> None:
    failed = PendingOutcome(RunStatus.FAILED, reason="step_failed", error={"type": "ValueError"})
    assert PendingOutcome.from_json(failed.to_json()) == failed
    # The shape rows already hold: {"status", "error", "reason"}, error possibly null.
    stored = {"status": "failed", "error": None, "reason": "step_failed"}
    assert PendingOutcome.from_json(stored) == PendingOutcome(RunStatus.FAILED, "step_failed")
    assert CANCELLED_OUTCOME.to_json() == {"status": "cancelled", "reason": "cancelled"}
    assert PendingOutcome.from_json(None) is None
