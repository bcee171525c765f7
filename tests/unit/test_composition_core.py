"""Composition in memory: the WorkflowTester runs children (or stubs them), join(limit=)
keeps its cap on the virtual clock, continue-as-new and publish replay deterministically."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
from pydantic import BaseModel

import squidmesh as sm
from squidmesh.testing import WorkflowTester, raises, replay


class Box(BaseModel):
    size: int


@sm.step
def weigh(size: int) -> int:
    return size * 3


@sm.workflow(triggers=[sm.manual(payload=Box)])
def pack(box: Box) -> Generator[Any, Any, int]:
    yield sm.sleep(seconds=box.size)
    return (yield from weigh(box.size))


@sm.workflow
def shipment(payload: Any) -> Generator[Any, Any, dict[str, Any]]:
    weights = yield from sm.join(*[sm.child(pack, {"size": n}) for n in (1, 2, 3)], limit=2)
    yield sm.publish("weights", list(weights))
    label = yield from sm.start_child(pack, {"size": 9})
    return {"total": sum(weights), "label_run": str(label)}


def test_children_run_in_the_tester_on_its_clock() -> None:
    tester = WorkflowTester(shipment)
    run = tester.start()
    assert [str(w) for w in run.waiting_on] == ["child:pack", "child:pack"]
    assert [c.status for c in run.children] == ["running", "running"]
    assert all(c.parent is run for c in run.children)
    tester.advance(1)  # the first child ends; the third branch starts at t=1
    assert len(run.children) == 3
    tester.advance(3)  # t=4: the third (3 s from t=1) and the second are done
    assert run.status == "completed"
    assert run.result["total"] == 18
    assert run.published == {"weights": [3, 6, 9]}
    detached = run.children[-1]
    assert run.result["label_run"] == detached.id
    assert detached.status == "running"  # detached: the parent did not wait
    tester.advance(9)
    assert detached.result == 27


def test_children_can_be_stubbed_by_workflow() -> None:
    tester = WorkflowTester(shipment, children={pack: lambda box: box.size * 100})
    run = tester.start()
    assert run.status == "completed" and run.result["total"] == 600
    # stubs still validate the child's payload against the real trigger
    bad = WorkflowTester(shipment, children={"pack": 1})

    @sm.workflow
    def sloppy(payload: Any) -> Any:
        try:
            yield sm.child(pack, {"size": "big"})
        except sm.ChildFailed as exc:
            return exc.error_type
        return None

    assert WorkflowTester(sloppy, children={pack: 1}).start().result == (
        "squidmesh.errors.PayloadError"
    )
    assert bad.start().result["total"] == 3


def test_a_stub_that_raises_fails_the_child_and_throws_child_failed() -> None:
    tester = WorkflowTester(shipment, children={pack: raises(LookupError("no such box"))})
    run = tester.start()
    assert run.status == "failed"
    assert run.error is not None and run.error["type"] == "squidmesh.errors.ChildFailed"
    assert run.error["details"]["error"]["type"] == "builtins.LookupError"
    assert run.children[0].status == "failed"


@sm.workflow
def naps(payload: Any) -> Generator[Any, Any, int]:
    done = yield sm.join(*[sm.sleep(seconds=10) for _ in range(5)], limit=2)
    return len(done)


def test_join_limit_starts_each_branch_when_a_slot_frees() -> None:
    tester = WorkflowTester(naps)
    run = tester.start()
    timers = [e.wake_at for e in run.entries("sleep")]
    assert timers[:2] == ["2030-01-01T00:00:10+00:00"] * 2 and timers[2:] == [None] * 3
    tester.advance(10)
    timers = [e.wake_at for e in run.entries("sleep")]
    assert timers[2:4] == ["2030-01-01T00:00:20+00:00"] * 2 and timers[4] is None
    tester.advance(10)
    tester.advance(10)
    assert run.status == "completed" and run.result == 5
    assert tester.now.isoformat() == "2030-01-01T00:00:30+00:00"
    # the history replays as recorded (the releases follow from it)
    replay(naps, run.history)


def test_join_limit_must_be_a_positive_integer() -> None:
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(sm.DefinitionError, match="limit"):
            sm.join(weigh(1), limit=bad)  # type: ignore[arg-type]


@sm.workflow(triggers=[sm.manual(payload=Box)])
def countdown(box: Box) -> Generator[Any, Any, str]:
    yield sm.publish("left", box.size)
    yield sm.sleep(seconds=1)
    if box.size > 0:
        yield sm.continue_as_new({"size": box.size - 1})
    return "lift-off"


def test_continue_as_new_chains_runs_with_fresh_histories() -> None:
    tester = WorkflowTester(countdown)
    run = tester.start({"size": 2})
    tester.advance(5)
    chain = [run]
    while chain[-1].continued_as is not None:
        chain.append(chain[-1].continued_as)
    assert [r.status for r in chain] == ["completed"] * 3
    assert [r.payload for r in chain] == [{"size": 2}, {"size": 1}, {"size": 0}]
    assert [r.trace for r in chain] == [
        ["publish:left", "sleep", "continue_as_new"],
        ["publish:left", "sleep", "continue_as_new"],
        ["publish:left", "sleep"],
    ]
    assert chain[-1].result == "lift-off" and chain[0].result is None
    replay(countdown, chain[0].history)


def test_code_that_no_longer_continues_as_new_is_nondeterminism() -> None:
    tester = WorkflowTester(countdown)
    run = tester.start({"size": 1})
    tester.advance(1)

    @sm.workflow(name="countdown", triggers=[sm.manual(payload=Box)])
    def changed(box: Box) -> Any:
        yield sm.publish("left", box.size)
        yield sm.sleep(seconds=1)
        return "stopped early"

    with pytest.raises(sm.NondeterminismError) as caught:
        replay(changed, run.history)
    assert "continue_as_new" in caught.value.recorded


def test_a_bad_continue_as_new_payload_suspends_with_a_clear_error() -> None:
    @sm.workflow(triggers=[sm.manual(payload=Box)])
    def broken(box: Box) -> Any:
        yield sm.continue_as_new({"size": "huge"})

    run = WorkflowTester(broken).start({"size": 1})
    assert run.status == "suspended" and run.reason == "workflow_error"
    assert run.error is not None
    assert "sm.continue_as_new" in run.error["message"]
    assert "size" in run.error["message"]


def test_publish_is_recorded_once_and_replayed_not_repeated() -> None:
    tester = WorkflowTester(countdown)
    run = tester.start({"size": 0})
    (entry,) = run.entries("publish")
    assert (entry.name, entry.result, entry.status) == ("left", 0, "completed")

    @sm.workflow(name="countdown", triggers=[sm.manual(payload=Box)])
    def renamed(box: Box) -> Any:
        yield sm.publish("remaining", box.size)
        yield sm.sleep(seconds=1)
        return "lift-off"

    with pytest.raises(sm.NondeterminismError):
        replay(renamed, run.history)


def test_a_child_of_another_workflow_at_the_same_position_is_nondeterminism() -> None:
    tester = WorkflowTester(shipment)
    run = tester.start()

    @sm.workflow(name="shipment")
    def swapped(payload: Any) -> Any:
        yield sm.join(*[sm.child(countdown, {"size": n}) for n in (1, 2, 3)], limit=2)

    with pytest.raises(sm.NondeterminismError) as caught:
        replay(swapped, run.history)
    assert "child 'countdown'" in caught.value.expected
    assert "child 'pack'" in caught.value.recorded


def test_child_commands_check_their_arguments() -> None:
    with pytest.raises(sm.DefinitionError, match=r"needs an @sm\.workflow"):
        sm.child(weigh)  # type: ignore[call-overload]
    with pytest.raises(sm.DefinitionError, match="key="):
        sm.child(pack, {"size": 1}, key="")
    with pytest.raises(sm.DefinitionError, match="trigger="):
        sm.start_child(pack, {"size": 1}, trigger=3)  # type: ignore[arg-type]
    with pytest.raises(sm.DefinitionError, match=r"sm\.publish"):
        sm.publish("", 1)
