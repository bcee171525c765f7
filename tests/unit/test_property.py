"""Property tests: random workflow programs replay identically, however they are replayed.

One generic workflow interprets a program given in its payload (plain JSON, so the
workflow is deterministic given its payload). Hypothesis generates programs; each run is
driven to its end by ``WorkflowTester`` (which already re-checks every activation), then
replayed three ways: ``squidmesh.testing.replay``, a fresh ``Interpreter`` on a copy of the
history, and a replay of the history after a JSON round trip. An independent oracle
computes the trace and the result the program must produce.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import squidmesh as sm
from squidmesh.core.history import History
from squidmesh.core.replay import Interpreter
from squidmesh.testing import DEFAULT_START, WorkflowTester, replay

#: text a database stores (NUL characters and lone surrogates are refused: test_values.py)
STORABLE = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")

Gen = Generator[Any, Any, Any]


class Program(BaseModel):
    ops: list[dict[str, Any]]


def _undo_a(*, input: Any, output: Any, failure: Any) -> int:
    return int(output)


@sm.step(compensate=_undo_a)
def s_a(arg: int) -> int:
    return arg + 1


@sm.step
def s_b(arg: int) -> int:
    return arg * 2


@sm.step
def s_c(arg: int) -> str:
    return f"c{arg}"


STEPS: dict[str, sm.StepDefinition[Any, Any]] = {"s_a": s_a, "s_b": s_b, "s_c": s_c}
ORACLE: dict[str, Callable[[int], Any]] = {
    "s_a": lambda a: a + 1,
    "s_b": lambda a: a * 2,
    "s_c": lambda a: f"c{a}",
}


class Flake(Exception):
    pass


@sm.step
def flaky(fail: int, tag: int) -> int:
    """Fails on its first ``fail`` attempts."""
    if sm.step_context().attempt <= fail:
        raise Flake(f"attempt {sm.step_context().attempt}")
    return tag


@sm.step(retry=sm.Retry(max_attempts=5, backoff=sm.Backoff.fixed(10)))
def slow(fail: int) -> str:
    if sm.step_context().attempt <= fail:
        raise Flake("slow")
    return "slow done"


@sm.step
def explode() -> None:
    raise Flake("boom")


@sm.workflow(triggers=[sm.manual(payload=Program)])
def interpret(program: Program) -> Gen:
    out: list[Any] = []
    for op in program.ops:
        kind = op["op"]
        if kind == "step":
            out.append((yield STEPS[op["name"]](op["arg"])))
        elif kind == "flaky":
            policy = sm.Retry(max_attempts=op["attempts"], backoff=sm.Backoff.fixed(1))
            out.append((yield flaky.options(retry=policy)(op["fail"], op["tag"])))
        elif kind == "sleep":
            yield sm.sleep(seconds=op["seconds"])
        elif kind == "log":
            yield sm.log(op["msg"], index=len(out))
        elif kind == "join":
            results = yield sm.join(*(STEPS[b["name"]](b["arg"]) for b in op["branches"]))
            out.append(list(results))
        elif kind == "first":
            index, value = yield sm.first(slow(op["fail"]), sm.sleep(seconds=op["sleep"]))
            out.append([index, value])
        elif kind == "now":
            out.append((yield sm.now()).isoformat())
        elif kind == "uuid4":
            out.append(str((yield sm.uuid4())))
        elif kind == "random":
            out.append((yield sm.random()))
        elif kind == "try":
            try:
                out.append((yield explode()) if op["fail"] else (yield s_b(7)))
            except sm.StepFailed as exc:
                out.append(f"caught {exc.error_message}")
        elif kind == "undo":
            outcomes = yield sm.undo()
            out.append([o["output"] for o in outcomes])
        else:  # pragma: no cover - the strategy only builds known operations
            raise AssertionError(kind)
    return out


# --------------------------------------------------------------------------- the oracle


def oracle(ops: list[dict[str, Any]]) -> tuple[str, list[str], Any, list[str]]:
    """(status, trace, result with placeholders, compensations run) the program must give."""
    clock = DEFAULT_START
    compensated: list[str] = []  # every compensation, by undo or by the final rollback
    trace: list[str] = []
    out: list[Any] = []
    undoable: list[int] = []  # outputs of completed s_a calls not yet compensated
    for op in ops:
        kind = op["op"]
        if kind == "step":
            trace.append(f"step:{op['name']}")
            out.append(ORACLE[op["name"]](op["arg"]))
            if op["name"] == "s_a":
                undoable.append(out[-1])
        elif kind == "flaky":
            trace.append("step:flaky")
            if op["fail"] >= op["attempts"]:
                clock += timedelta(seconds=op["attempts"] - 1)
                return "failed", trace, None, compensated + ["s_a"] * len(undoable)
            clock += timedelta(seconds=op["fail"])
            out.append(op["tag"])
        elif kind == "sleep":
            trace.append("sleep")
            clock += timedelta(seconds=op["seconds"])
        elif kind == "log":
            trace.append("log")
        elif kind == "join":
            trace.append("join")
            values = []
            for branch in op["branches"]:
                trace.append(f"step:{branch['name']}")
                values.append(ORACLE[branch["name"]](branch["arg"]))
                if branch["name"] == "s_a":
                    undoable.append(values[-1])
            out.append(values)
        elif kind == "first":
            trace.extend(["first", "step:slow", "sleep"])
            step_done = 10 * op["fail"]
            if step_done < op["sleep"]:
                clock += timedelta(seconds=step_done)
                out.append([0, "slow done"])
            else:
                clock += timedelta(seconds=op["sleep"])
                out.append([1, None])
        elif kind in ("now", "uuid4", "random"):
            trace.append(kind)
            out.append(clock.isoformat() if kind == "now" else f"<{kind}>")
        elif kind == "try":
            trace.append("step:explode" if op["fail"] else "step:s_b")
            out.append("caught boom" if op["fail"] else 14)
        elif kind == "undo":
            trace.append("undo")
            out.append(list(reversed(undoable)))
            compensated += ["s_a"] * len(undoable)
            undoable = []
    return "completed", trace, out, compensated


def normalized(expected: list[Any], result: list[Any]) -> list[Any]:
    """``result`` with its recorded random values replaced by the oracle's placeholders."""
    values = list(result)
    for i, want in enumerate(expected[: len(values)]):
        if want == "<uuid4>":
            assert isinstance(values[i], str) and len(values[i]) == 36
            values[i] = want
        elif want == "<random>":
            assert isinstance(values[i], float) and 0.0 <= values[i] < 1.0
            values[i] = want
    return values


# --------------------------------------------------------------------------- programs

names = st.sampled_from(sorted(STEPS))
branch = st.fixed_dictionaries({"name": names, "arg": st.integers(0, 9)})
operation = st.one_of(
    st.fixed_dictionaries({"op": st.just("step"), "name": names, "arg": st.integers(0, 9)}),
    st.fixed_dictionaries(
        {
            "op": st.just("flaky"),
            "fail": st.integers(0, 3),
            "attempts": st.integers(1, 4),
            "tag": st.integers(0, 99),
        }
    ),
    st.fixed_dictionaries({"op": st.just("sleep"), "seconds": st.integers(1, 50)}),
    st.fixed_dictionaries({"op": st.just("log"), "msg": st.text(STORABLE, max_size=8)}),
    st.fixed_dictionaries(
        {"op": st.just("join"), "branches": st.lists(branch, min_size=1, max_size=3)}
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("first"),
            "fail": st.integers(0, 3),
            "sleep": st.sampled_from([5, 15, 25, 35]),
        }
    ),
    st.fixed_dictionaries({"op": st.sampled_from(["now", "uuid4", "random", "undo"])}),
    st.fixed_dictionaries({"op": st.just("try"), "fail": st.booleans()}),
)
programs = st.lists(operation, max_size=8)


def run_to_the_end(ops: list[dict[str, Any]]) -> Any:
    tester = WorkflowTester(interpret)
    run = tester.start({"ops": ops})
    for _ in range(100):
        if run.status.is_terminal:
            break
        assert run.status != "suspended", run.error
        assert tester.advance_to_next_timer() is not None, f"stuck: {run.status} {run.waiting_on}"
    assert run.status.is_terminal
    return run


@settings(max_examples=60, deadline=None, database=None)
@given(programs)
def test_random_programs_replay_identically(ops: list[dict[str, Any]]) -> None:
    run = run_to_the_end(ops)

    status, trace, result, compensated = oracle(ops)
    assert run.status == status, run.error
    assert run.trace == trace
    assert run.compensations == [(name, "completed") for name in compensated]
    if status == "completed":
        assert normalized(result, run.result) == result
    else:
        assert run.error is not None
        assert run.error["type"] == f"{__name__}.Flake"

    # (a) the testing replay helper agrees and adds nothing
    act = replay(interpret, run.history)
    assert act.new_entries == []
    assert act.outcome == status
    assert act.result == run.result

    # (b) a fresh interpreter on a copy of the history reaches the same end
    copy = run.history.copy()
    fresh = Interpreter(interpret, run_id=run.id, trigger=run.trigger, payload=run.payload)
    again = fresh.advance(copy, now=DEFAULT_START + timedelta(days=30))
    assert again.outcome == status
    assert again.result == run.result
    assert again.new_entries == []
    assert again.compensate == ()  # compensations already recorded are not requested again
    if status == "failed":
        assert again.error is not None and run.error is not None
        assert again.error.type == run.error["type"]
        assert again.error.message == run.error["message"]
    assert copy == run.history

    # (c) a JSON round trip of the history replays identically
    round_tripped = History.from_json(json.loads(json.dumps(run.history.to_json())))
    assert round_tripped == run.history
    act = replay(interpret, round_tripped)
    assert act.new_entries == []
    assert act.outcome == status
    assert act.result == run.result
