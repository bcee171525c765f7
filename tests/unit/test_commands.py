"""Every command of the authoring API (SPEC section 2), driven through ``WorkflowTester``.

The tester re-checks every activation with a fresh replay (``replay_each_command=True``),
so each test here is also a determinism test of the command it exercises.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Generator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel

import squidmesh as sm
from squidmesh.core import state
from squidmesh.core.replay import Interpreter
from squidmesh.testing import DEFAULT_START, Wait, WorkflowTester, replay

Gen = Generator[Any, Any, Any]
T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- steps


class Report(BaseModel):
    summary: str
    distance: int


@sm.step
def add(a: int, b: int) -> int:
    return a + b


@sm.step
def echo(value: Any) -> Any:
    return value


@sm.step
def cross(bearer: str, miles: int) -> Report:
    return Report(summary=f"{bearer} crossed {miles} miles", distance=miles)


@sm.step
async def fetch_double(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


@sm.step
def explode(message: str) -> int:
    raise ValueError(message)


BOOKED: list[dict[str, Any]] = []


def unbook(*, input: Any, output: Any, failure: Any) -> dict[str, Any]:
    BOOKED.append({"input": input, "output": output, "failure": failure})
    return {"released": output}


@sm.step(compensate=unbook)
def book(room: str) -> str:
    return f"booking-{room}"


CONTEXTS: list[dict[str, Any]] = []


@sm.step(retry=sm.Retry(max_attempts=3))
def keyed(label: str) -> dict[str, Any]:
    ctx = sm.step_context()
    seen = {
        "run_id": ctx.run_id,
        "step": ctx.step,
        "seq": ctx.seq,
        "attempt": ctx.attempt,
        "key": ctx.idempotency_key,
    }
    CONTEXTS.append(seen)
    if ctx.attempt == 1:
        raise ConnectionError("first attempt always drops")
    return seen


# --------------------------------------------------------------------------- steps: results


@sm.workflow
def arithmetic() -> Gen:
    three = yield add(1, 2)
    seven = yield add(three, b=4)
    return seven


def test_step_result_is_sent_back_into_the_workflow() -> None:
    run = WorkflowTester(arithmetic).start()
    assert run.status == "completed"
    assert run.result == 7
    assert run.trace == ["step:add", "step:add"]
    assert [e.input for e in run.entries("step")] == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
    assert [e.result for e in run.entries("step")] == [3, 7]


@sm.workflow
def moria() -> Gen:
    report = yield cross("Frodo", 40)
    # Attribute access only works if the recorded JSON was rebuilt into the model.
    assert isinstance(report, Report)
    yield sm.log(report.summary)
    return {"summary": report.summary, "distance": report.distance}


def test_pydantic_model_result_comes_back_as_the_model_live() -> None:
    run = WorkflowTester(moria).start()
    assert run.status == "completed", run.error
    assert run.result == {"summary": "Frodo crossed 40 miles", "distance": 40}
    # The history holds plain JSON, never a pickled object.
    assert run.entries("step")[0].result == {"summary": "Frodo crossed 40 miles", "distance": 40}


def test_pydantic_model_result_comes_back_as_the_model_on_replay() -> None:
    run = WorkflowTester(moria).start()
    act = replay(moria, run.history)
    assert act.outcome == "completed"
    assert act.result == run.result
    assert act.new_entries == []


def test_async_steps_run() -> None:
    @sm.workflow
    def doubling() -> Gen:
        a = yield fetch_double(4)
        b = yield fetch_double(a)
        return b

    run = WorkflowTester(doubling).start()
    assert run.status == "completed", run.error
    assert run.result == 16


# --------------------------------------------------------------------------- sleep


@sm.workflow
def sleeper() -> Gen:
    yield sm.sleep(seconds=5)
    first = yield sm.now()
    yield sm.sleep(timedelta(minutes=2))
    second = yield sm.now()
    yield sm.sleep_until(datetime(2030, 1, 2, tzinfo=timezone.utc))
    third = yield sm.now()
    return [first.isoformat(), second.isoformat(), third.isoformat()]


def test_sleep_waits_on_the_virtual_clock() -> None:
    tester = WorkflowTester(sleeper, start=T0)
    run = tester.start()
    assert run.status == "running"
    assert run.waiting_on == [Wait("sleep", "sleep", 0, (T0 + timedelta(seconds=5)).isoformat())]

    tester.advance(4)
    assert run.trace == ["sleep"]
    tester.advance(1)
    assert run.trace == ["sleep", "now", "sleep"]
    assert run.waiting_on[0].until == (T0 + timedelta(seconds=125)).isoformat()

    tester.advance(timedelta(minutes=2))
    assert run.trace == ["sleep", "now", "sleep", "now", "sleep"]
    assert run.status == "running"
    woke = tester.advance_to_next_timer()
    assert woke == datetime(2030, 1, 2, tzinfo=timezone.utc)
    assert run.status == "completed"
    assert run.result == [
        (T0 + timedelta(seconds=5)).isoformat(),
        (T0 + timedelta(seconds=125)).isoformat(),
        "2030-01-02T00:00:00+00:00",
    ]
    assert tester.advance_to_next_timer() is None


def test_one_big_advance_fires_every_timer_in_order() -> None:
    tester = WorkflowTester(sleeper, start=T0)
    run = tester.start()
    tester.advance(timedelta(days=2))
    assert run.status == "completed"
    # Each timer fired at its own wake time, not at the end of the advance.
    assert run.result[0] == (T0 + timedelta(seconds=5)).isoformat()
    assert run.result[1] == (T0 + timedelta(seconds=125)).isoformat()
    assert tester.now == T0 + timedelta(days=2)


def test_sleep_arguments_are_validated() -> None:
    with pytest.raises(sm.DefinitionError):
        sm.sleep()
    with pytest.raises(sm.DefinitionError):
        sm.sleep(-1)
    with pytest.raises(sm.DefinitionError):
        sm.sleep_until(datetime(2030, 1, 1))  # naive


# --------------------------------------------------------------------------- pause


@sm.workflow
def gatekeeper() -> Gen:
    data = yield sm.pause("manual_check", reason="look at it")
    return {"got": data}


def test_pause_returns_unblock_data() -> None:
    tester = WorkflowTester(gatekeeper)
    run = tester.start()
    assert run.status == "paused"
    assert run.waiting_on == [Wait("pause", "manual_check", 0)]
    assert run.trace == ["pause:manual_check"]
    tester.unblock(run, {"ok": True}, actor="gandalf")
    assert run.status == "completed"
    assert run.result == {"got": {"ok": True}}


def test_pause_unblocked_without_data_returns_none() -> None:
    tester = WorkflowTester(gatekeeper)
    run = tester.start()
    tester.unblock(run)
    assert run.result == {"got": None}


# --------------------------------------------------------------------------- approval


@sm.workflow
def council() -> Gen:
    decision = yield sm.approval("council_vote")
    assert isinstance(decision, sm.Decision)
    return {
        "approved": decision.approved,
        "decision": decision.decision,
        "actor": decision.actor,
        "comment": decision.comment,
        "metadata": decision.metadata,
        "decided_at": decision.decided_at,
    }


def test_approve_returns_a_decision() -> None:
    tester = WorkflowTester(council, start=T0)
    run = tester.start()
    assert run.status == "paused"
    assert run.waiting_on == [Wait("approval", "council_vote", 0)]
    tester.advance(90)
    tester.approve(run, actor="elrond", comment="go", metadata={"votes": 9})
    assert run.status == "completed"
    assert run.result == {
        "approved": True,
        "decision": "approved",
        "actor": "elrond",
        "comment": "go",
        "metadata": {"votes": 9},
        "decided_at": (T0 + timedelta(seconds=90)).isoformat(),
    }


def test_reject_is_a_decision_not_a_failure() -> None:
    tester = WorkflowTester(council, start=T0)
    run = tester.start()
    tester.reject(run, actor="boromir")
    assert run.status == "completed"
    assert run.result["approved"] is False
    assert run.result["decision"] == "rejected"
    assert run.result["actor"] == "boromir"
    assert run.result["comment"] is None
    assert run.result["metadata"] is None


@sm.workflow
def patient_council() -> Gen:
    try:
        decision = yield sm.approval("vote", timeout=60)
    except sm.TimedOut as exc:
        return {"timed_out": exc.name, "seq": exc.seq}
    return {"approved": decision.approved}


@sm.workflow
def impatient_council() -> Gen:
    decision = yield sm.approval("vote", timeout=timedelta(minutes=1))
    return decision.approved


def test_approval_timeout_throws_timed_out_into_the_workflow() -> None:
    tester = WorkflowTester(patient_council, start=T0)
    run = tester.start()
    assert run.waiting_on == [Wait("approval", "vote", 0, (T0 + timedelta(seconds=60)).isoformat())]
    tester.advance(59)
    assert run.status == "paused"
    tester.advance(1)
    assert run.status == "completed"
    assert run.result == {"timed_out": "vote", "seq": 0}
    assert run.history[0].status == "failed"
    assert run.history[0].error is not None
    assert run.history[0].error["type"] == "squidmesh.errors.TimedOut"


def test_approval_in_time_beats_the_timeout() -> None:
    tester = WorkflowTester(patient_council)
    run = tester.start()
    tester.advance(30)
    tester.approve(run, actor="elrond")
    assert run.result == {"approved": True}
    # The timeout timer is gone: nothing fires later.
    assert tester.advance_to_next_timer() is None


def test_uncaught_timeout_fails_the_run() -> None:
    tester = WorkflowTester(impatient_council)
    run = tester.start()
    tester.advance_to_next_timer()
    assert run.status == "failed"
    assert run.error is not None
    assert run.error["type"] == "squidmesh.errors.TimedOut"


# --------------------------------------------------------------------------- events


@sm.workflow
def listener() -> Gen:
    yield sm.sleep(seconds=10)
    data = yield sm.wait_for_event("ring_found", timeout=100)
    return data


def test_event_delivered_while_waiting() -> None:
    tester = WorkflowTester(listener)
    run = tester.start()
    tester.advance(10)
    assert run.status == "running"
    assert [(w.kind, w.name) for w in run.waiting_on] == [("event", "ring_found")]
    tester.send_event(run, "ring_found", {"where": "Anduin"})
    assert run.status == "completed"
    assert run.result == {"where": "Anduin"}


def test_event_sent_before_the_wait_is_buffered() -> None:
    tester = WorkflowTester(listener)
    run = tester.start()
    tester.send_event(run, "unrelated", 1)
    tester.send_event(run, "ring_found", {"where": "Gladden Fields"})
    assert run.trace == ["sleep"]  # still sleeping: nothing consumed it yet
    tester.advance(10)
    assert run.status == "completed"
    assert run.result == {"where": "Gladden Fields"}


def test_event_wait_times_out() -> None:
    tester = WorkflowTester(listener)
    run = tester.start()
    tester.advance(10)
    tester.advance(100)
    assert run.status == "failed"
    assert run.error is not None
    assert run.error["type"] == "squidmesh.errors.TimedOut"


@sm.workflow
def tolerant_listener() -> Gen:
    try:
        return (yield sm.wait_for_event("ping", timeout=5))
    except sm.TimedOut:
        return "nobody called"


def test_event_timeout_can_be_caught() -> None:
    tester = WorkflowTester(tolerant_listener)
    run = tester.start()
    tester.advance(5)
    assert run.result == "nobody called"


def test_send_event_to_a_finished_run_is_refused() -> None:
    tester = WorkflowTester(tolerant_listener)
    run = tester.start()
    tester.send_event(run, "ping", 1)
    assert run.result == 1
    with pytest.raises(sm.InvalidTransitionError):
        tester.send_event(run, "ping", 2)


# --------------------------------------------------------------------------- join


@sm.step(retry=sm.Retry(max_attempts=3, backoff=sm.Backoff.fixed(5)))
def slow_echo(value: str) -> str:
    if sm.step_context().attempt < 3:
        raise TimeoutError("not yet")
    return value


@sm.workflow
def fellowship() -> Gen:
    results = yield sm.join(slow_echo("aragorn"), add(1, 1), sm.sleep(seconds=3), echo("legolas"))
    return list(results)


def test_join_returns_results_in_argument_order() -> None:
    tester = WorkflowTester(fellowship)
    run = tester.start()
    assert run.trace == ["join", "step:slow_echo", "step:add", "sleep", "step:echo"]
    # A branch waits for its retry: the run says so.
    assert run.status == "retrying"
    assert [(w.kind, w.name) for w in run.waiting_on] == [("step", "slow_echo"), ("sleep", "sleep")]
    tester.advance(3)
    assert [(w.kind, w.name) for w in run.waiting_on] == [("step", "slow_echo")]
    tester.advance(30)
    assert run.status == "completed", run.error
    # slow_echo finished last, yet its result comes first.
    assert run.result == ["aragorn", 2, None, "legolas"]
    orders = {e.name: e.order or 0 for e in run.history.entries[1:]}
    assert orders["slow_echo"] > orders["add"]


@sm.workflow
def broken_fellowship() -> Gen:
    try:
        yield sm.join(echo("sam"), explode("balrog"), sm.approval("wizard"), sm.sleep(seconds=60))
    except sm.StepFailed as exc:
        return {"failed": exc.step, "message": exc.error_message}
    return "unreachable"


def test_join_throws_first_failure_and_cancels_remaining_branches() -> None:
    tester = WorkflowTester(broken_fellowship)
    run = tester.start()
    assert run.status == "completed", run.error
    assert run.result == {"failed": "explode", "message": "balrog"}
    statuses = [(e.kind, e.status) for e in run.history.entries]
    assert statuses == [
        ("join", "failed"),
        ("step", "completed"),
        ("step", "failed"),
        ("approval", "cancelled"),
        ("sleep", "cancelled"),
    ]
    # The cancelled timer is gone and the cancelled approval cannot be decided.
    assert tester.advance_to_next_timer() is None
    with pytest.raises(sm.InvalidTransitionError):
        tester.approve(run, actor="gandalf")


@sm.workflow
def lenient_fellowship() -> Gen:
    results = yield sm.join(explode("orc"), echo("gimli"), return_exceptions=True)
    failure, value = results
    assert isinstance(failure, sm.StepFailed)
    return {"failure": failure.error_message, "step": failure.step, "value": value}


def test_join_with_return_exceptions_returns_failures_as_values() -> None:
    run = WorkflowTester(lenient_fellowship).start()
    assert run.status == "completed", run.error
    assert run.result == {"failure": "orc", "step": "explode", "value": "gimli"}
    assert run.history[0].status == "completed"


def test_join_rejects_commands_that_cannot_be_branches() -> None:
    with pytest.raises(sm.DefinitionError):
        sm.join(sm.log("no"))
    with pytest.raises(sm.DefinitionError, match="at least one"):
        sm.first()  # no branch can win


@sm.workflow
def joins_a_list(payload: Any = None):
    names: list[str] = []
    nothing = yield sm.join(*[echo(name) for name in names])
    some = yield sm.join(*[echo(name) for name in ["sam"]])
    return [list(nothing), list(some)]


def test_an_empty_join_returns_an_empty_tuple_at_once() -> None:
    run = WorkflowTester(joins_a_list).start()
    assert run.status == "completed", run.error
    assert run.result == [[], ["sam"]]
    assert run.trace[:2] == ["join", "join"]


# --------------------------------------------------------------------------- first


@sm.workflow
def deadline_review() -> Gen:
    index, result = yield sm.first(sm.approval("sign_off"), sm.sleep(seconds=3600))
    if index == 0:
        return {"winner": "approval", "approved": result.approved}
    return {"winner": "timeout", "result": result}


def test_first_returns_winner_and_cancels_the_timer() -> None:
    tester = WorkflowTester(deadline_review)
    run = tester.start()
    assert run.trace == ["first", "approval:sign_off", "sleep"]
    assert run.status == "paused"
    tester.advance(600)
    tester.approve(run, actor="frodo")
    assert run.status == "completed"
    assert run.result == {"winner": "approval", "approved": True}
    assert [e.status for e in run.history.entries] == ["completed", "completed", "cancelled"]
    assert tester.advance_to_next_timer() is None


def test_first_timeout_branch_wins_and_cancels_the_approval() -> None:
    tester = WorkflowTester(deadline_review)
    run = tester.start()
    tester.advance(3600)
    assert run.status == "completed"
    assert run.result == {"winner": "timeout", "result": None}
    assert [e.status for e in run.history.entries] == ["completed", "cancelled", "completed"]
    with pytest.raises(sm.InvalidTransitionError):
        tester.approve(run, actor="frodo")


@sm.workflow
def race_against_slow_step() -> Gen:
    index, value = yield sm.first(slow_echo("late"), sm.sleep(seconds=2))
    return [index, value]


def test_first_ignores_a_losing_step() -> None:
    tester = WorkflowTester(race_against_slow_step)
    run = tester.start()
    tester.advance(60)
    assert run.result == [1, None]
    step_entry = run.entries("step")[0]
    assert step_entry.status == "cancelled"
    assert len(run.step_attempts("slow_echo")) == 1  # no retry after the race was decided


# --------------------------------------------------------------------------- log


@sm.workflow
def chatty() -> Gen:
    yield sm.log("setting out", bearer="Frodo")
    a = yield add(1, 1)
    yield sm.sleep(seconds=1)
    yield sm.log("halfway", level="warning", total=a)
    b = yield add(a, 1)
    yield sm.log("arrived")
    return b


def test_log_is_emitted_exactly_once_despite_replays(caplog: pytest.LogCaptureFixture) -> None:
    tester = WorkflowTester(chatty)
    assert tester.replay_each_command
    with caplog.at_level(logging.DEBUG, logger="squidmesh.workflow"):
        run = tester.start()
        tester.advance(1)
    assert run.status == "completed"
    messages = [r.getMessage() for r in caplog.records if r.name == "squidmesh.workflow"]
    assert messages == ["setting out", "halfway", "arrived"]
    levels = [r.levelno for r in caplog.records if r.name == "squidmesh.workflow"]
    assert levels == [logging.INFO, logging.WARNING, logging.INFO]
    assert [(line["message"], line["fields"]) for line in run.logs] == [
        ("setting out", {"bearer": "Frodo"}),
        ("halfway", {"total": 2}),
        ("arrived", {}),
    ]
    # Visible in the history.
    assert [e.input["message"] for e in run.entries("log")] == ["setting out", "halfway", "arrived"]


def test_replaying_a_history_emits_no_logs(caplog: pytest.LogCaptureFixture) -> None:
    tester = WorkflowTester(chatty)
    run = tester.start()
    tester.advance(1)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="squidmesh.workflow"):
        act = replay(chatty, run.history)
    assert act.logs == []
    assert [r for r in caplog.records if r.name == "squidmesh.workflow"] == []


# --------------------------------------------------------------------------- recorded values


@sm.workflow
def oracle() -> Gen:
    when = yield sm.now()
    ident = yield sm.uuid4()
    roll = yield sm.random()
    assert isinstance(when, datetime)
    assert isinstance(ident, uuid.UUID)
    assert isinstance(roll, float)
    return {"now": when.isoformat(), "uuid": str(ident), "random": roll}


def test_now_uuid4_random_are_recorded() -> None:
    tester = WorkflowTester(oracle, start=T0)
    run = tester.start()
    assert run.trace == ["now", "uuid4", "random"]
    assert run.result["now"] == T0.isoformat()
    assert uuid.UUID(run.result["uuid"]).version == 4
    assert 0.0 <= run.result["random"] < 1.0
    assert [e.result for e in run.history.entries] == [
        run.result["now"],
        run.result["uuid"],
        run.result["random"],
    ]


def test_recorded_values_are_the_same_on_replay() -> None:
    run = WorkflowTester(oracle).start()
    act = replay(oracle, run.history)
    assert act.result == run.result
    # Even when replayed much later, on another "clock".
    fresh = Interpreter(oracle, run_id=run.id, payload=run.payload)
    again = fresh.advance(run.history.copy(), now=T0 + timedelta(days=365))
    assert again.result == run.result


def test_uuid4_differs_between_runs() -> None:
    tester = WorkflowTester(oracle)
    one, two = tester.start(), tester.start()
    assert one.result["uuid"] != two.result["uuid"]


# --------------------------------------------------------------------------- patched


@sm.workflow
def patched_flow() -> Gen:
    if (yield sm.patched("new-greeting")):
        return "new"
    return "old"


def test_patched_is_true_on_new_runs_and_recorded() -> None:
    run = WorkflowTester(patched_flow).start()
    assert run.result == "new"
    assert run.trace == ["patch:new-greeting"]


# --------------------------------------------------------------------------- undo


@sm.workflow
def undo_then_continue() -> Gen:
    first = yield book("a")
    second = yield book("b")
    outcomes = yield sm.undo()
    after = yield echo("continued")
    return {"first": first, "second": second, "outcomes": outcomes, "after": after}


def test_undo_compensates_newest_first_and_continues() -> None:
    BOOKED.clear()
    run = WorkflowTester(undo_then_continue).start()
    assert run.status == "completed", run.error
    assert run.trace == ["step:book", "step:book", "undo", "step:echo"]
    assert run.result["after"] == "continued"
    assert run.result["outcomes"] == [
        {
            "step": "book",
            "seq": 1,
            "status": "completed",
            "output": {"released": "booking-b"},
            "error": None,
        },
        {
            "step": "book",
            "seq": 0,
            "status": "completed",
            "output": {"released": "booking-a"},
            "error": None,
        },
    ]
    assert BOOKED == [
        {"input": {"room": "b"}, "output": "booking-b", "failure": None},
        {"input": {"room": "a"}, "output": "booking-a", "failure": None},
    ]
    assert run.compensations == [("book", "completed"), ("book", "completed")]
    assert run.history[0].compensation is not None
    assert run.history[0].compensation["status"] == "completed"


@sm.workflow
def undo_nothing() -> Gen:
    outcomes = yield sm.undo()
    return outcomes


def test_undo_with_nothing_to_compensate_returns_empty_list() -> None:
    run = WorkflowTester(undo_nothing).start()
    assert run.status == "completed"
    assert run.result == []


@sm.workflow
def undo_twice() -> Gen:
    yield book("x")
    first = yield sm.undo()
    second = yield sm.undo()
    return [len(first), len(second)]


def test_undo_never_compensates_a_step_twice() -> None:
    BOOKED.clear()
    run = WorkflowTester(undo_twice).start()
    assert run.result == [1, 0]
    assert len(BOOKED) == 1


# --------------------------------------------------------------------------- current_run


@sm.workflow
def introspective() -> Gen:
    before = sm.current_run()
    yield sm.log("one")
    decision = yield sm.approval("go")
    after = sm.current_run()
    return {
        "run_id": before.run_id,
        "workflow": before.workflow,
        "trigger": before.trigger,
        "schedule": before.schedule,
        "replaying_before": before.is_replaying,
        "replaying_after": after.is_replaying,
        "length_before": before.history_length,
        "length_after": after.history_length,
        "approved": decision.approved,
    }


def test_current_run_on_first_execution() -> None:
    tester = WorkflowTester(introspective)
    run = tester.start()
    tester.approve(run, actor="sam")
    assert run.result == {
        "run_id": run.id,
        "workflow": "introspective",
        "trigger": "manual",
        "schedule": None,
        "replaying_before": False,
        "replaying_after": False,
        "length_before": 0,
        "length_after": 2,
        "approved": True,
    }


def test_current_run_is_replaying_when_a_fresh_interpreter_replays() -> None:
    tester = WorkflowTester(introspective)
    run = tester.start()
    tester.approve(run, actor="sam")
    act = replay(introspective, run.history)
    assert act.result["run_id"] == run.id
    assert act.result["replaying_before"] is True
    # A finished run being replayed is replaying all the way to its end.
    assert act.result["replaying_after"] is True


def test_current_run_after_a_cold_resume_stops_replaying_at_new_code() -> None:
    tester = WorkflowTester(introspective)
    run = tester.start()
    history = run.history.copy()
    state.deliver_decision(
        history, 1, approved=True, actor="sam", comment=None, metadata=None, now=tester.now
    )
    act = Interpreter(introspective, run_id=run.id, payload=run.payload).advance(
        history, now=tester.now
    )
    assert act.outcome == "completed"
    assert act.result["replaying_before"] is True  # re-executing recorded code
    assert act.result["replaying_after"] is False  # past the history: new code


def test_current_run_outside_a_workflow_raises() -> None:
    with pytest.raises(RuntimeError, match="outside workflow code"):
        sm.current_run()


# --------------------------------------------------------------------------- step_context


@sm.workflow
def keyed_flow() -> Gen:
    yield sm.log("before")
    seen = yield keyed("k")
    return seen


def test_step_context_inside_a_step() -> None:
    CONTEXTS.clear()
    run = WorkflowTester(keyed_flow).start()
    assert run.status == "completed", run.error
    key = f"{run.id}:1"
    assert CONTEXTS == [
        {"run_id": run.id, "step": "keyed", "seq": 1, "attempt": 1, "key": key},
        {"run_id": run.id, "step": "keyed", "seq": 1, "attempt": 2, "key": key},
    ]
    assert run.result == CONTEXTS[-1]


def test_step_context_outside_a_step_raises() -> None:
    with pytest.raises(RuntimeError, match="outside a running step"):
        sm.step_context()
    # Calling the undecorated function directly is outside a step too.
    with pytest.raises(RuntimeError):
        keyed.fn("direct")


# --------------------------------------------------------------------------- non-commands


@sm.workflow
def yields_a_value() -> Gen:
    yield sm.log("fine so far")
    yield 42


@sm.workflow
def yields_a_step_object() -> Gen:
    yield add  # forgot to call it


def test_yielding_a_bare_value_suspends_with_definition_error() -> None:
    run = WorkflowTester(yields_a_value).start()
    assert run.status == "suspended"
    assert run.reason == "workflow_error"
    assert run.error is not None
    assert run.error["type"] == "squidmesh.errors.DefinitionError"
    assert "42" in run.error["message"]
    assert "test_commands.py:" in run.error["message"]
    assert run.trace == ["log"]  # the bad yield recorded nothing
    assert run.waiting_on == []


def test_yielding_an_uncalled_step_suspends_naming_it() -> None:
    run = WorkflowTester(yields_a_step_object).start()
    assert run.status == "suspended"
    assert run.reason == "workflow_error"
    assert run.error is not None
    assert run.error["type"] == "squidmesh.errors.DefinitionError"
    assert "step add" in run.error["message"]
    assert "forget to call" in run.error["message"]
    assert run.trace == []


# --------------------------------------------------------------------------- invalid transitions


def test_approve_a_run_not_waiting_for_approval_is_refused() -> None:
    tester = WorkflowTester(gatekeeper)
    run = tester.start()
    with pytest.raises(sm.InvalidTransitionError) as info:
        tester.approve(run, actor="gandalf")
    assert info.value.action == "approve_run"
    assert info.value.status == "paused"
    with pytest.raises(sm.InvalidTransitionError):
        tester.reject(run, actor="gandalf")
    # Nothing changed: the pause still takes its unblock.
    assert run.status == "paused"
    tester.unblock(run, "ok")
    assert run.result == {"got": "ok"}


def test_unblock_a_run_not_paused_is_refused() -> None:
    tester = WorkflowTester(council)
    run = tester.start()
    with pytest.raises(sm.InvalidTransitionError) as info:
        tester.unblock(run)
    assert info.value.action == "unblock_run"
    tester.approve(run, actor="elrond")
    with pytest.raises(sm.InvalidTransitionError):
        tester.approve(run, actor="elrond")  # double approval
    with pytest.raises(sm.InvalidTransitionError):
        tester.unblock(run)


def test_cancel_a_finished_run_is_refused() -> None:
    tester = WorkflowTester(arithmetic)
    run = tester.start()
    with pytest.raises(sm.InvalidTransitionError) as info:
        tester.cancel(run)
    assert info.value.action == "cancel_run"
    assert info.value.status == "completed"


@pytest.mark.parametrize("actor", ["", "   "])
def test_approve_without_actor_is_a_review_error(actor: str) -> None:
    tester = WorkflowTester(council)
    run = tester.start()
    with pytest.raises(sm.ReviewError):
        tester.approve(run, actor=actor)
    with pytest.raises(sm.ReviewError):
        tester.reject(run, actor=actor)
    assert run.status == "paused"
    assert run.history[0].status == "running"


# --------------------------------------------------------------------------- cancel

UNWIND: list[str] = []


@sm.workflow
def cancellable() -> Gen:
    yield book("rivendell")
    try:
        yield sm.approval("proceed")
    except Exception:  # must not catch RunCancelled
        UNWIND.append("except Exception")
        yield echo("swallowed")
        return "swallowed"
    finally:
        UNWIND.append("finally")
    return "approved"


def test_cancel_delivers_run_cancelled_into_the_workflow() -> None:
    BOOKED.clear()
    tester = WorkflowTester(cancellable)
    run = tester.start()
    assert run.status == "paused"
    UNWIND.clear()
    tester.cancel(run)
    assert UNWIND == ["finally"]
    assert run.status == "cancelled"
    assert run.history[1].status == "cancelled"
    assert run.trace == ["step:book", "approval:proceed"]
    assert run.waiting_on == []
    assert BOOKED == []  # no compensation unless asked
    with pytest.raises(sm.InvalidTransitionError):
        tester.approve(run, actor="elrond")
    with pytest.raises(sm.InvalidTransitionError):
        tester.cancel(run)


def test_cancel_with_compensate_runs_compensations() -> None:
    BOOKED.clear()
    tester = WorkflowTester(cancellable)
    run = tester.start()
    tester.cancel(run, compensate=True)
    assert run.status == "cancelled"
    assert BOOKED == [
        {"input": {"room": "rivendell"}, "output": "booking-rivendell", "failure": None}
    ]
    assert run.compensations == [("book", "completed")]
    assert run.history[0].compensation is not None
    assert run.history[0].compensation["status"] == "completed"


def test_cancel_a_sleeping_run_removes_its_timer() -> None:
    tester = WorkflowTester(sleeper)
    run = tester.start()
    tester.cancel(run)
    assert run.status == "cancelled"
    assert run.history[0].status == "cancelled"
    assert tester.advance_to_next_timer() is None


def test_status_is_a_str_enum() -> None:
    run = WorkflowTester(arithmetic).start()
    assert run.status is sm.RunStatus.COMPLETED
    assert isinstance(run.status, str)


def test_default_start_is_a_fixed_aware_instant() -> None:
    assert WorkflowTester(arithmetic).now == DEFAULT_START
    assert DEFAULT_START.tzinfo is not None


@sm.step(retry=sm.Retry(max_attempts=5, backoff=sm.Backoff.fixed(10)))
def never_works() -> None:
    raise ConnectionError("down")


@sm.workflow
def stubborn() -> Gen:
    yield never_works()


def test_cancel_a_retrying_run_stops_its_retries() -> None:
    tester = WorkflowTester(stubborn)
    run = tester.start()
    assert run.status == "retrying"
    tester.cancel(run)
    assert run.status == "cancelled"
    assert run.history[0].status == "cancelled"
    tester.advance(100)
    assert len(run.step_attempts("never_works")) == 1


@sm.workflow
def buggy_after_step() -> Gen:
    yield book("moria")
    return 1 // 0


def test_cancel_a_suspended_run() -> None:
    BOOKED.clear()
    tester = WorkflowTester(buggy_after_step)
    run = tester.start()
    assert run.status == "suspended"
    tester.cancel(run, compensate=True)
    assert run.status == "cancelled"
    assert run.compensations == [("book", "completed")]
