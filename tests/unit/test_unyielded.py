"""Step calls created by workflow code and never yielded are reported, once, with file:line.

``WorkflowTester`` raises ``DefinitionError`` for them; the interpreter puts them on its
activation as warnings (the runtime's ``warning`` audit events, tested in
tests/runtime/test_unyielded.py). A call may be yielded later than it is created: only
a call that can no longer be yielded is reported, and never twice, nor on replay.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.core import state
from squidmesh.core.history import History
from squidmesh.core.replay import Activation, Interpreter
from squidmesh.testing import WorkflowTester, replay

Gen = Generator[Any, Any, Any]
HERE = Path(__file__)
NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def line_of(marker: str) -> str:
    """``file:line`` of the one source line that carries ``# <marker>``."""
    lines = HERE.read_text().splitlines()
    hits = [n for n, text in enumerate(lines, start=1) if text.rstrip().endswith(f"# <{marker}>")]
    assert len(hits) == 1, marker
    return f"{HERE}:{hits[0]}"


@sm.step
def add(a: int, b: int) -> int:
    return a + b


@sm.step
def notify(text: str) -> str:
    return f"sent {text}"


@sm.step
def explode() -> int:
    raise ValueError("boom")


def warnings_of(act: Activation) -> list[tuple[str, str]]:
    return [(w["step"], w["metadata"]["loc"]) for w in act.warnings]


def drive(workflow: sm.WorkflowDefinition) -> tuple[History, list[Activation]]:
    """Run ``workflow`` with a cold interpreter per activation (a replay every time),
    running steps in place and firing timers at once."""
    history = History(run_id="r-1", workflow=workflow.name, trigger="manual")
    acts = []
    for _ in range(20):
        interp = Interpreter(workflow, run_id="r-1")
        act = interp.advance(history, now=NOW)
        acts.append(act)
        if act.outcome != "waiting":
            interp.close()
            history.outcome = act.outcome
            return history, acts
        for seq in act.waiting_on:
            entry = history[seq]
            if entry.kind == "sleep":
                state.fire_due(history, entry, NOW)
                continue
            step = interp.step_definitions[entry.name]
            state.begin_attempt(entry, NOW)
            args, kwargs = step.decode_arguments(entry.input or {})
            try:
                state.complete_attempt(history, seq, step.fn(*args, **kwargs), NOW)
            except ValueError as exc:
                state.fail_attempt(history, seq, exc, step.retry, NOW)
        interp.close()
    raise AssertionError("the workflow did not settle")


# --------------------------------------------------------------------------- reported


@sm.workflow
def forgetful() -> Gen:
    total = yield from add(1, 2)
    notify(f"total is {total}")  # <bare>
    yield from sm.log("after")
    return total


def test_tester_raises_naming_the_step_and_line() -> None:
    with pytest.raises(sm.DefinitionError) as info:
        WorkflowTester(forgetful).start()
    message = str(info.value)
    assert f"step call notify(...) created at {line_of('bare')} was never yielded" in message
    assert "yield notify(...)" in message and "yield from notify(...)" in message
    assert "forgetful" in message


def test_activation_carries_one_warning_and_history_is_unchanged() -> None:
    history, acts = drive(forgetful)
    reported = [w for act in acts for w in warnings_of(act)]
    assert reported == [("notify", line_of("bare"))]
    (warning,) = [w for act in acts for w in act.warnings]
    assert warning["metadata"] == {"code": "never_yielded", "loc": line_of("bare")}
    assert "never yielded" in warning["comment"]
    # A warning is no history entry: the fixed code replays the same history.
    assert [(e.kind, e.name) for e in history.entries] == [("step", "add"), ("log", "log")]

    @sm.workflow(name="forgetful")
    def fixed() -> Gen:
        total = yield from add(1, 2)
        yield from sm.log("after")
        return total

    assert replay(fixed, history).result == 3


def test_a_replay_never_reports_again() -> None:
    history, acts = drive(forgetful)
    assert sum(len(act.warnings) for act in acts) == 1
    for cut in range(len(history) + 1):  # a cold replay from every position
        partial = History(
            run_id="r-1", workflow="forgetful", trigger="manual", entries=history.entries[:cut]
        )
        interp = Interpreter(forgetful, run_id="r-1")
        act = interp.advance(partial.copy(), now=NOW)
        interp.close()
        expected = [("notify", line_of("bare"))] if cut == 1 else []
        assert warnings_of(act) == expected, cut  # only the activation recording seq 1
    assert history.outcome == "completed"
    assert replay(forgetful, history).warnings == []


@sm.workflow
def loops() -> Gen:
    for n in range(3):
        notify(f"round {n}")  # <loop>
        yield from sm.sleep(seconds=1)
    kept = add(9, 9)  # <kept>
    return kept.name


def test_each_line_is_reported_once_and_returned_calls_at_the_end() -> None:
    _, acts = drive(loops)
    reported = [w for act in acts for w in warnings_of(act)]
    assert reported == [("notify", line_of("loop")), ("add", line_of("kept"))]
    assert acts[-1].outcome == "completed"
    assert warnings_of(acts[-1]) == [("add", line_of("kept"))]


@sm.workflow
def returns_the_call() -> Gen:
    yield from sm.log("start")
    receipt = notify("o-1")  # <returned>
    return {"receipt": receipt}


def test_a_step_call_in_the_result_is_blamed_not_json() -> None:
    tester = WorkflowTester(returns_the_call)
    run = tester.start()
    assert run.status == "suspended"
    assert run.reason == "workflow_error"
    message = str((run.error or {}).get("message"))
    assert f"step call notify(...) created at {line_of('returned')} was never yielded" in message


# --------------------------------------------------------------------------- legal


@sm.workflow
def yields_later() -> Gen:
    prepared = notify("later")  # built now, yielded after the sleep: legal
    calls = [add(n, n) for n in range(3)]
    queue = [notify("a"), notify("b")]
    yield from sm.sleep(seconds=1)
    sent = yield from prepared
    doubled = yield from sm.join(*calls)
    one_by_one = []
    for call in queue:
        one_by_one.append((yield call))
    winner = yield from sm.first(add(1, 1), notify("race"))
    return [sent, list(doubled), one_by_one, list(winner)]


def test_calls_yielded_later_or_through_join_are_not_reported() -> None:
    tester = WorkflowTester(yields_later)  # would raise on any warning
    run = tester.start()
    tester.advance(1)
    assert run.status == "completed", run.error
    assert run.result == ["sent later", [0, 2, 4], ["sent a", "sent b"], [0, 2]]
    assert not [a for a in run._load().audit if a.type == "warning"]
    _, acts = drive(yields_later)
    assert [w for act in acts for w in act.warnings] == []


@sm.workflow
def fails_with_a_prepared_call() -> Gen:
    notify("lost")  # <lost-before-failing>
    prepared = notify("for later")
    yield from explode()
    yield from prepared


def test_a_failed_run_reports_only_calls_already_lost() -> None:
    _, acts = drive(fails_with_a_prepared_call)
    assert acts[-1].outcome == "failed"
    reported = [w for act in acts for w in warnings_of(act)]
    # `prepared` was still meant for later when the step failed: not reported.
    assert reported == [("notify", line_of("lost-before-failing"))]


def test_calls_outside_workflow_code_are_not_tracked() -> None:
    call = notify("from a test")
    assert call.name == "notify"
    run = WorkflowTester(yields_later).start()  # nothing from this test leaks into a run
    assert not [a for a in run._load().audit if a.type == "warning"]
