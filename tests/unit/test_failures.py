"""Failures: retries, StepFailed, compensations, Fail, workflow bugs and resume."""

from __future__ import annotations

import sys
from collections.abc import Generator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.testing import WorkflowTester, raises, replay

Gen = Generator[Any, Any, Any]
T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


class OrcAttack(Exception):
    """A custom error raised by a step."""


class UrukHaiAttack(OrcAttack):
    pass


# --------------------------------------------------------------------------- retries

ATTEMPTS: dict[str, int] = {}


def _count(name: str) -> int:
    ATTEMPTS[name] = ATTEMPTS.get(name, 0) + 1
    return ATTEMPTS[name]


@sm.step(retry=sm.Retry(max_attempts=3, backoff=sm.Backoff.exponential(min=1, max=10)))
def cross_moria(bearer: str) -> str:
    if sm.step_context().attempt < 3:
        raise OrcAttack(f"orcs (attempt {sm.step_context().attempt})")
    return f"{bearer} crossed"


@sm.step(retry=sm.Retry(max_attempts=3, backoff=sm.Backoff.exponential(min=1, max=10)))
def always_orcs() -> str:
    raise UrukHaiAttack("too many")


@sm.workflow
def moria_run() -> Gen:
    report = yield cross_moria("Frodo")
    return report


def test_retries_follow_exponential_backoff_on_the_virtual_clock() -> None:
    tester = WorkflowTester(moria_run, start=T0)
    run = tester.start()
    assert run.status == "retrying"
    assert [(a.number, a.status, a.started_at) for a in run.step_attempts("cross_moria")] == [
        (1, "failed", at(0))
    ]
    assert run.waiting_on[0].until == at(1)

    tester.advance(0.5)
    assert len(run.step_attempts("cross_moria")) == 1
    tester.advance(0.5)
    assert run.status == "retrying"
    assert run.waiting_on[0].until == at(3)  # 2 s after the second failure
    tester.advance(2)
    assert run.status == "completed", run.error
    assert run.result == "Frodo crossed"

    attempts = run.step_attempts("cross_moria")
    assert [(a.number, a.status, a.started_at) for a in attempts] == [
        (1, "failed", at(0)),
        (2, "failed", at(1)),
        (3, "completed", at(3)),
    ]
    assert attempts[0].error is not None
    assert attempts[0].error["message"] == "orcs (attempt 1)"
    # Attempts never add history positions.
    assert run.trace == ["step:cross_moria"]
    assert run.history[0].attempts == 3


def test_retry_exhausted_throws_step_failed_and_fails_the_run() -> None:
    @sm.workflow
    def doomed() -> Gen:
        yield always_orcs()

    tester = WorkflowTester(doomed, start=T0)
    run = tester.start()
    tester.advance(10)
    assert run.status == "failed"
    assert run.reason == "step_failed"
    assert [a.started_at for a in run.step_attempts("always_orcs")] == [at(0), at(1), at(3)]
    assert run.error is not None
    # The run's error is the original error, plus where it happened.
    assert run.error["type"] == f"{__name__}.UrukHaiAttack"
    assert run.error["message"] == "too many"
    assert run.error["step"] == "always_orcs"
    assert run.error["seq"] == 0
    assert run.error["attempts"] == 3


@sm.step(retry=sm.Retry(max_attempts=3, backoff=sm.Backoff.fixed(1)))
def polite() -> str:
    if _count("polite") == 1:
        raise sm.RetryLater(after=30)
    return "answered"


def test_retry_later_sets_the_next_delay() -> None:
    ATTEMPTS.clear()

    @sm.workflow
    def ask() -> Gen:
        return (yield polite())

    tester = WorkflowTester(ask, start=T0)
    run = tester.start()
    assert run.status == "retrying"
    assert run.waiting_on[0].until == at(30)
    tester.advance(29)
    assert len(run.step_attempts("polite")) == 1
    tester.advance(1)
    assert run.result == "answered"
    assert [a.started_at for a in run.step_attempts("polite")] == [at(0), at(30)]


@sm.step(retry=sm.Retry(max_attempts=5, backoff=sm.Backoff.fixed(1)))
def refuses() -> str:
    raise sm.NonRetryable("the ring cannot be destroyed here", details={"place": "Rivendell"})


@sm.step(retry=sm.Retry(max_attempts=5, non_retryable=(KeyError,)))
def lookup() -> str:
    raise KeyError("palantir")


@sm.workflow
def hopeless(payload: Any = None) -> Gen:
    failures = []
    for step_call in (refuses(), lookup()):
        try:
            yield step_call
        except sm.StepFailed as exc:
            failures.append(
                {
                    "step": exc.step,
                    "attempts": exc.attempts,
                    "retryable": exc.retryable,
                    "details": exc.details,
                }
            )
    return failures


def test_non_retryable_errors_stop_at_once() -> None:
    run = WorkflowTester(hopeless).start()
    assert run.status == "completed", run.error
    assert run.result == [
        {"step": "refuses", "attempts": 1, "retryable": False, "details": {"place": "Rivendell"}},
        {"step": "lookup", "attempts": 1, "retryable": False, "details": None},
    ]
    assert len(run.step_attempts("refuses")) == 1
    assert len(run.step_attempts("lookup")) == 1


def test_raises_stub_fails_n_times_then_runs_the_real_step() -> None:
    tester = WorkflowTester(moria_run, steps={cross_moria: raises(ConnectionError("net"), times=2)})
    run = tester.start()
    tester.advance(3)
    attempts = run.step_attempts("cross_moria")
    assert [a.status for a in attempts] == ["failed", "failed", "completed"]
    assert attempts[0].error is not None
    assert attempts[0].error["type"] == "builtins.ConnectionError"
    assert run.result == "Frodo crossed"  # the real function ran on attempt 3


def test_raises_stub_without_times_always_raises() -> None:
    tester = WorkflowTester(moria_run, steps={"cross_moria": raises(OrcAttack)})
    run = tester.start()
    tester.advance(10)
    assert run.status == "failed"
    assert run.error is not None
    assert run.error["type"] == f"{__name__}.OrcAttack"


# --------------------------------------------------------------------------- StepFailed


@sm.workflow
def inspects_failure() -> Gen:
    yield sm.log("start")
    try:
        yield always_orcs()
    except sm.StepFailed as exc:
        return {
            "step": exc.step,
            "seq": exc.seq,
            "attempts": exc.attempts,
            "error_type": exc.error_type,
            "type_name": exc.type_name,
            "error_message": exc.error_message,
            "is_orc": exc.is_a(OrcAttack),
            "is_uruk": exc.is_a(UrukHaiAttack),
            "is_exception": exc.is_a(Exception),
            "is_key_error": exc.is_a(KeyError),
            "traceback_names_step": "always_orcs" in (exc.traceback or ""),
        }
    return None


def test_step_failed_carries_the_original_error() -> None:
    tester = WorkflowTester(inspects_failure)
    run = tester.start()
    tester.advance(10)
    assert run.status == "completed", run.error
    assert run.result == {
        "step": "always_orcs",
        "seq": 1,
        "attempts": 3,
        "error_type": f"{__name__}.UrukHaiAttack",
        "type_name": "UrukHaiAttack",
        "error_message": "too many",
        "is_orc": True,
        "is_uruk": True,
        "is_exception": True,
        "is_key_error": False,
        "traceback_names_step": True,
    }


def test_step_failed_is_rebuilt_identically_on_replay() -> None:
    tester = WorkflowTester(inspects_failure)
    run = tester.start()
    tester.advance(10)
    act = replay(inspects_failure, run.history)
    assert act.outcome == "completed"
    assert act.result == run.result


# --------------------------------------------------------------------------- compensations

UNDONE: list[tuple[str, Any, Any]] = []


def _undo(name: str) -> Any:
    def undo(*, input: Any, output: Any, failure: Any) -> dict[str, Any]:
        UNDONE.append((name, output, failure))
        return {"undid": output}

    undo.__name__ = f"undo_{name}"
    return undo


@sm.step(compensate=_undo("horses"))
def hire_horses(count: int) -> str:
    return f"{count} horses"


@sm.step(compensate=_undo("boats"))
def hire_boats(count: int) -> str:
    return f"{count} boats"


@sm.step(
    compensate=_undo("guide"),
    retry=sm.Retry(max_attempts=2, backoff=sm.Backoff.fixed(10)),
)
def hire_guide(name: str) -> str:
    if _count(f"guide-{name}") == 1:
        raise TimeoutError("guide is late")
    return f"guide {name}"


@sm.step
def plain(value: str) -> str:
    return value


@sm.step
def wreck(why: str) -> str:
    raise OrcAttack(why)


@sm.workflow
def expedition() -> Gen:
    yield hire_horses(3)
    # hire_guide (seq 2) completes after hire_boats (seq 3): completion order matters.
    yield sm.join(hire_guide("gollum"), hire_boats(2))
    yield plain("no compensation here")
    yield wreck("the pass is blocked")
    return "unreachable"


def test_uncaught_step_failed_compensates_in_reverse_completion_order() -> None:
    UNDONE.clear()
    ATTEMPTS.clear()
    tester = WorkflowTester(expedition)
    run = tester.start()
    tester.advance(10)
    assert run.status == "failed"
    assert run.reason == "step_failed"
    assert run.error is not None
    assert run.error["type"] == f"{__name__}.OrcAttack"
    assert run.error["message"] == "the pass is blocked"
    assert run.compensations == [
        ("hire_guide", "completed"),
        ("hire_boats", "completed"),
        ("hire_horses", "completed"),
    ]
    assert [(name, output) for name, output, _ in UNDONE] == [
        ("guide", "guide gollum"),
        ("boats", "2 boats"),
        ("horses", "3 horses"),
    ]
    # Each compensation receives the failure that caused the rollback ...
    failure = UNDONE[0][2]
    assert failure["type"] == f"{__name__}.OrcAttack"
    assert failure["message"] == "the pass is blocked"
    # ... and is recorded on the entry of the step it undid.
    by_name = {e.name: e for e in run.entries("step")}
    for name, output in (("hire_guide", "guide gollum"), ("hire_boats", "2 boats")):
        comp = by_name[name].compensation
        assert comp is not None
        assert comp["status"] == "completed"
        assert comp["output"] == {"undid": output}
    assert by_name["plain"].compensation is None
    assert by_name["wreck"].compensation is None


def _broken_undo(*, input: Any, output: Any, failure: Any) -> None:
    raise RuntimeError("the bridge is gone")


@sm.step(compensate=_broken_undo)
def cross_bridge() -> str:
    return "crossed"


@sm.workflow
def bridge_run() -> Gen:
    yield hire_horses(1)
    yield cross_bridge()
    yield wreck("balrog")


def test_failing_compensation_is_reported() -> None:
    UNDONE.clear()
    run = WorkflowTester(bridge_run).start()
    assert run.status == "failed"
    assert run.reason == "compensation_failed"
    assert run.error is not None
    assert run.error["message"] == "balrog"  # still the original failure
    failures = run.error["compensation_failures"]
    assert [(f["step"], f["seq"]) for f in failures] == [("cross_bridge", 1)]
    assert failures[0]["error"]["message"] == "the bridge is gone"
    assert run.compensations == [("cross_bridge", "failed"), ("hire_horses", "completed")]
    comp = run.history[1].compensation
    assert comp is not None
    assert comp["status"] == "failed"
    assert comp["error"]["type"] == "builtins.RuntimeError"
    # The older compensations still ran.
    assert [name for name, _, _ in UNDONE] == ["horses"]


@sm.workflow
def deliberate() -> Gen:
    yield hire_horses(2)
    answer = yield plain("no")
    if answer == "no":
        raise sm.Fail("the council said no", details={"votes": [1, 0]})
    return "yes"


def test_fail_fails_the_run_after_compensations() -> None:
    UNDONE.clear()
    run = WorkflowTester(deliberate).start()
    assert run.status == "failed"
    assert run.reason == "workflow_failed"
    assert run.error is not None
    assert run.error["type"] == "squidmesh.errors.Fail"
    assert run.error["message"] == "the council said no"
    assert run.error["details"] == {"votes": [1, 0]}
    assert run.compensations == [("hire_horses", "completed")]
    assert UNDONE[0][2]["message"] == "the council said no"


@sm.workflow
def undo_then_fail() -> Gen:
    yield hire_horses(1)
    yield sm.undo()
    yield hire_boats(1)
    yield wreck("storm")


def test_steps_undone_earlier_are_not_compensated_again() -> None:
    UNDONE.clear()
    run = WorkflowTester(undo_then_fail).start()
    assert run.status == "failed"
    assert [name for name, _, _ in UNDONE] == ["horses", "boats"]
    assert run.compensations == [("hire_horses", "completed"), ("hire_boats", "completed")]


# --------------------------------------------------------------------------- workflow bugs

BUGGY = True


@sm.workflow
def arithmetic_bug() -> Gen:
    value = yield plain("10")
    if BUGGY:
        ratio = int(value) / 0
    else:
        ratio = int(value) / 2
    yield sm.log("computed", ratio=ratio)
    return ratio


@sm.workflow(on_error="fail")
def strict_arithmetic_bug() -> Gen:
    yield hire_horses(1)
    value = yield plain("10")
    return int(value) / 0


def test_a_bug_suspends_the_run_with_its_traceback() -> None:
    run = WorkflowTester(arithmetic_bug).start()
    assert run.status == "suspended"
    assert run.reason == "workflow_error"
    assert run.error is not None
    assert run.error["type"] == "builtins.ZeroDivisionError"
    assert "ZeroDivisionError" in run.error["traceback"]
    assert "test_failures.py" in run.error["traceback"]
    assert run.waiting_on == []
    # Nothing recorded is lost.
    assert run.trace == ["step:plain"]
    assert run.history[0].status == "completed"


def test_on_error_fail_fails_instead_of_suspending() -> None:
    UNDONE.clear()
    run = WorkflowTester(strict_arithmetic_bug).start()
    assert run.status == "failed"
    assert run.reason == "workflow_failed"
    assert run.error is not None
    assert run.error["type"] == "builtins.ZeroDivisionError"
    assert run.compensations == [("hire_horses", "completed")]


def test_resume_reactivates_a_suspended_run_after_a_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "BUGGY", True)
    tester = WorkflowTester(arithmetic_bug)
    run = tester.start()
    assert run.status == "suspended"
    # Resuming unfixed code suspends again, without recording anything.
    tester.resume(run)
    assert run.status == "suspended"
    assert run.trace == ["step:plain"]

    monkeypatch.setattr(sys.modules[__name__], "BUGGY", False)  # "deploy the fix"
    tester.resume(run)
    assert run.status == "completed", run.error
    assert run.result == 5.0
    assert run.error is None
    assert run.reason is None
    assert run.trace == ["step:plain", "log"]
    assert len(run.step_attempts("plain")) == 1  # the recorded step did not run again


def test_resume_a_run_that_is_not_suspended_is_refused() -> None:
    tester = WorkflowTester(moria_run)
    run = tester.start()
    with pytest.raises(sm.InvalidTransitionError):
        tester.resume(run)


# --------------------------------------------------------------------------- non-JSON results


class Palantir:
    """Not JSON."""


@sm.step(retry=sm.Retry(max_attempts=3))
def gaze() -> Any:
    return Palantir()


@sm.workflow
def seeing() -> Gen:
    try:
        yield gaze()
    except sm.StepFailed as exc:
        return {"message": exc.error_message, "retryable": exc.retryable}
    return None


def test_non_json_step_result_fails_non_retryably_naming_the_type() -> None:
    run = WorkflowTester(seeing).start()
    assert run.status == "completed", run.error
    assert "Palantir" in run.result["message"]
    assert "gaze" in run.result["message"]
    assert run.result["retryable"] is False
    assert len(run.step_attempts("gaze")) == 1


# --------------------------------------------------------------------------- try/except/finally


@sm.workflow
def careful() -> Gen:
    log: list[str] = []
    try:
        try:
            yield wreck("inner")
        except sm.StepFailed as exc:
            log.append(f"caught {exc.error_message}")
            yield plain("recover")
            yield wreck("again")  # fails inside the except block
        finally:
            log.append("inner finally")
            yield plain("inner cleanup")
    except sm.StepFailed as exc:
        log.append(f"outer caught {exc.error_message}")
        yield sm.sleep(seconds=5)
    finally:
        yield sm.log("outer finally")
        yield plain("outer cleanup")
    return log


def test_nested_try_except_finally_with_commands_under_replay() -> None:
    tester = WorkflowTester(careful)
    run = tester.start()
    assert run.status == "running"
    tester.advance(5)
    assert run.status == "completed", run.error
    assert run.result == ["caught inner", "inner finally", "outer caught again"]
    assert run.trace == [
        "step:wreck",
        "step:plain",
        "step:wreck",
        "step:plain",
        "sleep",
        "log",
        "step:plain",
    ]
    act = replay(careful, run.history)
    assert act.outcome == "completed"
    assert act.result == run.result
    assert act.new_entries == []


@sm.workflow
def reraises() -> Gen:
    try:
        yield hire_horses(4)
        yield wreck("ambush")
    except sm.StepFailed as exc:
        if exc.is_a(OrcAttack):
            yield sm.log("orcs: giving up")
            raise
        return "handled"
    finally:
        yield plain("always")
    return "done"


def test_except_step_failed_then_reraise_fails_the_run() -> None:
    UNDONE.clear()
    run = WorkflowTester(reraises).start()
    assert run.status == "failed"
    assert run.reason == "step_failed"
    assert run.error is not None
    assert run.error["message"] == "ambush"
    assert run.error["step"] == "wreck"
    assert run.trace == ["step:hire_horses", "step:wreck", "log", "step:plain"]
    assert run.compensations == [("hire_horses", "completed")]
    act = replay(reraises, run.history)
    assert act.outcome == "failed"
    assert act.new_entries == []


# --------------------------------------------------------------------------- per-call options


@sm.step
def fragile(fail: int) -> int:
    if sm.step_context().attempt <= fail:
        raise ConnectionError(f"attempt {sm.step_context().attempt}")
    return fail


@sm.workflow
def mixed_policies() -> Gen:
    patient = fragile.options(retry=sm.Retry(max_attempts=3, backoff=sm.Backoff.fixed(1)))
    results = yield sm.join(patient(2), fragile(0))
    return list(results)


def test_per_call_retry_options_apply_to_their_own_call_in_a_join() -> None:
    tester = WorkflowTester(mixed_policies)
    run = tester.start()
    tester.advance(5)
    assert run.status == "completed", run.error
    assert run.result == [2, 0]
    assert [a.status for a in run.attempts[1]] == ["failed", "failed", "completed"]
    assert [a.status for a in run.attempts[2]] == ["completed"]
