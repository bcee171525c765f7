"""``sm.patched``: changing workflow code safely while runs are in flight.

``patched(id)`` is True for a run that reaches the call on new code (a marker is
recorded) and False for a run whose history was recorded before the change (the code
takes the old path). Once every old run has drained, the ``patched`` call can be removed:
recorded markers are skipped on replay.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from datetime import datetime
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.core import state
from squidmesh.core.history import History
from squidmesh.core.replay import Activation, Interpreter
from squidmesh.testing import DEFAULT_START, WorkflowTester, replay

Gen = Generator[Any, Any, Any]


@sm.step
def inspect_gear() -> str:
    return "gear ok"


@sm.step
def pack(snacks: int) -> str:
    return f"{snacks} lembas"


@sm.step
def walk() -> str:
    return "walked"


@sm.step
def ride() -> str:
    return "rode"


@sm.step
def send_receipt() -> str:
    return "receipt sent"


# --------------------------------------------------------------------------- versions


@sm.workflow(name="errand")
def errand_v1() -> Gen:
    yield pack(1)
    yield sm.approval("council")
    yield walk()
    return "old"


@sm.workflow(name="errand")
def errand_v2() -> Gen:
    if (yield sm.patched("inspect-gear")):
        yield inspect_gear()
    yield pack(1)
    yield sm.approval("council")
    if (yield sm.patched("new-road")):
        yield ride()
        return "new"
    yield walk()
    return "old"


@sm.workflow(name="errand")
def errand_v2_tail() -> Gen:
    yield pack(1)
    yield sm.approval("council")
    yield walk()
    if (yield sm.patched("receipt")):
        yield send_receipt()
        return "old+receipt"
    return "old"


@sm.workflow(name="errand")
def errand_v3() -> Gen:
    # Every v1 run has drained: the patches are gone and the new path is unconditional.
    yield inspect_gear()
    yield pack(1)
    yield sm.approval("council")
    yield ride()
    return "new"


def drive(workflow: sm.WorkflowDefinition, history: History, now: datetime) -> Activation:
    """A minimal engine where every activation is a cold resume by a fresh interpreter."""
    while True:
        interp = Interpreter(
            workflow,
            run_id=history.run_id or "run",
            trigger=history.trigger,
            payload=history.payload,
        )
        act = interp.advance(history, now=now)
        interp.close()
        if act.outcome != "waiting":
            history.outcome = act.outcome
            history.result = act.result
            return act
        pending = [e for e in history.entries if e.kind == "step" and e.status == "pending"]
        if not pending:
            return act
        for entry in pending:
            definition = interp.step_definitions[entry.name]
            state.begin_attempt(entry, now)
            args, kwargs = definition.decode_arguments(entry.input or {})
            state.complete_attempt(history, entry.seq, definition.fn(*args, **kwargs), now)


def approve(history: History) -> None:
    seq = next(e.seq for e in history.entries if e.kind == "approval" and e.status == "running")
    state.deliver_decision(
        history, seq, approved=True, actor="elrond", comment=None, metadata=None, now=DEFAULT_START
    )


def labels(history: History) -> list[str]:
    return [f"{e.kind}:{e.name}" for e in history.entries]


def v1_finished() -> History:
    tester = WorkflowTester(errand_v1)
    run = tester.start()
    tester.approve(run, actor="elrond")
    assert run.status == "completed"
    return run.history


def v1_paused() -> History:
    run = WorkflowTester(errand_v1).start()
    assert run.status == "paused"
    return run.history.copy()


# --------------------------------------------------------------------------- new runs


def test_new_runs_take_the_new_path_and_record_markers() -> None:
    tester = WorkflowTester(errand_v2)
    run = tester.start()
    tester.approve(run, actor="elrond")
    assert run.result == "new"
    assert run.trace == [
        "patch:inspect-gear",
        "step:inspect_gear",
        "step:pack",
        "approval:council",
        "patch:new-road",
        "step:ride",
    ]
    assert replay(errand_v2, run.history).new_entries == []


# --------------------------------------------------------------------------- old runs


def test_finished_old_history_replays_on_the_old_path() -> None:
    history = v1_finished()
    act = replay(errand_v2, history)
    assert act.outcome == "completed"
    assert act.result == "old"
    assert act.new_entries == []  # no marker was added to an old history


def test_patch_at_the_end_of_a_finished_old_history_takes_the_old_path() -> None:
    history = v1_finished()
    act = replay(errand_v2_tail, history)
    assert act.outcome == "completed"
    assert act.result == "old"
    assert act.new_entries == []


def test_paused_old_run_takes_the_new_path_for_points_it_reaches_on_new_code() -> None:
    history = v1_paused()
    approve(history)
    act = drive(errand_v2, history, DEFAULT_START)
    assert act.outcome == "completed", act.error
    # "inspect-gear" was passed on old code (False); "new-road" is reached on new code.
    assert act.result == "new"
    assert labels(history) == [
        "step:pack",
        "approval:council",
        "patch:new-road",
        "step:ride",
    ]
    # The mixed history replays with v2, and the old code can no longer replay it.
    assert replay(errand_v2, history).new_entries == []
    with pytest.raises(sm.NondeterminismError) as info:
        replay(errand_v1, history)
    assert "walk" in info.value.expected
    assert "ride" in info.value.recorded


def test_paused_old_run_reaches_a_tail_patch_on_new_code() -> None:
    history = v1_paused()
    approve(history)
    act = drive(errand_v2_tail, history, DEFAULT_START)
    assert act.result == "old+receipt"
    assert labels(history)[-2:] == ["patch:receipt", "step:send_receipt"]


PATCH_DEPLOYED = False


@sm.workflow(name="errand")
def errand_deploying() -> Gen:
    yield pack(1)
    yield sm.approval("council")
    if PATCH_DEPLOYED and (yield sm.patched("new-road")):
        yield ride()
        return "new"
    yield walk()
    return "old"


def test_deploy_while_a_cached_generator_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "PATCH_DEPLOYED", False)
    tester = WorkflowTester(errand_deploying)
    run = tester.start()
    assert run.status == "paused"
    monkeypatch.setattr(module, "PATCH_DEPLOYED", True)
    tester.approve(run, actor="elrond")  # the live generator continues on the new code
    assert run.result == "new"
    assert run.trace == ["step:pack", "approval:council", "patch:new-road", "step:ride"]


def test_old_runs_before_the_patch_point_replay_with_the_marker_absent() -> None:
    run = WorkflowTester(errand_v2).start()  # paused at the approval, on v2
    history = run.history.copy()
    assert labels(history)[:2] == ["patch:inspect-gear", "step:inspect_gear"]
    approve(history)
    act = drive(errand_v2, history, DEFAULT_START)
    assert act.result == "new"


# --------------------------------------------------------------------------- removing the patch


def test_code_without_the_patch_call_replays_histories_with_markers() -> None:
    tester = WorkflowTester(errand_v2)
    run = tester.start()
    tester.approve(run, actor="elrond")
    act = replay(errand_v3, run.history)
    assert act.outcome == "completed"
    assert act.result == "new"
    assert act.new_entries == []

    # A run in flight, recorded by v2 on the new path, continues under v3.
    paused = WorkflowTester(errand_v2).start().history.copy()
    approve(paused)
    act = drive(errand_v3, paused, DEFAULT_START)
    assert act.result == "new"
    assert labels(paused) == [
        "patch:inspect-gear",
        "step:inspect_gear",
        "step:pack",
        "approval:council",
        "step:ride",
    ]


def test_removing_the_patch_too_early_breaks_old_runs() -> None:
    # Why the patch must stay until old runs have drained: v3 cannot replay v1 histories.
    with pytest.raises(sm.NondeterminismError) as info:
        replay(errand_v3, v1_finished())
    assert info.value.seq == 0
    assert "inspect_gear" in info.value.expected
    assert "pack" in info.value.recorded


def test_a_different_patch_id_does_not_consume_another_patch_marker() -> None:
    @sm.workflow(name="errand")
    def errand_renamed_patch() -> Gen:
        if (yield sm.patched("check-gear")):  # a new change id at the same point
            yield inspect_gear()
            yield inspect_gear()
        else:
            yield inspect_gear()
        yield pack(1)
        yield sm.approval("council")
        yield ride()
        return "new"

    tester = WorkflowTester(errand_v2)
    run = tester.start()
    tester.approve(run, actor="elrond")
    act = replay(errand_renamed_patch, run.history)
    assert act.new_entries == []
    assert act.result == "new"
