"""Nondeterminism: code that no longer matches a recorded history is caught, never papered over.

Each case records a history with workflow A through ``WorkflowTester``, then replays it
with a changed workflow B through ``squidmesh.testing.replay``.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.core import state
from squidmesh.core.history import History
from squidmesh.core.replay import Interpreter
from squidmesh.testing import WorkflowTester, replay

Gen = Generator[Any, Any, Any]
HERE = Path(__file__)


def line_of(marker: str) -> str:
    """``file:line`` of the one source line that carries ``# <marker>``."""
    lines = HERE.read_text().splitlines()
    hits = [n for n, text in enumerate(lines, start=1) if text.rstrip().endswith(f"# <{marker}>")]
    assert len(hits) == 1, marker
    return f"{HERE}:{hits[0]}"


@sm.step
def alpha(n: int = 0) -> int:
    return n + 1


@sm.step
def beta(n: int = 0) -> int:
    return n + 2


@sm.step
def gamma(n: int = 0) -> int:
    return n + 3


@sm.step
def delta(n: int = 0) -> int:
    return n + 4


def record(workflow: sm.WorkflowDefinition) -> History:
    tester = WorkflowTester(workflow)
    run = tester.start()
    assert run.status == "completed", run.error
    return run.history


# --------------------------------------------------------------------------- the recorded code


@sm.workflow(name="quest")
def quest_a() -> Gen:
    yield alpha()  # <A-alpha>
    yield beta()  # <A-beta>
    yield gamma()  # <A-gamma>
    return "done"


@sm.workflow(name="quest")
def quest_renamed() -> Gen:
    yield alpha()
    yield delta()  # <B-renamed>
    yield gamma()
    return "done"


@sm.workflow(name="quest")
def quest_removed() -> Gen:
    yield alpha()
    yield gamma()  # <B-removed>
    return "done"


@sm.workflow(name="quest")
def quest_removed_last() -> Gen:
    yield alpha()
    yield beta()
    return "done"


@sm.workflow(name="quest")
def quest_added_middle() -> Gen:
    yield alpha()
    yield delta()  # <B-added-middle>
    yield beta()
    yield gamma()
    return "done"


@sm.workflow(name="quest")
def quest_added_end() -> Gen:
    yield alpha()
    yield beta()
    yield gamma()
    yield delta()  # <B-added-end>
    return "done"


@sm.workflow(name="quest")
def quest_kind_changed() -> Gen:
    yield alpha()
    yield sm.sleep(seconds=1)  # <B-kind>
    yield gamma()
    return "done"


@sm.workflow(name="quest")
def quest_new_args_and_logs() -> Gen:
    yield sm.log("a brand new log line")
    yield alpha(41)
    yield beta(n=7)
    yield sm.log("another new line")
    yield gamma(1)
    return "done"


def test_renamed_step() -> None:
    history = record(quest_a)
    with pytest.raises(sm.NondeterminismError) as info:
        replay(quest_renamed, history)
    exc = info.value
    assert exc.seq == 1
    assert exc.run_id == history.run_id
    assert exc.expected == f"step 'delta' at {line_of('B-renamed')}"
    assert exc.recorded == f"step 'beta' at {line_of('A-beta')}"
    assert "seq 1" in str(exc)
    assert "sm.patched" in str(exc)  # tells the user how to fix it


def test_removed_step() -> None:
    history = record(quest_a)
    with pytest.raises(sm.NondeterminismError) as info:
        replay(quest_removed, history)
    assert info.value.seq == 1
    assert info.value.expected == f"step 'gamma' at {line_of('B-removed')}"
    assert info.value.recorded == f"step 'beta' at {line_of('A-beta')}"


def test_removed_last_step_code_returns_while_history_remains() -> None:
    history = record(quest_a)
    with pytest.raises(sm.NondeterminismError) as info:
        replay(quest_removed_last, history)
    assert info.value.seq == 2
    assert "return" in info.value.expected
    assert info.value.recorded == f"step 'gamma' at {line_of('A-gamma')}"


def test_added_step_in_the_middle() -> None:
    history = record(quest_a)
    with pytest.raises(sm.NondeterminismError) as info:
        replay(quest_added_middle, history)
    assert info.value.seq == 1
    assert info.value.expected == f"step 'delta' at {line_of('B-added-middle')}"
    assert info.value.recorded == f"step 'beta' at {line_of('A-beta')}"


def test_added_step_at_the_end_of_a_completed_run() -> None:
    history = record(quest_a)
    with pytest.raises(sm.NondeterminismError) as info:
        replay(quest_added_end, history)
    assert info.value.seq == 3
    assert info.value.expected == f"step 'delta' at {line_of('B-added-end')}"
    assert "completed" in info.value.recorded


def test_changed_command_kind() -> None:
    history = record(quest_a)
    with pytest.raises(sm.NondeterminismError) as info:
        replay(quest_kind_changed, history)
    assert info.value.seq == 1
    assert info.value.expected == f"sleep 'sleep' at {line_of('B-kind')}"
    assert info.value.recorded == f"step 'beta' at {line_of('A-beta')}"


def test_changed_arguments_and_log_messages_still_replay() -> None:
    history = record(quest_a)
    # Logs are part of the history, so adding them is a change; changing only arguments
    # and log messages of an existing history is not.
    act = replay(quest_a, history)
    assert act.new_entries == []

    with_logs = record(quest_new_args_and_logs)

    @sm.workflow(name="quest")
    def reworded() -> Gen:
        yield sm.log("the same line, reworded", extra="field")
        yield alpha(1)
        yield beta(n=8)
        yield sm.log("also reworded", level="warning")
        yield gamma(2)
        return "done"

    act = replay(reworded, with_logs)
    assert act.outcome == "completed"
    assert act.new_entries == []
    assert act.logs == []


def test_recorded_results_are_used_not_recomputed() -> None:
    @sm.workflow(name="sums")
    def sums_a() -> Gen:
        a = yield alpha(1)
        b = yield beta(a)
        return [a, b]

    @sm.workflow(name="sums")
    def sums_b() -> Gen:
        a = yield alpha(100)  # different argument: the recorded result still comes back
        b = yield beta(a)
        return [a, b]

    history = record(sums_a)
    act = replay(sums_b, history)
    assert act.result == [2, 4]


# --------------------------------------------------------------------------- joins


@sm.workflow(name="band")
def band_a() -> Gen:
    yield sm.join(alpha(), beta())  # <A-join>
    return "done"


@sm.workflow(name="band")
def band_reordered() -> Gen:
    yield sm.join(beta(), alpha())  # <B-join-reordered>
    return "done"


@sm.workflow(name="band")
def band_wider() -> Gen:
    yield sm.join(alpha(), beta(), gamma())  # <B-join-wider>
    return "done"


@sm.workflow(name="band")
def band_narrower() -> Gen:
    yield sm.join(alpha())
    return "done"


@sm.workflow(name="band")
def band_first() -> Gen:
    yield sm.first(alpha(), beta())  # <B-first>
    return "done"


def test_reordered_join_branches() -> None:
    history = record(band_a)
    with pytest.raises(sm.NondeterminismError) as info:
        replay(band_reordered, history)
    assert info.value.seq == 1  # the first branch
    assert info.value.expected == f"step 'beta' at {line_of('B-join-reordered')}"
    assert info.value.recorded == f"step 'alpha' at {line_of('A-join')}"


def test_changed_join_width() -> None:
    history = record(band_a)
    with pytest.raises(sm.NondeterminismError) as info:
        replay(band_wider, history)
    assert info.value.seq == 0
    assert info.value.expected == f"join with 3 branches at {line_of('B-join-wider')}"
    assert info.value.recorded == f"join 'join' at {line_of('A-join')} with 2 branches"
    with pytest.raises(sm.NondeterminismError) as narrower:
        replay(band_narrower, history)
    assert narrower.value.seq == 0
    assert "1 branches" in narrower.value.expected


def test_join_changed_to_first() -> None:
    history = record(band_a)
    with pytest.raises(sm.NondeterminismError) as info:
        replay(band_first, history)
    assert info.value.seq == 0
    assert info.value.expected == f"first 'first' at {line_of('B-first')}"


def test_exported_json_history_replays_and_detects_changes() -> None:
    history = record(band_a)
    exported = history.to_json()
    assert replay(band_a, exported).new_entries == []
    with pytest.raises(sm.NondeterminismError):
        replay(band_reordered, exported)


# --------------------------------------------------------------------------- live nondeterminism

CALLS: list[int] = []


@sm.workflow
def moody() -> Gen:
    CALLS.append(1)  # global state: a determinism bug
    if len(CALLS) % 2:
        yield alpha()
    else:
        yield beta()
    return "done"


def test_live_nondeterminism_is_caught_by_replay_each_command() -> None:
    CALLS.clear()
    tester = WorkflowTester(moody)
    with pytest.raises(sm.NondeterminismError) as info:
        tester.start()
    assert info.value.seq == 0
    assert "beta" in info.value.expected
    assert "alpha" in info.value.recorded


def test_live_nondeterminism_goes_unnoticed_without_replay_each_command() -> None:
    CALLS.clear()
    run = WorkflowTester(moody, replay_each_command=False).start()
    assert run.status == "completed"  # which is why the default checks every command


@sm.workflow(name="gate")
def gate_a() -> Gen:
    a = yield alpha(1)
    decision = yield sm.approval("go")
    b = yield beta(a)
    return [a, b, decision.approved]


@sm.workflow(name="gate")
def gate_b() -> Gen:
    a = yield gamma(1)  # changed while the run waited
    decision = yield sm.approval("go")
    b = yield beta(a)
    return [a, b, decision.approved]


def test_changed_code_suspends_a_cold_resumed_run_and_loses_nothing() -> None:
    tester = WorkflowTester(gate_a)
    run = tester.start()
    assert run.status == "paused"
    history = run.history.copy()
    state.deliver_decision(
        history, 1, approved=True, actor="elrond", comment=None, metadata=None, now=tester.now
    )
    before = history.to_json()

    act = Interpreter(gate_b, run_id=run.id, payload=run.payload).advance(history, now=tester.now)
    assert act.outcome == "suspended"
    assert act.reason == "nondeterminism"
    assert act.error is not None
    assert act.error.type == "squidmesh.errors.NondeterminismError"
    details = act.error.details
    assert isinstance(details, dict)
    assert details["seq"] == 0
    assert "gamma" in details["expected"]
    assert "alpha" in details["recorded"]
    assert act.new_entries == []
    assert act.updates == []
    assert history.to_json() == before  # nothing recorded is lost or changed

    # Once the code is fixed (back to A), the same history resumes and completes.
    fixed = Interpreter(gate_a, run_id=run.id, payload=run.payload)
    act = fixed.advance(history, now=tester.now)
    assert act.outcome == "waiting"
    assert [e.label().split(" at ")[0] for e in act.new_entries] == ["step 'beta'"]
    assert history.entries[:2] == [History.from_json(before).entries[i] for i in range(2)]


# --------------------------------------------------------------------------- cache eviction


@sm.workflow
def tidy() -> Gen:
    try:
        try:
            yield sm.log("started")
            yield sm.approval("wait here")
        finally:
            yield sm.log("tidying up")  # must never be emitted by an eviction
            yield alpha()
    finally:
        yield sm.log("outer tidying up")


def test_closing_an_evicted_generator_emits_and_records_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    history = History(run_id="r-1", workflow="tidy", trigger="manual")
    interp = Interpreter(tidy, run_id="r-1")
    act = interp.advance(history, now=WorkflowTester(tidy).now)
    assert act.outcome == "waiting"
    assert interp.is_live
    length = len(history)
    snapshot = history.to_json()

    with caplog.at_level(logging.DEBUG):
        interp.close()
    assert not interp.is_live
    assert len(history) == length == 2
    assert history.to_json() == snapshot
    assert caplog.records == []

    # A later activation (cache miss) replays from the history as if nothing happened.
    fresh = Interpreter(tidy, run_id="r-1")
    act = fresh.advance(history, now=WorkflowTester(tidy).now)
    assert act.outcome == "waiting"
    assert act.new_entries == []
    fresh.close()
    assert len(history) == length
