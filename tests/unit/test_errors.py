"""The public exception tree and what each error carries."""

from __future__ import annotations

import pickle

import pytest

import squidmesh as sm
from squidmesh.core.failures import error_info, exception_for
from squidmesh.core.history import Entry

# SPEC section 4: every error the runtime API raises.
SPEC_ERRORS = [
    "PayloadError",
    "UnknownWorkflowError",
    "UnknownTriggerError",
    "RunNotFoundError",
    "InvalidTransitionError",
    "UnsafeReplayError",
    "ReviewError",
    "DispatchError",
    "DefinitionError",
    "NondeterminismError",
    "StorageError",
    "SchemaOutOfDateError",
]


@pytest.mark.parametrize("name", SPEC_ERRORS)
def test_spec_errors_are_exported_and_share_a_base(name: str) -> None:
    assert name in sm.__all__
    cls = getattr(sm, name)
    assert issubclass(cls, sm.SquidmeshError)
    assert issubclass(cls, Exception)


@pytest.mark.parametrize("name", ["StepFailed", "TimedOut", "Fail"])
def test_workflow_signals_are_squidmesh_errors(name: str) -> None:
    assert issubclass(getattr(sm, name), sm.SquidmeshError)


def test_run_cancelled_escapes_except_exception() -> None:
    assert issubclass(sm.RunCancelled, BaseException)
    assert not issubclass(sm.RunCancelled, Exception)

    def swallow_everything() -> str:
        try:
            raise sm.RunCancelled()
        except Exception:
            return "swallowed"

    with pytest.raises(sm.RunCancelled):
        swallow_everything()


def test_schema_out_of_date_is_a_storage_error() -> None:
    assert issubclass(sm.SchemaOutOfDateError, sm.StorageError)
    assert not issubclass(sm.StorageError, sm.SchemaOutOfDateError)
    with pytest.raises(sm.StorageError):
        raise sm.SchemaOutOfDateError()


@pytest.mark.parametrize(
    "cls",
    [
        sm.DefinitionError,
        sm.UnknownWorkflowError,
        sm.UnknownTriggerError,
        sm.RunNotFoundError,
        sm.ReviewError,
        sm.DispatchError,
        sm.StorageError,
        sm.SchemaOutOfDateError,
    ],
)
def test_default_message_is_the_docstring(cls: type[sm.SquidmeshError]) -> None:
    error = cls()
    assert cls.__doc__
    assert str(error) == cls.__doc__.strip()
    assert error.message == str(error)


def test_explicit_message_wins_over_docstring() -> None:
    error = sm.RunNotFoundError("no run 42")
    assert str(error) == error.message == "no run 42"


def test_schema_message_tells_how_to_fix_it() -> None:
    assert "squidmesh migrate" in str(sm.SchemaOutOfDateError())


def test_payload_error_attributes_and_message() -> None:
    error = sm.PayloadError(
        missing_fields=["ring_id", "bearer"],
        unknown_fields=["zebra", "alpha"],
        invalid_types={"snacks": "int"},
    )

    assert error.missing_fields == ["ring_id", "bearer"]
    assert error.unknown_fields == ["alpha", "zebra"]
    assert error.invalid_types == {"snacks": "int"}
    assert str(error) == (
        "invalid payload: missing ring_id, bearer; unknown alpha, zebra; "
        "invalid snacks (expected int)"
    )


def test_payload_error_message_with_reasons_and_suggestions() -> None:
    error = sm.PayloadError(
        unknown_fields=["rign_id"],
        invalid_types={"email": "str"},
        reasons={"email": "String should have at least 3 characters"},
        suggestions={"rign_id": "ring_id"},
    )
    assert str(error) == (
        "invalid payload: unknown rign_id (did you mean ring_id?); "
        "invalid email (expected str: String should have at least 3 characters)"
    )


def test_did_you_mean() -> None:
    from squidmesh.errors import did_you_mean

    assert did_you_mean("ring_erand", ["doomed", "ring_errand"]) == "ring_errand"
    assert did_you_mean("RING_ERRAND", ["ring_errand"]) == "ring_errand"
    assert did_you_mean("frobnicate", ["ring_errand", "doomed"]) is None
    assert did_you_mean("x", []) is None


def test_unknown_workflow_error_carries_names_and_python_advice() -> None:
    error = sm.UnknownWorkflowError(workflow="ring_erand", registered=["ring_errand", "doomed"])
    assert (error.workflow, error.registered, error.suggestion) == (
        "ring_erand",
        ("doomed", "ring_errand"),
        "ring_errand",
    )
    assert str(error) == (
        "workflow 'ring_erand' is not registered with this Mesh (registered: doomed, "
        "ring_errand); did you mean 'ring_errand'? If not, pass it in Mesh(workflows=[...])"
    )
    bare = sm.UnknownWorkflowError(workflow="x")
    assert "(registered: none); pass it in Mesh(workflows=[...])" in str(bare)


def test_unknown_trigger_error_suggests_a_trigger() -> None:
    error = sm.UnknownTriggerError(workflow="w", trigger="nightli", known=["manual", "nightly"])
    assert error.suggestion == "nightly"
    assert str(error) == (
        "workflow w has no trigger 'nightli' (known: manual, nightly); did you mean 'nightly'?"
    )


def test_payload_error_defaults_to_empty_collections() -> None:
    error = sm.PayloadError("bad payload")
    assert str(error) == "bad payload"
    assert (error.missing_fields, error.unknown_fields, error.invalid_types) == ([], [], {})


def test_invalid_transition_error() -> None:
    error = sm.InvalidTransitionError(status="completed", action="cancel_run")
    assert (error.status, error.action) == ("completed", "cancel_run")
    assert "cancel_run" in str(error)
    assert "completed" in str(error)


def test_unsafe_replay_error_names_steps() -> None:
    steps = ["charge_card", "send_email"]
    error = sm.UnsafeReplayError(steps=steps)
    steps.append("later")
    assert error.steps == ["charge_card", "send_email"]
    assert "charge_card, send_email" in str(error)
    assert "allow_irreversible=True" in str(error)


def test_nondeterminism_error_names_both_sides() -> None:
    error = sm.NondeterminismError(
        run_id="run-1",
        seq=4,
        expected="step 'cross' at flows.py:12",
        recorded="step 'walk_home' at flows.py:15",
    )
    message = str(error)
    assert (error.run_id, error.seq) == ("run-1", 4)
    assert "run-1" in message
    assert "seq 4" in message
    assert "step 'cross' at flows.py:12" in message
    assert "step 'walk_home' at flows.py:15" in message


def test_nondeterminism_error_survives_pickle() -> None:
    # pickle is used only here, to prove the exception can cross a process boundary.
    error = sm.NondeterminismError(
        "custom", run_id="run-1", seq=4, expected="step 'a'", recorded="step 'b'"
    )
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is sm.NondeterminismError
    assert (again.run_id, again.seq, again.expected, again.recorded) == (
        "run-1",
        4,
        "step 'a'",
        "step 'b'",
    )
    assert str(again) == "custom"

    default = sm.NondeterminismError(seq=1, expected="x", recorded="y")
    assert str(pickle.loads(pickle.dumps(default))) == str(default)


def _failed_step(exc: BaseException) -> sm.StepFailed:
    entry = Entry(seq=3, kind="step", name="cross", status="failed", attempts=2)
    entry.error = error_info(exc).to_json()
    failure = exception_for(entry)
    assert isinstance(failure, sm.StepFailed)
    return failure


def test_step_failed_is_a_matches_the_recorded_class_and_its_bases() -> None:
    failure = _failed_step(ConnectionRefusedError("refused"))

    assert failure.is_a(ConnectionRefusedError)
    assert failure.is_a(ConnectionError)
    assert failure.is_a(OSError)
    assert failure.is_a(Exception)
    assert not failure.is_a(ValueError)
    assert not failure.is_a(TimeoutError)
    assert failure.type_name == "ConnectionRefusedError"
    assert (failure.step, failure.seq, failure.attempts) == ("cross", 3, 2)
    assert "refused" in str(failure)


def test_step_failed_is_a_is_false_for_a_base_class_record() -> None:
    failure = _failed_step(OSError("disk"))
    assert failure.is_a(OSError)
    assert not failure.is_a(ConnectionError)


def test_step_failed_record_from_non_retryable_is_not_retryable() -> None:
    failure = _failed_step(sm.NonRetryable("card declined", details={"code": 51}))
    assert failure.retryable is False
    assert failure.details == {"code": 51}
    assert failure.is_a(sm.NonRetryable)


def test_step_side_signals() -> None:
    later = sm.RetryLater(after=30)
    assert later.after == 30.0
    assert isinstance(later, Exception)
    assert not isinstance(later, sm.SquidmeshError)
    assert sm.Fail("nope", details={"why": 1}).details == {"why": 1}
