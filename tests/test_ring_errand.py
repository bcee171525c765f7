from __future__ import annotations

# The Ring Errand (examples/ring_errand.py) driven through every path in memory.
#
# Every test uses ``WorkflowTester`` with ``replay_each_command=True`` (the default), so
# each stop below is also checked by a fresh replay of the history: these are determinism
# tests as much as behaviour tests.
#
# The golden history tests/histories/ring_errand_happy.json is written by running this
# module from the repository root: ``python -m tests.test_ring_errand``.
import json
import logging
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import squidmesh as sm
from examples import ring_errand as example
from examples.ring_errand import (
    cross_moria,
    insult_sauron,
    look_brave,
    march_to_gate,
    pack_lembas,
    reserve_eagle,
    ring_errand,
    toss_ring,
    walk_home,
)
from squidmesh.testing import (
    TestRun,
    Wait,
    WorkflowTester,
    assert_golden_histories,
    raises,
    replay,
)

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
HISTORIES = Path(__file__).resolve().parent / "histories"
GOLDEN = HISTORIES / "ring_errand_happy.json"
REPO = Path(__file__).resolve().parents[1]

UP_TO_COUNCIL = ["step:pack_lembas", "log", "sleep", "pause:hide_at_prancing_pony"]
COUNCIL = [*UP_TO_COUNCIL, "approval:council_vote"]
HAPPY_TRACE = [
    *COUNCIL,
    "step:cross_moria",
    "step:reserve_eagle",
    "step:insult_sauron",
    "join",
    "step:march_to_gate",
    "step:look_brave",
    "log",
    "step:toss_ring",
]
RETREAT_TRACE = [*COUNCIL, "step:cross_moria", "undo", "step:walk_home"]


def at(seconds: float) -> str:
    """ISO timestamp ``seconds`` after the tester's start."""
    return (T0 + timedelta(seconds=seconds)).isoformat()


def to_council(tester: WorkflowTester, payload: dict[str, Any] | None = None) -> TestRun:
    """Start a run and take it to the council vote (the sleep fired, the pause unblocked)."""
    run = tester.start(payload or {"ring_id": "one-ring"})
    assert tester.advance_to_next_timer() == T0 + timedelta(seconds=5)
    tester.unblock(run, actor="strider", comment="pipeweed restocked")
    assert status(run) is sm.RunStatus.PAUSED
    assert run.trace == COUNCIL
    return run


def entry(run: TestRun, name: str) -> sm.Entry:
    (found,) = [e for e in run.history if e.name == name]
    return found


def status(run: TestRun) -> sm.RunStatus:
    """The run's current status (a call, so type checkers do not narrow across actions)."""
    return run.status


def statuses(run: TestRun) -> list[str]:
    return [e.status for e in run.history]


def spy_compensation(monkeypatch: pytest.MonkeyPatch, step: Any) -> list[dict[str, Any]]:
    """Record the keyword arguments each call of ``step``'s compensation receives."""
    calls: list[dict[str, Any]] = []
    real = step.compensate

    def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(step, "compensate", spy)
    return calls


# --------------------------------------------------------------------------- happy path


def test_happy_path_every_stop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="squidmesh.workflow")
    tester = WorkflowTester(ring_errand)
    assert tester.replay_each_command is True
    before = date.today()
    run = tester.start({"ring_id": "one-ring"})
    after = date.today()

    # Payload defaults were applied and stored as JSON, once, at run creation.
    assert run.trigger == "leave_shire"
    assert run.payload["bearer"] == "Frodo"
    assert run.payload["snack_count"] == 11
    assert run.payload["fellowship"] == ["Sam"]
    started_on = run.payload["started_on"]
    assert isinstance(started_on, str)
    assert date.fromisoformat(started_on) in {before, after}
    loaded = ring_errand.load_payload(run.payload, "leave_shire")
    assert isinstance(loaded, example.Errand)
    assert loaded.started_on == date.fromisoformat(started_on)
    assert run.history.payload == run.payload

    # Stop 1: provisions packed, departure logged, sleeping 5 s for Gandalf.
    assert status(run) is sm.RunStatus.RUNNING
    assert run.trace == ["step:pack_lembas", "log", "sleep"]
    assert run.waiting_on == [Wait("sleep", "sleep", 2, at(5))]
    assert [str(w) for w in run.waiting_on] == ["sleep"]
    pack = run.history[0]
    assert pack.status == "completed"
    assert pack.input == {"bearer": "Frodo", "snack_count": 11}
    assert pack.result == {"lembas": 11, "packed_by": "Frodo"}
    assert pack.attempts == 1
    assert pack.meta["compensate"] == "examples.ring_errand:unpack_lembas"
    assert run.history[2].input == {"seconds": 5.0}
    assert run.logs == [
        {
            "message": "Leaving the Shire",
            "level": "info",
            "fields": {"bearer": "Frodo", "lembas": 11},
            "seq": 1,
        }
    ]

    # The virtual clock: nothing fires before 5 s have passed.
    tester.advance(4)
    assert tester.now == T0 + timedelta(seconds=4)
    assert status(run) is sm.RunStatus.RUNNING
    assert run.trace == ["step:pack_lembas", "log", "sleep"]

    # Stop 2: the sleep fired at exactly 5 s; hiding at the Prancing Pony (paused).
    tester.advance(1)
    assert tester.now == T0 + timedelta(seconds=5)
    assert run.history[2].status == "completed"
    assert run.history[2].completed_at == at(5)
    assert status(run) is sm.RunStatus.PAUSED
    assert run.trace == UP_TO_COUNCIL
    assert run.waiting_on == [Wait("pause", "hide_at_prancing_pony", 3)]
    assert run.history[3].input == {"reason": "wait for Strider"}

    # Approving a run that waits at a pause is refused and changes nothing.
    with pytest.raises(sm.InvalidTransitionError):
        tester.approve(run, actor="elrond")
    assert run.trace == UP_TO_COUNCIL

    # Stop 3: unblocked; the council votes (paused at the approval).
    tester.unblock(run, {"strider": "found"}, actor="strider")
    assert run.history[3].status == "completed"
    assert run.history[3].result == {"strider": "found"}
    assert status(run) is sm.RunStatus.PAUSED
    assert run.trace == COUNCIL
    assert run.waiting_on == [Wait("approval", "council_vote", 4)]
    with pytest.raises(sm.ReviewError):
        tester.approve(run, actor=" ")
    with pytest.raises(sm.InvalidTransitionError):
        tester.unblock(run)

    # Stop 4: approved; the rest runs to completion.
    tester.approve(run, actor="elrond", comment="one does not simply", metadata={"votes": 9})
    assert status(run) is sm.RunStatus.COMPLETED
    assert run.result == "Frodo crossed Moria on 11 lembas"
    assert run.error is None
    assert run.reason is None
    assert run.waiting_on == []
    assert run.trace == HAPPY_TRACE
    assert set(statuses(run)) == {"completed"}
    assert run.history[4].result == {
        "approved": True,
        "decision": "approved",
        "actor": "elrond",
        "comment": "one does not simply",
        "metadata": {"votes": 9},
        "decided_at": at(5),
    }
    assert entry(run, "cross_moria").input == {
        "bearer": "Frodo",
        "provisions": {"lembas": 11, "packed_by": "Frodo"},
    }
    assert entry(run, "reserve_eagle").result == {
        "reservation": "eagle-for-one-ring",
        "eagle": "Gwaihir",
    }
    assert entry(run, "insult_sauron").meta["compensatable"] is False
    assert entry(run, "toss_ring").meta["irreversible"] is True
    assert entry(run, "toss_ring").result == "one-ring destroyed"
    for step in (cross_moria, reserve_eagle, insult_sauron, march_to_gate, look_brave, toss_ring):
        assert [a.status for a in run.step_attempts(step.name)] == ["completed"]
    assert run.compensations == []
    assert all(e.compensation is None for e in run.history)
    assert run.history.outcome == "completed"
    assert run.history.result == run.result

    # Each log line was emitted exactly once, despite a replay after every command.
    assert [line["message"] for line in run.logs] == ["Leaving the Shire", "Distraction in place"]
    assert run.logs[1]["fields"] == {
        "march": "1000 soldiers at the Black Gate",
        "brave": "looking very brave",
        "eagle": "Gwaihir",
    }
    emitted = [r.getMessage() for r in caplog.records if r.name == "squidmesh.workflow"]
    assert emitted == ["Leaving the Shire", "Distraction in place"]

    # A terminal run accepts no more actions.
    with pytest.raises(sm.InvalidTransitionError):
        tester.cancel(run)


def test_explicit_started_on_is_kept_as_given() -> None:
    tester = WorkflowTester(ring_errand)
    run = tester.start({"ring_id": "one-ring", "started_on": "3018-09-23", "bearer": "Sam"})
    assert run.payload["started_on"] == "3018-09-23"
    assert run.payload["bearer"] == "Sam"
    assert run.history[0].input == {"bearer": "Sam", "snack_count": 11}


# --------------------------------------------------------------------------- reject


def test_reject_walks_home() -> None:
    tester = WorkflowTester(ring_errand)
    run = to_council(tester)
    tester.reject(run, actor="elrond", comment="too much singing")
    assert status(run) is sm.RunStatus.COMPLETED
    assert run.result == "went home"
    assert run.trace == [*COUNCIL, "step:walk_home"]
    assert run.waiting_on == []
    decision = run.history[4].result
    assert decision["approved"] is False
    assert decision["decision"] == "rejected"
    assert decision["actor"] == "elrond"
    assert decision["comment"] == "too much singing"
    assert entry(run, "walk_home").result == "Frodo walked home awkwardly"
    # A rejection is a decision, not a failure: nothing failed, nothing compensated.
    assert run.step_attempts("cross_moria") == []
    assert run.compensations == []
    assert run.error is None
    assert set(statuses(run)) == {"completed"}


# --------------------------------------------------------------------------- retries


def test_cross_moria_recovers_after_transient_failures() -> None:
    tester = WorkflowTester(
        ring_errand, steps={cross_moria: raises(ConnectionError("cave troll"), times=2)}
    )
    run = to_council(tester)
    tester.approve(run, actor="elrond")
    moria = entry(run, "cross_moria")

    # Attempt 1 failed at 5 s; exponential backoff min=1: attempt 2 is due at 6 s.
    assert status(run) is sm.RunStatus.RETRYING
    assert run.waiting_on == [Wait("step", "cross_moria", 5, at(6))]
    assert moria.status == "pending"
    assert moria.attempts == 1
    assert moria.error is not None
    assert moria.error["type"] == "builtins.ConnectionError"
    assert moria.error["message"] == "cave troll"
    assert moria.error["retryable"] is True
    assert [a.status for a in run.step_attempts("cross_moria")] == ["failed"]

    tester.advance(0.5)
    assert status(run) is sm.RunStatus.RETRYING
    assert moria.attempts == 1

    # Attempt 2 fails at 6 s; the backoff doubles: attempt 3 is due at 8 s.
    assert tester.advance_to_next_timer() == T0 + timedelta(seconds=6)
    assert status(run) is sm.RunStatus.RETRYING
    assert run.waiting_on == [Wait("step", "cross_moria", 5, at(8))]
    assert moria.attempts == 2
    assert run.trace == [*COUNCIL, "step:cross_moria"]  # attempts add no positions

    tester.advance(1.5)
    assert status(run) is sm.RunStatus.RETRYING

    # Attempt 3 runs the real function: the errand goes on as on the happy path.
    tester.advance(0.5)
    assert status(run) is sm.RunStatus.COMPLETED
    assert run.result == "Frodo crossed Moria on 11 lembas"
    assert run.trace == HAPPY_TRACE
    attempts = run.step_attempts("cross_moria")
    assert [(a.number, a.status) for a in attempts] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    assert [a.started_at for a in attempts] == [at(5), at(6), at(8)]
    assert attempts[0].error is not None
    assert attempts[0].error["type"] == "builtins.ConnectionError"
    assert moria.status == "completed"
    assert moria.attempts == 3
    assert moria.error is None
    assert moria.completed_at == at(8)
    assert run.compensations == []


def test_cross_moria_failing_for_good_undoes_and_retreats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = spy_compensation(monkeypatch, pack_lembas)
    tester = WorkflowTester(ring_errand, steps={cross_moria: raises(ConnectionError("balrog"))})
    run = to_council(tester)
    tester.approve(run, actor="elrond")
    assert status(run) is sm.RunStatus.RETRYING
    tester.advance(10)

    assert status(run) is sm.RunStatus.COMPLETED
    assert run.result == "retreated"
    assert run.trace == RETREAT_TRACE
    assert run.error is None
    assert run.waiting_on == []

    # Three attempts (max_attempts=3) at 5 s, 6 s and 8 s, then the step failed.
    attempts = run.step_attempts("cross_moria")
    assert [(a.number, a.status, a.started_at) for a in attempts] == [
        (1, "failed", at(5)),
        (2, "failed", at(6)),
        (3, "failed", at(8)),
    ]
    moria = entry(run, "cross_moria")
    assert moria.status == "failed"
    assert moria.attempts == 3
    assert moria.error is not None
    assert moria.error["type"] == "builtins.ConnectionError"
    assert moria.error["message"] == "balrog"
    assert moria.error["retryable"] is True

    # sm.undo() compensated pack_lembas: the outcome is on the entry and returned by undo.
    outcome = {"status": "completed", "output": "returned 11 lembas", "error": None}
    pack = entry(run, "pack_lembas")
    assert pack.compensation is not None
    assert {k: pack.compensation[k] for k in outcome} == outcome
    undo = entry(run, "undo")
    assert undo.status == "completed"
    assert undo.input == {"steps": [0]}
    assert undo.result == [{"step": "pack_lembas", "seq": 0, **outcome}]
    assert run.compensations == [("pack_lembas", "completed")]
    assert calls == [
        {
            "input": {"bearer": "Frodo", "snack_count": 11},
            "output": {"lembas": 11, "packed_by": "Frodo"},
            "failure": None,
        }
    ]
    assert entry(run, "walk_home").result == "Frodo walked home awkwardly"
    assert [e.name for e in run.history if e.kind == "step" and e.status == "completed"] == [
        "pack_lembas",
        "walk_home",
    ]


def test_non_retryable_failure_gets_one_attempt_only() -> None:
    tester = WorkflowTester(ring_errand)
    run = to_council(tester, {"ring_id": "one-ring", "snack_count": 0})
    assert entry(run, "pack_lembas").result == {"lembas": 0, "packed_by": "Frodo"}
    tester.approve(run, actor="elrond")

    # No retry timer was waited for: the run finished at the moment of approval.
    assert tester.now == T0 + timedelta(seconds=5)
    assert status(run) is sm.RunStatus.COMPLETED
    assert run.result == "retreated"
    assert run.trace == RETREAT_TRACE
    attempts = run.step_attempts("cross_moria")
    assert [(a.number, a.status) for a in attempts] == [(1, "failed")]
    moria = entry(run, "cross_moria")
    assert moria.status == "failed"
    assert moria.attempts == 1
    assert moria.error is not None
    assert moria.error["type"] == "squidmesh.errors.NonRetryable"
    assert moria.error["message"] == "nobody crosses Moria without lembas"
    assert moria.error["retryable"] is False
    assert entry(run, "undo").result == [
        {
            "step": "pack_lembas",
            "seq": 0,
            "status": "completed",
            "output": "returned 0 lembas",
            "error": None,
        }
    ]
    assert run.compensations == [("pack_lembas", "completed")]


# --------------------------------------------------------------------------- saga failure


def test_failure_after_reserve_eagle_compensates_in_reverse_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    eagle_calls = spy_compensation(monkeypatch, reserve_eagle)
    lembas_calls = spy_compensation(monkeypatch, pack_lembas)
    tester = WorkflowTester(ring_errand, steps={toss_ring: raises(RuntimeError("Gollum bit me"))})
    run = to_council(tester)
    tester.approve(run, actor="elrond")

    assert status(run) is sm.RunStatus.FAILED
    assert run.reason == "step_failed"
    assert run.result is None
    assert run.waiting_on == []
    assert run.trace == HAPPY_TRACE
    assert run.history.outcome == "failed"

    # The error is recorded on the run (with the step that failed) and on the entry.
    assert run.error is not None
    assert run.error["type"] == "builtins.RuntimeError"
    assert run.error["message"] == "Gollum bit me"
    assert run.error["step"] == "toss_ring"
    assert run.error["seq"] == 12
    assert run.error["attempts"] == 1
    assert "compensation_failures" not in run.error
    toss = entry(run, "toss_ring")
    assert toss.status == "failed"
    assert toss.error is not None
    assert toss.error["type"] == "builtins.RuntimeError"
    assert [a.status for a in run.step_attempts("toss_ring")] == ["failed"]

    # Compensations ran newest completion first; insult_sauron cannot be undone.
    assert run.compensations == [("reserve_eagle", "completed"), ("pack_lembas", "completed")]
    eagle = entry(run, "reserve_eagle").compensation
    lembas = entry(run, "pack_lembas").compensation
    assert eagle is not None and lembas is not None
    assert (eagle["status"], eagle["output"], eagle["error"]) == (
        "completed",
        "cancelled eagle-for-one-ring",
        None,
    )
    assert (lembas["status"], lembas["output"]) == ("completed", "returned 11 lembas")
    assert entry(run, "insult_sauron").compensation is None
    assert entry(run, "cross_moria").compensation is None  # declares no compensation
    eagle_order, sauron_order = entry(run, "reserve_eagle").order, entry(run, "insult_sauron").order
    assert eagle_order is not None and sauron_order is not None and eagle_order < sauron_order

    # Each compensation got the step's input and output and the error behind the rollback.
    assert len(eagle_calls) == 1 and len(lembas_calls) == 1
    assert eagle_calls[0]["input"] == {"ring_id": "one-ring"}
    assert eagle_calls[0]["output"] == {"reservation": "eagle-for-one-ring", "eagle": "Gwaihir"}
    assert eagle_calls[0]["failure"]["type"] == "builtins.RuntimeError"
    assert eagle_calls[0]["failure"]["step"] == "toss_ring"
    assert lembas_calls[0]["failure"] == eagle_calls[0]["failure"]


def test_failing_compensation_is_recorded() -> None:
    def broken_cancel(**_: Any) -> str:
        raise TimeoutError("the eagles are not answering")

    tester = WorkflowTester(ring_errand, steps={toss_ring: raises(RuntimeError("Gollum"))})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reserve_eagle, "compensate", broken_cancel)
        run = to_council(tester)
        tester.approve(run, actor="elrond")
    assert status(run) is sm.RunStatus.FAILED
    assert run.reason == "compensation_failed"
    assert run.compensations == [("reserve_eagle", "failed"), ("pack_lembas", "completed")]
    assert run.error is not None
    (failure,) = run.error["compensation_failures"]
    assert failure["step"] == "reserve_eagle"
    assert failure["error"]["type"] == "builtins.TimeoutError"
    eagle = entry(run, "reserve_eagle").compensation
    assert eagle is not None and eagle["status"] == "failed"


# --------------------------------------------------------------------------- cancellation


def test_cancel_while_paused() -> None:
    tester = WorkflowTester(ring_errand)
    run = tester.start({"ring_id": "one-ring"})
    tester.advance(5)
    assert status(run) is sm.RunStatus.PAUSED
    tester.cancel(run)
    assert status(run) is sm.RunStatus.CANCELLED
    assert run.waiting_on == []
    assert run.trace == UP_TO_COUNCIL
    assert statuses(run) == ["completed", "completed", "completed", "cancelled"]
    assert run.compensations == []
    assert entry(run, "pack_lembas").compensation is None
    assert run.history.outcome == "cancelled"
    assert run.result is None
    with pytest.raises(sm.InvalidTransitionError):
        tester.unblock(run)
    with pytest.raises(sm.InvalidTransitionError):
        tester.cancel(run)


def test_cancel_with_compensation_at_the_council(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_compensation(monkeypatch, pack_lembas)
    tester = WorkflowTester(ring_errand)
    run = to_council(tester)
    tester.cancel(run, compensate=True)
    assert status(run) is sm.RunStatus.CANCELLED
    assert run.trace == COUNCIL
    assert statuses(run)[-1] == "cancelled"
    assert run.compensations == [("pack_lembas", "completed")]
    comp = entry(run, "pack_lembas").compensation
    assert comp is not None and comp["output"] == "returned 11 lembas"
    assert calls == [
        {
            "input": {"bearer": "Frodo", "snack_count": 11},
            "output": {"lembas": 11, "packed_by": "Frodo"},
            "failure": None,
        }
    ]
    with pytest.raises(sm.InvalidTransitionError):
        tester.approve(run, actor="elrond")


# --------------------------------------------------------------------------- join


def test_join_feeds_both_results_in_argument_order() -> None:
    tester = WorkflowTester(
        ring_errand,
        steps={
            march_to_gate: lambda army: f"{army} riders of Rohan",  # stub by callable
            "look_brave": "trembling bravely",  # stub by value, keyed by name
        },
    )
    run = to_council(tester, {"ring_id": "one-ring", "fellowship": ["Sam", "Merry", "Pippin"]})
    tester.approve(run, actor="elrond")
    assert status(run) is sm.RunStatus.COMPLETED

    join = entry(run, "join")
    march, brave = run.history[join.seq + 1], run.history[join.seq + 2]
    assert join.input == {"branches": 2, "return_exceptions": False}
    assert (march.name, march.parent, march.input) == ("march_to_gate", join.seq, {"army": 3000})
    assert (brave.name, brave.parent, brave.input) == ("look_brave", join.seq, {})
    assert march.result == "3000 riders of Rohan"
    assert brave.result == "trembling bravely"
    # Both branches resolved before the join did; the join is fed in argument order.
    assert march.order is not None and brave.order is not None and join.order is not None
    assert join.order > max(march.order, brave.order)
    assert join.status == "completed"
    assert run.logs[-1]["fields"] == {
        "march": "3000 riders of Rohan",
        "brave": "trembling bravely",
        "eagle": "Gwaihir",
    }


def test_join_branch_failure_fails_the_run_and_compensates() -> None:
    tester = WorkflowTester(ring_errand, steps={look_brave: raises(ValueError("knees shaking"))})
    run = to_council(tester)
    tester.approve(run, actor="elrond")
    assert status(run) is sm.RunStatus.FAILED
    assert run.error is not None and run.error["step"] == "look_brave"
    join = entry(run, "join")
    assert join.status == "failed"
    assert "step:toss_ring" not in run.trace
    assert run.compensations == [("reserve_eagle", "completed"), ("pack_lembas", "completed")]


# --------------------------------------------------------------------------- triggers


def test_cron_trigger_validates_its_payload() -> None:
    tester = WorkflowTester(ring_errand)
    assert [t.name for t in ring_errand.triggers] == ["leave_shire", "nightly"]
    nightly = ring_errand.trigger("nightly")
    assert isinstance(nightly, sm.CronTrigger)
    assert (nightly.expr, nightly.timezone) == ("0 21 * * *", "Etc/UTC")

    with pytest.raises(sm.PayloadError) as caught:
        tester.start(trigger="nightly")
    assert caught.value.missing_fields == ["ring_id"]
    assert caught.value.unknown_fields == []
    assert caught.value.invalid_types == {}
    assert "ring_id" in str(caught.value)
    assert tester.runs == []  # nothing was started

    with pytest.raises(sm.PayloadError) as caught:
        tester.start({"ring_id": "x", "snack_count": "many", "wizard": "Gandalf"}, "nightly")
    assert caught.value.unknown_fields == ["wizard"]
    assert caught.value.invalid_types == {"snack_count": "int"}
    assert tester.runs == []

    with pytest.raises(sm.UnknownTriggerError):
        tester.start({"ring_id": "x"}, trigger="hourly")

    run = tester.start({"ring_id": "nightly-ring"}, trigger="nightly")
    assert run.trigger == "nightly"
    assert run.payload["bearer"] == "Frodo"
    assert run.payload["snack_count"] == 11
    assert status(run) is sm.RunStatus.RUNNING
    assert run.trace == ["step:pack_lembas", "log", "sleep"]
    tester.advance(5)
    tester.unblock(run)
    tester.approve(run, actor="elrond")
    assert status(run) is sm.RunStatus.COMPLETED
    assert entry(run, "toss_ring").result == "nightly-ring destroyed"


# --------------------------------------------------------------------------- golden history


def happy_history() -> sm.History:
    """The happy path with a fixed run id and a pinned start date: reproducible JSON."""
    tester = WorkflowTester(ring_errand, start=T0)
    run = tester.start(
        {"ring_id": "one-ring", "started_on": T0.date().isoformat()},
        run_id="00000000-0000-4000-8000-000000000001",
    )
    tester.advance(5)
    tester.unblock(run)
    tester.approve(run, actor="elrond", comment="approved by the council")
    assert status(run) is sm.RunStatus.COMPLETED
    return run.history


def portable(history: sm.History) -> dict[str, Any]:
    """``history.to_json()`` with ``loc`` made relative to the repository root."""
    data = history.to_json()
    for item in data["entries"]:
        loc = item.get("loc")
        if loc:
            path, _, line = loc.rpartition(":")
            try:
                path = Path(path).resolve().relative_to(REPO).as_posix()
            except ValueError:
                path = Path(path).name
            item["loc"] = f"{path}:{line}"
    return data


def outline(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (e["seq"], e["kind"], e["name"], e["status"], e["input"], e["result"])
        for e in data["entries"]
    ]


def test_golden_history_is_current() -> None:
    stored = json.loads(GOLDEN.read_text())
    fresh = portable(happy_history())
    assert outline(stored) == outline(fresh)
    assert stored["outcome"] == fresh["outcome"] == "completed"
    assert stored["result"] == fresh["result"] == "Frodo crossed Moria on 11 lembas"
    assert stored["workflow"] == "ring_errand"
    assert stored["trigger"] == "leave_shire"
    assert all(e["loc"].startswith("examples/ring_errand.py:") for e in stored["entries"])


def test_golden_histories_replay() -> None:
    checked = assert_golden_histories([ring_errand], HISTORIES)
    assert GOLDEN in checked
    act = replay(ring_errand, json.loads(GOLDEN.read_text()))
    assert act.outcome == "completed"
    assert act.result == "Frodo crossed Moria on 11 lembas"
    assert act.new_entries == []


def test_golden_history_catches_a_changed_workflow() -> None:
    data = json.loads(GOLDEN.read_text())
    moria = next(e for e in data["entries"] if e["name"] == "cross_moria")
    moria["name"] = "climb_caradhras"
    with pytest.raises(sm.NondeterminismError) as caught:
        replay(ring_errand, data)
    assert caught.value.seq == moria["seq"]
    assert "cross_moria" in caught.value.expected
    assert "climb_caradhras" in caught.value.recorded


def test_steps_are_plain_functions_via_fn() -> None:
    provisions = pack_lembas.fn("Sam", snack_count=3)
    assert provisions == example.Provisions(lembas=3, packed_by="Sam")
    report = cross_moria.fn("Sam", provisions)
    assert report.summary == "Sam crossed Moria on 3 lembas"
    with pytest.raises(sm.NonRetryable):
        cross_moria.fn("Sam", example.Provisions(lembas=0, packed_by="Sam"))
    assert walk_home.fn("Sam") == "Sam walked home awkwardly"
    call = pack_lembas("Sam", snack_count=3)
    assert isinstance(call, sm.StepCall)
    assert call.arguments == {"bearer": "Sam", "snack_count": 3}


if __name__ == "__main__":  # regenerate the golden history
    HISTORIES.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(portable(happy_history()), indent=2, sort_keys=False) + "\n")
    print(f"wrote {GOLDEN.relative_to(REPO)}")
