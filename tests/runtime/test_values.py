from __future__ import annotations

# Values at the storage boundary, on every store alike (SQLite refuses what PostgreSQL
# refuses):
# - what a step returned is what every replay sees, byte for byte in JSON terms
#   (1.0 stays a float, 2.6e16 stays a float, integers beyond 64 bits stay integers);
# - values a database refuses (NUL characters, lone surrogates, NaN/Infinity, integers of
#   thousands of digits) get a clear, non-retryable error naming the run, the step and
#   the path inside the value, instead of a job redelivered forever or a false cause;
# - max_value_bytes holds for every stored value, not only payloads and step results.
import json
from typing import Any

import pytest
from pydantic import BaseModel

import squidmesh as sm
from tests.runtime.support import MeshFactory, fails_unchanged

# --------------------------------------------------------------------------- numbers

EXACT: list[Any] = [
    1.0,
    2.6e16,
    123456789012345678901234567890,
    -0.0,
    1e-300,
    {"one": 1.0, "big": 2.6e16, "huge": -(2**70), "nested": [0.5, 3, 1e22]},
]


@sm.step
def give(index: int) -> Any:
    return EXACT[index]


def _shape(value: Any) -> Any:
    """What a value looks like, types included (1 and 1.0 differ, so do 0.0 and -0.0)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return [type(value).__name__, repr(value)]


@sm.workflow
def collector() -> Any:
    seen = []
    for index in range(len(EXACT)):
        seen.append((yield give(index)))
    decision = yield sm.approval("look")
    # Computed after the approval: on a fresh Mesh that is after a replay from storage.
    return {"approved": decision.approved, "seen": [_shape(v) for v in seen]}


def test_what_a_step_returned_is_what_every_replay_sees(mesh_factory: MeshFactory) -> None:
    expected = [_shape(v) for v in EXACT]
    live = mesh_factory([collector])
    run = live.start_run(collector)
    assert live.inspect_run(run.id).status == "paused"
    live.approve_run(run.id, actor="ann")
    assert live.inspect_run(run.id).result == {"approved": True, "seen": expected}

    # A second run, finished by another Mesh with an empty cache: its generator is
    # rebuilt by replaying the history read back from the store.
    other = live.start_run(collector)
    fresh = mesh_factory([collector])
    fresh.approve_run(other.id, actor="ann")
    assert fresh.inspect_run(other.id).result == {"approved": True, "seen": expected}
    history = fresh.export_history(other.id)
    recorded = [e["result"] for e in history["entries"] if e["kind"] == "step"]
    assert json.dumps(recorded) == json.dumps(EXACT)


# --------------------------------------------------------------------------- refusals

NUL = "bad\x00byte"
SURROGATE = "half \ud800 a pair"


@sm.step
def echo(value: Any) -> Any:
    return value


@sm.step
def returns(kind: str) -> Any:
    return {
        "nul": {"items": [{"name": NUL}]},
        "nan": {"ratio": float("nan")},
        "surrogate": [SURROGATE],
        "huge": 10**5000,
    }[kind]


@sm.step
def raises_nul() -> None:
    raise RuntimeError(f"provider said {NUL}")


class Payload(BaseModel):
    kind: str = "plain"


@sm.workflow(triggers=[sm.manual(payload=Payload)])
def calls_with(payload: Payload) -> Any:
    argument = {"nul": NUL, "nan": float("nan"), "surrogate": SURROGATE}[payload.kind]
    return (yield echo({"deep": [argument]}))


@sm.workflow(triggers=[sm.manual(payload=Payload)])
def gets_back(payload: Payload) -> Any:
    return (yield returns(payload.kind))


@sm.workflow
def fails_with_nul() -> Any:
    try:
        yield raises_nul()
    except sm.StepFailed as exc:
        return exc.error_message


@sm.workflow
def logs_nul() -> Any:
    yield sm.log(f"hello {NUL}")
    return "logged"


@sm.workflow
def ends_with_nul() -> Any:
    yield echo(1)
    return {"final": NUL}


@sm.workflow
def waits() -> Any:
    decision = yield sm.approval("sign")
    data = yield sm.pause("hold")
    event = yield sm.wait_for_event("parcel")
    return [decision.approved, data, event]


@pytest.mark.parametrize(
    ("kind", "path"),
    [("nul", "$.value.deep[0]"), ("nan", "$.value.deep[0]"), ("surrogate", "$.value.deep[0]")],
)
def test_a_step_argument_that_cannot_be_stored_suspends_the_run_clearly(
    mesh_factory: MeshFactory, kind: str, path: str
) -> None:
    mesh = mesh_factory([calls_with])
    run = mesh.start_run(calls_with, {"kind": kind})
    why = mesh.explain_run(run.id)
    assert (why.status, why.reason) == ("suspended", "workflow_error")
    message = why.details["error"]["message"]
    assert f"run {run.id}" in message and "step echo" in message and path in message
    assert mesh.inspect_run(run.id, include_history=True).step_runs == ()


@pytest.mark.parametrize(
    ("kind", "path", "problem"),
    [
        ("nul", "$.items[0].name", "NUL character"),
        ("nan", "$.ratio", "NaN or Infinity"),
        ("surrogate", "$[0]", "lone surrogate"),
        ("huge", "the value", "more than 4300 digits"),
    ],
)
def test_a_step_result_that_cannot_be_stored_fails_the_step_once(
    mesh_factory: MeshFactory, kind: str, path: str, problem: str
) -> None:
    mesh = mesh_factory([gets_back])
    run = mesh.start_run(gets_back, {"kind": kind})
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status == "failed"
    assert done.error is not None and done.error["type"] == "squidmesh.errors.UnstorableValueError"
    message = done.error["message"]
    assert f"run {run.id}" in message and "step returns" in message
    assert path in message and problem in message
    assert done.step_runs is not None
    assert [a.status for a in done.step_runs[0].attempts] == ["failed"]  # never retried


def test_an_error_message_with_a_nul_is_recorded_readably(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([fails_with_nul])
    run = mesh.start_run(fails_with_nul)
    done = mesh.inspect_run(run.id)
    assert done.status == "completed"
    assert done.result == "provider said bad\ufffdbyte"


@pytest.mark.parametrize(
    ("workflow", "names"),
    [(logs_nul, "sm.log at"), (ends_with_nul, "the result of workflow ends_with_nul")],
)
def test_logs_and_results_that_cannot_be_stored_suspend_the_run(
    mesh_factory: MeshFactory, workflow: sm.WorkflowDefinition, names: str
) -> None:
    mesh = mesh_factory([workflow])
    run = mesh.start_run(workflow)
    why = mesh.explain_run(run.id)
    assert (why.status, why.reason) == ("suspended", "workflow_error")
    message = why.details["error"]["message"]
    assert names in message and f"run {run.id}" in message and "NUL character" in message


def test_operator_values_that_cannot_be_stored_change_nothing(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([waits])
    run = mesh.start_run(waits)
    for call in (
        lambda: mesh.approve_run(run.id, actor=NUL),
        lambda: mesh.approve_run(run.id, actor="ann", comment=SURROGATE),
        lambda: mesh.reject_run(run.id, actor="ann", metadata={"why": NUL}),
        lambda: mesh.send_event(run.id, "parcel", {"x": float("inf")}),
        lambda: mesh.send_event(run.id, NUL),
        lambda: mesh.cancel_run(run.id, reason=NUL),
    ):
        error = fails_unchanged(mesh_factory, sm.UnstorableValueError, call)
        assert isinstance(error, sm.SquidmeshError) and isinstance(error, ValueError)
    mesh.approve_run(run.id, actor="ann")
    fails_unchanged(
        mesh_factory,
        sm.UnstorableValueError,
        lambda: mesh.unblock_run(run.id, data={"rows": [SURROGATE]}),
    )


class Measured(BaseModel):
    ratio: float


@sm.workflow(triggers=[sm.manual(payload=Measured)])
def measured(payload: Measured) -> Any:
    return (yield echo(payload.ratio))


def test_a_nan_payload_is_refused_not_stored_as_null(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([measured])
    mesh.migrate()
    error = fails_unchanged(
        mesh_factory, sm.PayloadError, mesh.start_run, measured, {"ratio": float("nan")}
    )
    assert "ratio" in str(error) and "NaN" in str(error)


# --------------------------------------------------------------------------- size limit


@sm.workflow
def big_argument() -> Any:
    return (yield echo("x" * 5000))


@sm.workflow
def big_log() -> Any:
    yield sm.log("x" * 5000)
    return "logged"


@sm.workflow
def big_result() -> Any:
    yield echo(1)
    return "x" * 5000


@pytest.mark.parametrize("workflow", [big_argument, big_log, big_result])
def test_every_value_workflow_code_records_obeys_the_limit(
    mesh_factory: MeshFactory, workflow: sm.WorkflowDefinition
) -> None:
    mesh = mesh_factory([workflow], max_value_bytes=1000)
    run = mesh.start_run(workflow)
    why = mesh.explain_run(run.id)
    assert (why.status, why.reason) == ("suspended", "workflow_error")
    assert "bytes of JSON; this Mesh stores at most 1,000" in why.details["error"]["message"]


def test_operator_values_obey_the_limit(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([waits], max_value_bytes=1000)
    run = mesh.start_run(waits)
    big = "x" * 5000
    for call in (
        lambda: mesh.approve_run(run.id, actor=big),
        lambda: mesh.approve_run(run.id, actor="ann", comment=big),
        lambda: mesh.approve_run(run.id, actor="ann", metadata={"note": big}),
        lambda: mesh.cancel_run(run.id, actor=big),
        lambda: mesh.send_event(run.id, "parcel", big),
    ):
        fails_unchanged(mesh_factory, sm.ValueTooLargeError, call)
