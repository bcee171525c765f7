"""Payload contracts and JSON encoding/decoding at the storage boundary."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from typing import Any

import pydantic
import pytest

import squidmesh as sm
from squidmesh.core import contracts


class Errand(pydantic.BaseModel):
    """Does not forbid extra fields itself: squidmesh must still refuse them."""

    ring_id: str
    bearer: str
    snacks: int = 11


class StrictErrand(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    ring_id: str
    count: int


class Report(pydantic.BaseModel):
    summary: str
    at: dt.datetime


@dataclasses.dataclass
class Point:
    x: int
    y: int


_factory_calls: list[int] = []


def _started_on() -> dt.date:
    _factory_calls.append(1)
    return dt.date(2030, 1, 2)


class Dated(pydantic.BaseModel):
    ring_id: str
    bearer: str = "Frodo"
    started_on: dt.date = pydantic.Field(default_factory=_started_on)


@sm.workflow(
    triggers=[
        sm.manual("errand", payload=Errand),
        sm.manual("strict", payload=StrictErrand),
        sm.manual("dated", payload=Dated),
        sm.manual("empty"),
    ]
)
def errand_flow(payload: Any):
    yield sm.log("hi")


def _payload_error(payload: Any, trigger: str) -> sm.PayloadError:
    with pytest.raises(sm.PayloadError) as info:
        errand_flow.validate_payload(payload, trigger)
    return info.value


# --------------------------------------------------------------------------- payloads


def test_valid_payload_is_stored_with_defaults_resolved() -> None:
    stored = errand_flow.validate_payload({"ring_id": "one", "bearer": "Sam"}, "errand")
    assert stored == {"ring_id": "one", "bearer": "Sam", "snacks": 11}


def test_missing_fields_in_declaration_order() -> None:
    error = _payload_error({"snacks": 3}, "errand")
    assert error.missing_fields == ["ring_id", "bearer"]
    assert error.unknown_fields == []
    assert error.invalid_types == {}
    assert "missing ring_id, bearer" in str(error)
    assert "errand_flow" in str(error)


def test_unknown_fields_sorted_even_when_model_allows_extras() -> None:
    error = _payload_error({"ring_id": "one", "bearer": "Sam", "zebra": 1, "alpha": 2}, "errand")
    assert error.unknown_fields == ["alpha", "zebra"]
    assert error.missing_fields == []
    assert error.invalid_types == {}


def test_unknown_fields_when_model_forbids_extras() -> None:
    error = _payload_error({"ring_id": "one", "count": 1, "zebra": 1, "alpha": 2}, "strict")
    assert error.unknown_fields == ["alpha", "zebra"]


def test_invalid_types_map_field_to_expected_type_label() -> None:
    error = _payload_error({"ring_id": "one", "bearer": "Sam", "snacks": "many"}, "errand")
    assert error.invalid_types == {"snacks": "int"}
    assert error.missing_fields == []
    assert "snacks (expected int: Input should be a valid integer" in str(error)
    assert error.reasons["snacks"].startswith("Input should be a valid integer")


class Signup(pydantic.BaseModel):
    email: str = pydantic.Field(min_length=3)
    age: int = pydantic.Field(ge=0)


@sm.workflow(triggers=[sm.manual("signup", payload=Signup)])
def signup_flow(payload: Signup):
    yield sm.log("hi")


def test_a_failed_constraint_keeps_pydantic_reason() -> None:
    # The value has the right type: "expected str" alone would be wrong advice.
    with pytest.raises(sm.PayloadError) as info:
        signup_flow.validate_payload({"email": "a", "age": -1}, "signup")
    error = info.value
    assert error.invalid_types == {"email": "str", "age": "int"}
    assert error.reasons == {
        "email": "String should have at least 3 characters",
        "age": "Input should be greater than or equal to 0",
    }
    assert "email (expected str: String should have at least 3 characters)" in str(error)
    assert "age (expected int: Input should be greater than or equal to 0)" in str(error)


def test_unknown_fields_suggest_the_declared_field_they_resemble() -> None:
    error = _payload_error({"ringid": "one", "bearer": "Sam", "zebra": 1}, "errand")
    assert error.unknown_fields == ["ringid", "zebra"]
    assert error.suggestions == {"ringid": "ring_id"}
    assert "unknown ringid (did you mean ring_id?), zebra" in str(error)
    assert error.missing_fields == ["ring_id"]
    strict = _payload_error({"ring_id": "one", "cuont": 1}, "strict")
    assert strict.suggestions == {"cuont": "count"}


def test_several_problems_are_reported_together() -> None:
    error = _payload_error({"bearer": 5, "snacks": "x", "zz": 1, "aa": 2}, "errand")
    assert error.missing_fields == ["ring_id"]
    assert error.unknown_fields == ["aa", "zz"]
    assert error.invalid_types == {"bearer": "str", "snacks": "int"}


def test_several_problems_with_a_model_that_forbids_extras() -> None:
    error = _payload_error({"count": "x", "zz": 1}, "strict")
    assert error.missing_fields == ["ring_id"]
    assert error.unknown_fields == ["zz"]
    assert error.invalid_types == {"count": "int"}


@pytest.mark.parametrize("payload", [["ring_id"], "ring_id=one", 42])
def test_non_mapping_payload_is_refused(payload: Any) -> None:
    error = _payload_error(payload, "errand")
    assert "mapping" in str(error)


def test_no_model_means_empty_payload() -> None:
    assert errand_flow.validate_payload(None, "empty") == {}
    assert errand_flow.validate_payload({}, "empty") == {}
    assert errand_flow.load_payload({}, "empty") is None
    error = _payload_error({"ring_id": "one"}, "empty")
    assert error.unknown_fields == ["ring_id"]


def test_a_model_instance_is_accepted_as_payload() -> None:
    stored = errand_flow.validate_payload(Errand(ring_id="one", bearer="Sam"), "errand")
    assert stored == {"ring_id": "one", "bearer": "Sam", "snacks": 11}


def test_default_factory_runs_once_at_validation_and_stored_form_is_json() -> None:
    _factory_calls.clear()

    stored = errand_flow.validate_payload({"ring_id": "one"}, "dated")

    assert len(_factory_calls) == 1
    assert stored == {"ring_id": "one", "bearer": "Frodo", "started_on": "2030-01-02"}
    assert json.loads(json.dumps(stored)) == stored

    loaded = errand_flow.load_payload(stored, "dated")

    assert len(_factory_calls) == 1, "loading a stored payload must not re-run default factories"
    assert loaded == Dated(ring_id="one", bearer="Frodo", started_on=dt.date(2030, 1, 2))


# --------------------------------------------------------------------------- encode


def test_encode_models_dataclasses_and_scalars() -> None:
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")

    encoded = contracts.encode(
        {
            "report": Report(summary="ok", at=when),
            "point": Point(1, 2),
            "when": when,
            "day": dt.date(2030, 1, 2),
            "id": ident,
            "items": (1, "two", None, True, 2.5),
        }
    )

    assert encoded == {
        "report": {"summary": "ok", "at": "2030-01-02T03:04:05Z"},
        "point": {"x": 1, "y": 2},
        "when": "2030-01-02T03:04:05Z",
        "day": "2030-01-02",
        "id": "12345678-1234-5678-1234-567812345678",
        "items": [1, "two", None, True, 2.5],
    }
    assert json.loads(json.dumps(encoded)) == encoded


def test_encode_unencodable_object_names_its_type() -> None:
    with pytest.raises(contracts.EncodeError, match=r"builtins\.object"):
        contracts.encode({"ok": 1, "nested": [{"bad": object()}]})


def test_encode_error_names_user_classes_and_is_a_type_error() -> None:
    class Lock:
        pass

    with pytest.raises(contracts.EncodeError, match=r"Lock") as info:
        contracts.encode(Lock(), what="step result")
    assert isinstance(info.value, TypeError)
    assert "step result" in str(info.value)


# --------------------------------------------------------------------------- decode


def test_decode_rebuilds_a_model() -> None:
    report = contracts.decode({"summary": "ok", "at": "2030-01-02T03:04:05Z"}, Report)
    assert isinstance(report, Report)
    assert report == Report(
        summary="ok", at=dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    )


def test_decode_rebuilds_a_list_of_models() -> None:
    data = [{"x": 1, "y": 2}, {"x": 3, "y": 4}]
    assert contracts.decode(data, list[Point]) == [Point(1, 2), Point(3, 4)]


def test_decode_roundtrips_encode() -> None:
    report = Report(summary="ok", at=dt.datetime(2030, 1, 2, tzinfo=dt.timezone.utc))
    assert contracts.decode(contracts.encode(report), Report) == report


def test_decode_any_returns_data_unchanged() -> None:
    data = {"summary": "ok", "nested": [1, 2]}
    assert contracts.decode(data, Any) is data


def test_decode_refuses_data_that_does_not_fit() -> None:
    with pytest.raises(pydantic.ValidationError):
        contracts.decode({"summary": "ok"}, Report)


def test_nan_and_infinity_are_refused_with_a_clear_error() -> None:
    from squidmesh.core import contracts

    for bad in (float("nan"), {"ratio": float("inf")}, [1.0, float("-inf")]):
        data = contracts.encode(bad)
        with pytest.raises(sm.UnstorableValueError, match="NaN or Infinity"):
            contracts.json_text(data, what="the result of step ratio")


def test_a_step_returning_nan_fails_once_without_retrying() -> None:
    from squidmesh.testing import WorkflowTester

    @sm.step(retry=sm.Retry(max_attempts=3))
    def ratio() -> float:
        return float("nan")

    @sm.workflow
    def measuring(payload=None):
        return (yield ratio())

    tester = WorkflowTester(measuring)
    run = tester.start()
    assert run.status == "failed"
    (attempt,) = run.step_attempts("ratio")
    assert attempt.error is not None and "NaN or Infinity" in attempt.error["message"]
    assert attempt.error["retryable"] is False
