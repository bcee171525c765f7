"""Run histories: ordering rules and the JSON format golden-history replay depends on."""

from __future__ import annotations

import json

import pydantic
import pytest

import squidmesh as sm
from squidmesh.core.history import HISTORY_FORMAT
from squidmesh.testing import WorkflowTester, replay


def _history() -> sm.History:
    return sm.History(
        [
            sm.Entry(seq=0, kind="step", name="pack", input={"n": 3}, meta={"ref": "m:pack"}),
            sm.Entry(seq=1, kind="sleep", name="sleep", input={"seconds": 5.0}),
            sm.Entry(seq=2, kind="approval", name="council_vote"),
        ],
        run_id="6f1c1f0e-0000-4000-8000-000000000001",
        workflow="ring_errand",
        trigger="leave_shire",
        payload={"ring_id": "one", "started_on": "2030-01-02"},
    )


def _json_roundtrip(history: sm.History) -> sm.History:
    return sm.History.from_json(json.loads(json.dumps(history.to_json())))


# --------------------------------------------------------------------------- JSON


def test_json_roundtrip_of_pending_history() -> None:
    history = _history()
    again = _json_roundtrip(history)
    assert again == history
    assert again.to_json() == history.to_json()
    assert again.to_json()["format"] == HISTORY_FORMAT


def test_json_roundtrip_keeps_run_metadata_outcome_and_entries() -> None:
    history = _history()
    history.resolve(0, "completed", result={"count": 3}, at="2030-01-01T00:00:00+00:00")
    history.resolve(
        1, "failed", error={"type": "builtins.ValueError", "message": "no"}, at="2030-01-01"
    )
    history.outcome = "completed"
    history.result = {"summary": "there and back again"}

    again = _json_roundtrip(history)

    assert again == history
    assert again.run_id == history.run_id
    assert (again.workflow, again.trigger) == ("ring_errand", "leave_shire")
    assert again.payload == {"ring_id": "one", "started_on": "2030-01-02"}
    assert again.outcome == "completed"
    assert again.result == {"summary": "there and back again"}
    assert [e.to_json() for e in again] == [e.to_json() for e in history]
    assert again[0].result == {"count": 3}
    assert again[1].error == {"type": "builtins.ValueError", "message": "no"}
    assert again[0].meta == {"ref": "m:pack"}


def test_histories_that_differ_are_not_equal() -> None:
    history = _history()
    other = _history()
    other.resolve(0, "completed", result=1)
    assert history != other


def test_order_continues_after_a_roundtrip() -> None:
    history = _history()
    history.resolve(1, "completed")
    again = _json_roundtrip(history)
    assert again.resolve(0, "completed").order == 1


# --------------------------------------------------------------------------- resolve


def test_resolve_assigns_increasing_order_in_resolution_order() -> None:
    history = _history()

    history.resolve(2, "completed", result={"approved": True})
    history.resolve(0, "failed", error={"type": "builtins.OSError"})
    history.resolve(1, "completed")

    assert [history[seq].order for seq in (2, 0, 1)] == [0, 1, 2]
    assert history[2].resolved and history[0].resolved
    assert history[0].status == "failed"


def test_resolving_twice_raises() -> None:
    history = _history()
    history.resolve(0, "completed", result=1)
    with pytest.raises(ValueError, match="already completed"):
        history.resolve(0, "failed")
    assert history[0].status == "completed"
    assert history[0].result == 1


def test_resolving_a_cancelled_entry_raises() -> None:
    history = _history()
    history[1].status = "cancelled"
    with pytest.raises(ValueError, match="already cancelled"):
        history.resolve(1, "completed")


# --------------------------------------------------------------------------- seq


def test_append_requires_the_next_seq() -> None:
    history = _history()
    with pytest.raises(ValueError, match="seq 5"):
        history.append(sm.Entry(seq=5, kind="log", name="log"))
    assert len(history) == 3
    appended = history.append(sm.Entry(seq=3, kind="log", name="log"))
    assert history[3] is appended


def test_construction_requires_seq_equal_to_position() -> None:
    with pytest.raises(ValueError, match="position 1 has seq 2"):
        sm.History(
            [sm.Entry(seq=0, kind="log", name="log"), sm.Entry(seq=2, kind="log", name="log")]
        )


def test_from_json_requires_seq_equal_to_position() -> None:
    data = _history().to_json()
    del data["entries"][0]
    with pytest.raises(ValueError, match="seq"):
        sm.History.from_json(data)


# --------------------------------------------------------------------------- format guards


def test_unknown_format_version_is_refused() -> None:
    data = _history().to_json()
    data["format"] = HISTORY_FORMAT + 1
    with pytest.raises(ValueError, match=rf"unsupported history format {HISTORY_FORMAT + 1}"):
        sm.History.from_json(data)


def test_unknown_entry_status_is_refused() -> None:
    data = _history().to_json()
    data["entries"][1]["status"] = "exploded"
    with pytest.raises(ValueError, match=r"entry 1 has unknown status 'exploded'"):
        sm.History.from_json(data)


# --------------------------------------------------------------------------- recorded runs


class Provisions(pydantic.BaseModel):
    count: int


class Errand(pydantic.BaseModel):
    bearer: str


@sm.step
def pack(n: int) -> Provisions:
    return Provisions(count=n)


@sm.step
def cross(provisions: Provisions) -> str:
    return f"crossed with {provisions.count}"


@sm.workflow(triggers=[sm.manual("leave_shire", payload=Errand)])
def ring_errand(payload: Errand):
    provisions = yield pack(3)
    yield sm.log("leaving", bearer=payload.bearer)
    yield sm.sleep(seconds=5)
    report, spare = yield sm.join(cross(provisions), pack(1))
    return f"{report} and {spare.count} spare"


@sm.workflow(name="ring_errand", triggers=[sm.manual("leave_shire", payload=Errand)])
def ring_errand_changed(payload: Errand):
    provisions = yield pack(3)
    yield sm.sleep(seconds=5)  # the log was removed: seq 1 no longer matches
    return provisions.count


def _recorded_run() -> sm.History:
    tester = WorkflowTester(ring_errand)
    run = tester.start({"bearer": "Frodo"})
    tester.advance(5)
    assert run.status == sm.RunStatus.COMPLETED
    assert run.result == "crossed with 3 and 1 spare"
    return run.history


def test_recorded_history_roundtrips_and_still_replays() -> None:
    history = _recorded_run()
    data = json.loads(json.dumps(history.to_json()))

    again = sm.History.from_json(data)

    assert again == history
    assert (again.workflow, again.trigger, again.payload) == (
        "ring_errand",
        "leave_shire",
        {"bearer": "Frodo"},
    )
    assert again.outcome == "completed"
    assert again.result == "crossed with 3 and 1 spare"
    assert replay(ring_errand, again).outcome == "completed"
    assert replay(ring_errand, data).outcome == "completed"


def test_recorded_history_detects_changed_code_after_roundtrip() -> None:
    data = json.loads(json.dumps(_recorded_run().to_json()))
    with pytest.raises(sm.NondeterminismError) as info:
        replay(ring_errand_changed, data)
    assert info.value.seq == 1
