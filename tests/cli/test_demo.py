from __future__ import annotations

# The demo's copy of the Ring Errand (squidmesh/demo.py, shipped in the package) must
# behave exactly like examples/ring_errand.py: same commands, same results, every path.
import io
from typing import Any

import pytest

import squidmesh as sm
from examples import ring_errand as example
from squidmesh import demo
from squidmesh.testing import TestRun, WorkflowTester, raises

PAYLOAD = {"ring_id": "one-ring", "started_on": "2030-01-01"}


def drive(workflow: sm.WorkflowDefinition, path: str) -> TestRun:
    steps: dict[str, Any] = {}
    if path == "retreat":
        steps["cross_moria"] = raises(sm.NonRetryable("the Balrog"))
    if path == "failure":
        steps["toss_ring"] = raises(RuntimeError("the ring will not melt"))
    tester = WorkflowTester(workflow, steps=steps)
    run = tester.start(dict(PAYLOAD))
    tester.advance_to_next_timer()
    tester.unblock(run, actor="strider")
    if path == "rejected":
        tester.reject(run, actor="boromir")
    else:
        tester.approve(run, actor="elrond")
    return run


def summary(run: TestRun) -> dict[str, Any]:
    return {
        "status": run.status.value,
        "result": run.result,
        "trace": run.trace,
        "entries": [
            (
                e.seq,
                e.kind,
                e.name,
                e.status,
                e.input,
                e.result,
                (e.compensation or {}).get("output"),
            )
            for e in run.history
        ],
    }


@pytest.mark.parametrize("path", ["happy", "rejected", "retreat", "failure"])
def test_demo_copy_matches_the_example(path: str) -> None:
    ours = summary(drive(demo.ring_errand, path))
    theirs = summary(drive(example.ring_errand, path))
    assert ours == theirs
    assert ours["status"] == ("failed" if path == "failure" else "completed")


def test_demo_workflow_declares_the_same_triggers_and_steps() -> None:
    assert demo.ring_errand.name == example.ring_errand.name
    assert [(t.name, type(t).__name__) for t in demo.ring_errand.triggers] == [
        (t.name, type(t).__name__) for t in example.ring_errand.triggers
    ]
    for name in (
        "pack_lembas",
        "cross_moria",
        "reserve_eagle",
        "insult_sauron",
        "march_to_gate",
        "look_brave",
        "toss_ring",
        "walk_home",
    ):
        ours, theirs = getattr(demo, name), getattr(example, name)
        assert ours.name == theirs.name
        assert (ours.irreversible, ours.compensatable, ours.retry) == (
            theirs.irreversible,
            theirs.compensatable,
            theirs.retry,
        ), name
        assert (ours.compensate is None) == (theirs.compensate is None), name


def test_run_demo_in_process() -> None:
    out = io.StringIO()
    assert demo.run_demo(out) == 0
    text = out.getvalue()
    assert "paused_for_approval" in text and "the run is completed; result: 'retreated'" in text
    assert demo._TROUBLE == {}  # the injected faults were the demo run's alone


def test_the_demo_faults_touch_only_the_run_they_are_for() -> None:
    clock = demo.VirtualClock()
    mesh = sm.Mesh(
        "memory://", workflows=[demo.ring_errand], executor=sm.InlineExecutor(), clock=clock
    )
    try:
        troubled = mesh.start_run(demo.ring_errand, PAYLOAD)
        calm = mesh.start_run(demo.ring_errand, PAYLOAD)
        demo._TROUBLE[str(troubled.id)] = [sm.NonRetryable("a Balrog")]
        clock.advance(5)
        mesh.drain()
        for run in (troubled, calm):
            mesh.unblock_run(run.id, actor="strider")
            mesh.approve_run(run.id, actor="elrond")
        assert mesh.inspect_run(troubled.id).result == "retreated"
        assert mesh.inspect_run(calm.id).result == "Frodo crossed Moria on 11 lembas"
    finally:
        demo._TROUBLE.clear()
        mesh.close()
