"""The records rows and history entries store as JSON, as values: a run's cancel request
and pending outcome, recorded errors, a step's compensation state."""

from __future__ import annotations

import dataclasses
import json

import pytest

from squidmesh.core.failures import error_info
from squidmesh.core.history import Entry
from squidmesh.core.records import (
    CANCELLED_OUTCOME,
    COMPENSATION_PENDING,
    COMPENSATION_RUNNING,
    Attempt,
    CancelRequest,
    Compensation,
    CompensationFailure,
    CompensationStatus,
    ErrorRecord,
    PendingOutcome,
)
from squidmesh.types import RunStatus


def test_a_cancel_request_round_trips_and_reads_rows_written_before_it_existed() -> None:
    request = CancelRequest(actor="ops@example.com", reason="duplicate order", compensate=True)
    assert CancelRequest.from_json(request.to_json()) == request
    assert CancelRequest.from_json({"actor": "ops"}) == CancelRequest(actor="ops")
    assert CancelRequest.from_json(None) is None


def test_a_pending_outcome_keeps_its_status_reason_and_error() -> None:
    error = ErrorRecord("builtins.ValueError", ("builtins.ValueError",), "no", retryable=False)
    failed = PendingOutcome(RunStatus.FAILED, reason="step_failed", error=error)
    assert PendingOutcome.from_json(failed.to_json()) == failed
    assert failed.to_json()["error"] == error.to_json()
    # The shape rows already hold: {"status", "error", "reason"}, error possibly null.
    stored = {"status": "failed", "error": None, "reason": "step_failed"}
    assert PendingOutcome.from_json(stored) == PendingOutcome(RunStatus.FAILED, "step_failed")
    assert CANCELLED_OUTCOME.to_json() == {"status": "cancelled", "reason": "cancelled"}
    assert PendingOutcome.from_json(None) is None


# ---------------------------------------------------------------------- errors

#: an error as rows hold it (written by error_info before ErrorRecord existed)
STORED_ERROR = {
    "type": "builtins.ConnectionError",
    "types": [
        "builtins.ConnectionError",
        "builtins.OSError",
        "builtins.Exception",
        "builtins.BaseException",
    ],
    "message": "cave troll",
    "details": {"cave": "moria"},
    "traceback": "Traceback (most recent call last): ...",
    "retryable": True,
}


def test_an_error_record_writes_the_json_rows_already_hold_key_for_key_in_order() -> None:
    record = ErrorRecord.from_json(STORED_ERROR)
    assert record is not None
    assert record.types[1] == "builtins.OSError" and record.details == {"cave": "moria"}
    # Same keys, same order: a row rewritten from the record is byte for byte the same.
    assert json.dumps(record.to_json()) == json.dumps(STORED_ERROR)


def test_an_exception_is_recorded_with_its_bases_and_reads_back_the_same() -> None:
    try:
        raise ConnectionError("cave troll")
    except ConnectionError as exc:
        record = error_info(exc)
    assert record.type == "builtins.ConnectionError"
    assert record.types[:2] == ("builtins.ConnectionError", "builtins.OSError")
    assert record.traceback is not None and "cave troll" in record.traceback
    assert list(record.to_json()) == list(STORED_ERROR)
    assert ErrorRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_a_run_error_names_its_step_and_lists_failed_compensations_only_when_set() -> None:
    base = ErrorRecord.from_json(STORED_ERROR)
    assert base is not None
    failed = ErrorRecord("builtins.RuntimeError", message="pantry closed", retryable=False)
    run_error = dataclasses.replace(
        base,
        step="toss_ring",
        seq=12,
        attempts=1,
        compensation_failures=(CompensationFailure("pack", 3, failed),),
    )
    stored = run_error.to_json()
    # The step's error first, then what the run adds, as rows always had them.
    assert list(stored) == [*STORED_ERROR, "step", "seq", "attempts", "compensation_failures"]
    assert stored["compensation_failures"] == [
        {"step": "pack", "seq": 3, "error": failed.to_json()}
    ]
    assert ErrorRecord.from_json(stored) == run_error
    assert "step" not in base.to_json() and "compensation_failures" not in base.to_json()


def test_an_error_row_missing_keys_reads_with_the_defaults_replay_always_used() -> None:
    # A compensation error once written by hand: type and message only.
    short = ErrorRecord.from_json({"type": "squidmesh.errors.DefinitionError", "message": "gone"})
    assert short == ErrorRecord("squidmesh.errors.DefinitionError", message="gone")
    assert short.types == () and short.details is None and short.traceback is None
    assert short.retryable is True  # a missing flag never stopped a retry
    assert ErrorRecord.from_json({}) == ErrorRecord("Exception")
    assert ErrorRecord.from_json({"type": "X", "message": None}) == ErrorRecord("X")
    assert ErrorRecord.from_json(None) is None


def test_entries_and_attempts_keep_errors_as_json_and_read_them_as_records() -> None:
    record = ErrorRecord.from_json(STORED_ERROR)
    entry = Entry(seq=0, kind="step", name="cross", error=dict(STORED_ERROR))
    assert entry.error_record == record
    assert Entry(seq=0, kind="step", name="cross").error_record is None
    attempt = Attempt(1, "failed", dict(STORED_ERROR))
    assert attempt.error_record == record


# ---------------------------------------------------------------------- compensation


def test_a_compensation_due_or_running_is_stored_as_its_status_alone() -> None:
    assert COMPENSATION_PENDING.to_json() == {"status": "pending"}
    assert COMPENSATION_RUNNING.to_json() == {"status": "running"}
    assert Compensation.from_json({"status": "pending"}) == COMPENSATION_PENDING
    assert not COMPENSATION_RUNNING.ended
    assert Compensation.from_json(None) is None


def test_an_ended_compensation_keeps_its_output_or_error_and_when_it_ended() -> None:
    done = Compensation(CompensationStatus.COMPLETED, "unbooked", None, "2030-01-01T00:00:00")
    assert done.to_json() == {
        "status": "completed",
        "output": "unbooked",
        "error": None,
        "completed_at": "2030-01-01T00:00:00",
    }
    assert Compensation.from_json(done.to_json()) == done and done.ended
    error = ErrorRecord.from_json(STORED_ERROR)
    failed = Compensation(CompensationStatus.FAILED, None, error, "2030-01-01T00:00:01")
    assert failed.to_json()["error"] == STORED_ERROR
    assert Compensation.from_json(failed.to_json()) == failed


def test_an_entry_stores_its_compensation_as_json() -> None:
    entry = Entry(seq=2, kind="step", name="pack")
    entry.set_compensation(COMPENSATION_PENDING)
    assert entry.compensation == {"status": "pending"}
    assert entry.compensation_state == COMPENSATION_PENDING
    entry.set_compensation(None)
    assert entry.compensation is None and entry.compensation_state is None


def test_an_unknown_compensation_status_is_refused() -> None:
    with pytest.raises(ValueError):
        Compensation.from_json({"status": "compensated"})
