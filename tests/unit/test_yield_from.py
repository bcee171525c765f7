"""``x = yield from cmd`` behaves exactly like ``x = yield cmd`` at run time.

The interpreter sees the same command object either way; these tests hold it to that:
the same history (so each replays the other's), file:line pointing at the workflow's own
line (also through helper generators), nondeterminism messages, exceptions thrown in
at the ``yield from`` line with no squidmesh frame in between, cancellation and
``finally`` blocks, ``sm.current_run()``, ``sm.patched``, joins and races.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.core import yielding
from squidmesh.core.history import History
from squidmesh.core.replay import Interpreter
from squidmesh.testing import WorkflowTester, replay

Gen = Generator[Any, Any, Any]
HERE = Path(__file__)
UNDONE: list[str] = []


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
def explode(message: str) -> int:
    raise ValueError(message)


def unbook(input: dict[str, Any], output: str, failure: Any) -> None:
    UNDONE.append(output)


@sm.step(compensate=unbook)
def book(room: str) -> str:
    return f"booked {room}"


def outline(history: History) -> list[tuple[Any, ...]]:
    return [(e.seq, e.kind, e.name, e.status, e.input, e.result) for e in history.entries]


# --------------------------------------------------------------------------- same history


@sm.workflow(name="errand")
def errand_yield() -> Gen:
    total = yield add(1, 2)
    room = yield book("rivendell")
    yield sm.log("total", total=total)
    yield sm.sleep(seconds=5)
    decision = yield sm.approval("council")
    data = yield sm.wait_for_event("eagles")
    note = yield sm.pause("pony")
    pair = yield sm.join(add(total, 1), add(total, 2))
    index, value = yield sm.first(add(1, 1), sm.sleep(seconds=60))
    moment = yield sm.now()
    token = yield sm.uuid4()
    dice = yield sm.random()
    patched = yield sm.patched("v2")
    undone = yield sm.undo()
    return [total, room, decision.approved, data, note, list(pair), index, value, patched,
            str(moment), str(token), dice, [u["status"] for u in undone]]  # fmt: skip


@sm.workflow(name="errand")
def errand_yield_from() -> Gen:
    total = yield from add(1, 2)
    room = yield from book("rivendell")
    yield from sm.log("total", total=total)
    yield from sm.sleep(seconds=5)
    decision = yield from sm.approval("council")
    data = yield from sm.wait_for_event("eagles")
    note = yield from sm.pause("pony")
    pair = yield from sm.join(add(total, 1), add(total, 2))
    index, value = yield from sm.first(add(1, 1), sm.sleep(seconds=60))
    moment = yield from sm.now()
    token = yield from sm.uuid4()
    dice = yield from sm.random()
    patched = yield from sm.patched("v2")
    undone = yield from sm.undo()
    return [total, room, decision.approved, data, note, list(pair), index, value, patched,
            str(moment), str(token), dice, [u["status"] for u in undone]]  # fmt: skip


def run_errand(workflow: sm.WorkflowDefinition) -> Any:
    UNDONE.clear()
    tester = WorkflowTester(workflow)
    run = tester.start(run_id="00000000-0000-4000-8000-000000000001")
    tester.advance(5)
    tester.approve(run, actor="elrond")
    tester.send_event(run, "eagles", {"count": 3})
    tester.unblock(run, "carry on")
    assert run.status == "completed", run.error
    assert UNDONE == ["booked rivendell"]
    return run


def test_yield_and_yield_from_record_the_same_history() -> None:
    plain, typed = run_errand(errand_yield), run_errand(errand_yield_from)
    assert outline(typed.history) == outline(plain.history)
    assert typed.result == plain.result
    assert typed.result[:9] == [3, "booked rivendell", True, {"count": 3}, "carry on", [4, 5],
                                0, 2, True]  # fmt: skip
    assert typed.result[-1] == ["completed"]
    # Either history replays against the other code: the commands are the same.
    replay(errand_yield_from, plain.history)
    replay(errand_yield, typed.history)


# --------------------------------------------------------------------------- file:line


def lookout() -> Gen:
    seen = yield from add(2, 2)  # <helper-step>
    yield sm.log("seen", seen=seen)  # <helper-log>
    return seen


@sm.workflow
def located() -> Gen:
    first = yield from add(1, 1)  # <wf-step>
    yield from sm.sleep(seconds=0)  # <wf-sleep>
    both = yield from sm.join(add(first, 1), add(first, 2))  # <wf-join>
    seen = yield from lookout()  # helper generator: its own lines are recorded
    return [first, list(both), seen]


def test_loc_is_the_workflows_own_line_not_squidmeshs() -> None:
    tester = WorkflowTester(located)
    run = tester.start()
    tester.advance(1)
    assert run.status == "completed", run.error
    assert run.result == [2, [3, 4], 4]
    locs = [(e.kind, e.loc) for e in run.history.entries]
    assert locs == [
        ("step", line_of("wf-step")),
        ("sleep", line_of("wf-sleep")),
        ("join", line_of("wf-join")),
        ("step", line_of("wf-join")),
        ("step", line_of("wf-join")),
        ("step", line_of("helper-step")),
        ("log", line_of("helper-log")),
    ]
    assert not any(yielding.__file__ in str(loc) for _, loc in locs)


@sm.workflow(name="quest")
def quest_a() -> Gen:
    yield from add(1, 1)  # <A-add>
    return "done"


@sm.workflow(name="quest")
def quest_b() -> Gen:
    yield from explode("changed")  # <B-explode>
    return "done"


def test_nondeterminism_names_the_yield_from_lines() -> None:
    history = WorkflowTester(quest_a).start().history
    with pytest.raises(sm.NondeterminismError) as info:
        replay(quest_b, history)
    assert info.value.seq == 0
    assert info.value.expected == f"step 'explode' at {line_of('B-explode')}"
    assert info.value.recorded == f"step 'add' at {line_of('A-add')}"


# --------------------------------------------------------------------------- thrown in

CAUGHT: list[Any] = []


@sm.workflow
def careful() -> Gen:
    try:
        yield from explode("boom")  # <raised-here>
    except sm.StepFailed as exc:
        CAUGHT.append(traceback.extract_tb(exc.__traceback__))
        CAUGHT.append(exc)
    pair = yield from sm.join(add(1, 1), explode("again"), return_exceptions=True)
    try:
        yield from sm.join(add(1, 1), explode("third"))
    except sm.StepFailed as exc:
        return [pair[0], type(pair[1]).__name__, exc.step, str(exc.error_message)]
    return "not reached"


def test_step_failed_is_raised_at_the_yield_from_line() -> None:
    CAUGHT.clear()
    tester = WorkflowTester(careful, replay_each_command=False)
    run = tester.start()
    assert run.status == "completed", run.error
    assert run.result == [2, "StepFailed", "explode", "third"]
    frames, exc = CAUGHT[0], CAUGHT[1]
    assert isinstance(exc, sm.StepFailed) and exc.step == "explode"
    # The innermost frame is the workflow's own line: no squidmesh frame in between.
    assert f"{frames[-1].filename}:{frames[-1].lineno}" == line_of("raised-here")
    assert not any(f.filename == yielding.__file__ for f in frames)


UNWIND: list[str] = []


@sm.workflow
def cancellable() -> Gen:
    yield from book("rivendell")
    try:
        yield from sm.approval("proceed")  # <proceed>
    except Exception:  # must not catch RunCancelled
        UNWIND.append("except Exception")
        return "swallowed"
    except sm.RunCancelled as exc:
        UNWIND.append(f"cancelled at {traceback.extract_tb(exc.__traceback__)[-1].lineno}")
        raise
    finally:
        UNWIND.append("finally")
    return "approved"


def test_cancel_at_a_yield_from_runs_finally_blocks() -> None:
    UNDONE.clear()
    tester = WorkflowTester(cancellable)
    run = tester.start()
    assert run.status == "paused"
    UNWIND.clear()
    tester.cancel(run, compensate=True)
    # RunCancelled arrives at the `yield from` line, skips `except Exception`, runs `finally`.
    assert UNWIND == [f"cancelled at {line_of('proceed').rsplit(':', 1)[1]}", "finally"]
    assert run.status == "cancelled"
    assert run.history[1].status == "cancelled"
    assert UNDONE == ["booked rivendell"]


@sm.workflow
def tidy() -> Gen:
    try:
        yield from sm.log("started")
        yield from sm.approval("wait here")
    finally:
        yield from sm.log("tidying up")  # must never be emitted by an eviction
        yield from add(1, 1)


def test_closing_a_generator_parked_at_yield_from_emits_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    history = History(run_id="r-1", workflow="tidy", trigger="manual")
    interp = Interpreter(tidy, run_id="r-1")
    act = interp.advance(history, now=WorkflowTester(tidy).now)
    assert act.outcome == "waiting"
    snapshot = history.to_json()
    with caplog.at_level(logging.DEBUG):
        interp.close()
    assert not interp.is_live
    assert history.to_json() == snapshot
    assert caplog.records == []


# --------------------------------------------------------------------------- run context

SEEN: list[tuple[bool, int]] = []


@sm.workflow
def introspective() -> Gen:
    yield from add(1, 1)
    info = sm.current_run()
    SEEN.append((info.is_replaying, info.history_length))
    yield from sm.sleep(seconds=1)
    info = sm.current_run()
    SEEN.append((info.is_replaying, info.history_length))
    return info.workflow


def test_current_run_is_set_after_each_yield_from() -> None:
    SEEN.clear()
    tester = WorkflowTester(introspective, replay_each_command=False)
    run = tester.start()
    tester.advance(1)
    assert run.result == "introspective"
    assert SEEN == [(False, 1), (False, 2)]
    SEEN.clear()
    replay(introspective, run.history)  # a cold replay of the finished run
    assert SEEN == [(True, 2), (True, 2)]


@sm.workflow(name="errand")
def errand_v1() -> Gen:
    yield from add(1, 1)
    yield from sm.approval("council")
    return "old"


@sm.workflow(name="errand")
def errand_v2() -> Gen:
    inspected = yield from sm.patched("inspect")
    if inspected:
        yield from add(0, 0)
    yield from add(1, 1)
    yield from sm.approval("council")
    return "new" if inspected else "old"


def test_patched_through_yield_from_keeps_old_runs_on_the_old_path() -> None:
    tester = WorkflowTester(errand_v1)
    old = tester.start()
    assert old.status == "paused"
    # v2 deployed while the old run waits: it replays the old history to the old path.
    act = replay(errand_v2, old.history)
    assert act.outcome == "waiting" and act.new_entries == []
    history = old.history.copy()
    decision = {"approved": True, "decision": "approved", "actor": "elrond"}
    history[1].status, history[1].result = "completed", decision
    assert replay(errand_v2, history).result == "old"
    new_tester = WorkflowTester(errand_v2)
    new = new_tester.start()
    new_tester.approve(new, actor="elrond")
    assert new.result == "new"
    assert new.trace == ["patch:inspect", "step:add", "step:add", "approval:council"]
