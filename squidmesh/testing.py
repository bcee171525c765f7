"""Test workflows in memory: ``WorkflowTester`` and ``replay``.

``WorkflowTester`` runs a workflow through the same interpreter and the same state
transitions as the durable runtime, with steps executed in the test's thread, a virtual
clock and optional step stubs. With ``replay_each_command=True`` (the default) every
activation is re-checked by a fresh replay of the history, so every unit test is also a
determinism test.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from squidmesh.core import state
from squidmesh.core.context import StepContext, reset_step_context, set_step_context
from squidmesh.core.definition import StepDefinition, WorkflowDefinition
from squidmesh.core.failures import error_info
from squidmesh.core.history import Entry, History
from squidmesh.core.replay import Activation, BufferedEvent, Interpreter
from squidmesh.errors import (
    InvalidTransitionError,
    NondeterminismError,
    ReviewError,
    SquidmeshError,
)
from squidmesh.runtime.invoke import call_maybe_async
from squidmesh.types import EntryStatus, RunStatus

__all__ = [
    "TestRun",
    "Wait",
    "WorkflowTester",
    "assert_golden_histories",
    "raises",
    "replay",
]

logger = logging.getLogger("squidmesh.workflow")

DEFAULT_START = datetime(2030, 1, 1, tzinfo=timezone.utc)
_NAMELESS = frozenset({"sleep", "join", "first", "log", "undo", "now", "uuid4", "random"})


class raises:
    """A step stub that raises ``exc`` on the first ``times`` attempts (always if None),
    then runs the real function."""

    def __init__(self, exc: BaseException | type[BaseException], *, times: int | None = None):
        self.exc = exc
        self.times = times
        self.calls = 0

    def __repr__(self) -> str:
        return f"raises({self.exc!r}, times={self.times})"


@dataclasses.dataclass(frozen=True)
class Wait:
    """Something a run is waiting on."""

    kind: str
    name: str
    seq: int
    until: str | None = None

    def __str__(self) -> str:
        return self.kind if self.kind in _NAMELESS else f"{self.kind}:{self.name}"


class TestRun:
    """A run inside a ``WorkflowTester``; its attributes reflect the latest state."""

    __test__ = False  # not a pytest test class

    def __init__(self, tester: WorkflowTester, run_id: str, trigger: str, payload: dict[str, Any]):
        self._tester = tester
        self.id = run_id
        self.trigger = trigger
        self.payload = payload
        self.status: RunStatus = RunStatus.PENDING
        self.result: Any = None
        self.error: dict[str, Any] | None = None
        self.reason: str | None = None
        self.history = History(
            run_id=run_id, workflow=tester.workflow.name, trigger=trigger, payload=payload
        )
        self.logs: list[dict[str, Any]] = []
        self.attempts: dict[int, list[state.Attempt]] = {}
        self.compensations: list[tuple[str, str]] = []
        self._waiting: tuple[int, ...] = ()
        self._inbox: list[BufferedEvent] = []
        self._interpreter: Interpreter | None = None
        self._steps: dict[str, StepDefinition[Any, Any]] = {}
        self._step_calls: dict[int, StepDefinition[Any, Any]] = {}  # by seq, with options

    def __repr__(self) -> str:
        return f"<TestRun {self.id} {self.status.value}>"

    @property
    def trace(self) -> list[str]:
        """The commands the workflow yielded, in order: ``"step:pack"``, ``"sleep"``, ..."""
        return [str(Wait(e.kind, e.name, e.seq)) for e in self.history.entries]

    @property
    def waiting_on(self) -> list[Wait]:
        if self.status.is_terminal or self.status is RunStatus.SUSPENDED:
            return []
        return [
            Wait(e.kind, e.name, e.seq, e.wake_at) for e in (self.history[s] for s in self._waiting)
        ]

    def step_attempts(self, name: str) -> list[state.Attempt]:
        """Every attempt of every call of step ``name``, in order."""
        out: list[state.Attempt] = []
        for entry in self.history.entries:
            if entry.kind == "step" and entry.name == name:
                out.extend(self.attempts.get(entry.seq, []))
        return out

    def entries(self, kind: str | None = None, name: str | None = None) -> list[Entry]:
        return [
            e
            for e in self.history.entries
            if (kind is None or e.kind == kind) and (name is None or e.name == name)
        ]


class WorkflowTester:
    """Run a workflow in memory with a virtual clock and step stubs."""

    __test__ = False

    def __init__(
        self,
        workflow: WorkflowDefinition,
        *,
        steps: Mapping[Any, Any] | None = None,
        start: datetime | None = None,
        replay_each_command: bool = True,
    ) -> None:
        if not isinstance(workflow, WorkflowDefinition):
            raise TypeError(f"WorkflowTester needs an @sm.workflow, got {workflow!r}")
        self.workflow = workflow
        self.replay_each_command = replay_each_command
        self._now = start or DEFAULT_START
        if self._now.tzinfo is None:
            raise ValueError("WorkflowTester(start=...) needs a timezone-aware datetime")
        self._stubs: dict[str, Any] = {}
        for key, stub in (steps or {}).items():
            name = key.name if isinstance(key, StepDefinition) else key
            if not isinstance(name, str):
                raise TypeError(f"steps= keys must be steps or step names, got {key!r}")
            self._stubs[name] = stub
        self.runs: list[TestRun] = []

    # ------------------------------------------------------------------ clock

    @property
    def now(self) -> datetime:
        return self._now

    def advance(self, amount: float | timedelta) -> None:
        """Move the virtual clock forward, firing every timer that falls due, in order."""
        delta = amount if isinstance(amount, timedelta) else timedelta(seconds=amount)
        if delta < timedelta(0):
            raise ValueError("the virtual clock only moves forward")
        target = self._now + delta
        while True:
            nxt = self._next_wake()
            if nxt is None or nxt > target:
                break
            self._now = max(self._now, nxt)
            self._fire_due()
        self._now = target

    def advance_to_next_timer(self) -> datetime | None:
        """Jump to the earliest pending timer (sleep, timeout or retry) and fire it."""
        nxt = self._next_wake()
        if nxt is None:
            return None
        self._now = max(self._now, nxt)
        self._fire_due()
        return self._now

    def _next_wake(self) -> datetime | None:
        stamps = [
            e.wake_at
            for run in self.runs
            if not run.status.is_terminal and run.status is not RunStatus.SUSPENDED
            for e in run.history.entries
            if e.wake_at is not None and e.status in ("pending", "running")
        ]
        return datetime.fromisoformat(min(stamps)) if stamps else None

    def _fire_due(self) -> None:
        for run in self.runs:
            if run.status.is_terminal or run.status is RunStatus.SUSPENDED:
                continue
            due = state.due_entries(run.history, self._now)
            for entry in due:
                state.fire_due(run.history, entry, self._now)
            if due:
                self._pump(run)

    # ------------------------------------------------------------------ runs

    def start(
        self, payload: Any = None, trigger: str | None = None, *, run_id: str | None = None
    ) -> TestRun:
        """Validate the payload, start a run and drive it until it must wait."""
        stored = self.workflow.validate_payload(payload, trigger)
        trig = self.workflow.trigger(trigger)
        run = TestRun(self, run_id or str(uuid.uuid4()), trig.name, stored)
        self.runs.append(run)
        self._pump(run)
        return run

    def approve(
        self,
        run: TestRun,
        *,
        actor: str,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> TestRun:
        return self._decide(run, True, actor, comment, metadata)

    def reject(
        self,
        run: TestRun,
        *,
        actor: str,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> TestRun:
        return self._decide(run, False, actor, comment, metadata)

    def _decide(
        self,
        run: TestRun,
        approved: bool,
        actor: str,
        comment: str | None,
        metadata: dict[str, Any] | None,
    ) -> TestRun:
        action = "approve_run" if approved else "reject_run"
        if not isinstance(actor, str) or not actor.strip():
            raise ReviewError(f"{action} on run {run.id} needs a non-empty actor string")
        entry = self._waiting_entry(run, "approval", action)
        state.deliver_decision(
            run.history,
            entry.seq,
            approved=approved,
            actor=actor,
            comment=comment,
            metadata=metadata,
            now=self._now,
        )
        self._pump(run)
        return run

    def unblock(
        self,
        run: TestRun,
        data: Any = None,
        *,
        actor: str | None = None,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> TestRun:
        entry = self._waiting_entry(run, "pause", "unblock_run")
        state.deliver_unblock(run.history, entry.seq, data, self._now)
        self._pump(run)
        return run

    def send_event(self, run: TestRun, name: str, data: Any = None) -> TestRun:
        if run.status.is_terminal:
            raise InvalidTransitionError(status=run.status.value, action="send_event")
        if state.deliver_event(run.history, name, data, self._now) is None:
            run._inbox.append(BufferedEvent(len(run._inbox) + 1000 * len(run.history), name, data))
            return run
        self._pump(run)
        return run

    def cancel(self, run: TestRun, *, compensate: bool = False) -> TestRun:
        if run.status.is_terminal:
            raise InvalidTransitionError(status=run.status.value, action="cancel_run")
        interp = run._interpreter or self._interpreter(run)
        act = interp.cancel(run.history, now=self._now, compensate=compensate)
        run._steps.update(interp.step_definitions)
        self._compensate(run, act.compensate, None)
        run.status = RunStatus.CANCELLED
        run._interpreter = None
        run.history.outcome = "cancelled"
        return run

    def resume(self, run: TestRun) -> TestRun:
        """Re-activate a suspended run (after the workflow code was fixed)."""
        if run.status is not RunStatus.SUSPENDED:
            raise InvalidTransitionError(status=run.status.value, action="resume_run")
        run._interpreter = None
        run.error = None
        run.reason = None
        self._pump(run)
        return run

    def _waiting_entry(self, run: TestRun, kind: str, action: str) -> Entry:
        for seq in run._waiting:
            entry = run.history[seq]
            if entry.kind == kind and entry.status == "running":
                return entry
        raise InvalidTransitionError(
            f"cannot {action} run {run.id}: it is {run.status.value} and not waiting at an {kind}"
            if kind == "approval"
            else f"cannot {action} run {run.id}: it is "
            f"{run.status.value} and not paused at a {kind}",
            status=run.status.value,
            action=action,
        )

    # ------------------------------------------------------------------ engine

    def _interpreter(self, run: TestRun) -> Interpreter:
        return Interpreter(self.workflow, run_id=run.id, trigger=run.trigger, payload=run.payload)

    def _pump(self, run: TestRun) -> None:
        """Advance the run and execute its due work until it has to wait."""
        while True:
            if run._interpreter is None:
                run._interpreter = self._interpreter(run)
            act = run._interpreter.advance(run.history, now=self._now, inbox=run._inbox)
            run._steps.update(run._interpreter.step_definitions)
            run._step_calls.update(run._interpreter.step_calls)
            for entry in act.logs:
                fields = (entry.input or {}).get("fields") or {}
                run.logs.append({**(entry.input or {}), "seq": entry.seq})
                logger.log(
                    logging.getLevelName((entry.input or {}).get("level", "info").upper()),
                    (entry.input or {}).get("message"),
                    extra={"squidmesh": {"run_id": run.id, **fields}},
                )
            if act.consumed_events:
                run._inbox = [e for e in run._inbox if e.id not in act.consumed_events]
            if self.replay_each_command:
                self._verify_replay(run, act)
            if act.outcome == "waiting":
                run._waiting = act.waiting_on
                if act.compensate:
                    self._compensate(run, act.compensate, None)
                    continue
                if self._run_due_steps(run):
                    continue
                run.status = state.waiting_status(run.history, act.waiting_on)
                return
            run._waiting = ()
            run._interpreter = None
            if act.outcome == "completed":
                run.status = RunStatus.COMPLETED
                run.result = act.result
                run.history.outcome, run.history.result = "completed", act.result
            elif act.outcome == "failed":
                failures = self._compensate(run, act.compensate, act.error)
                run.status = RunStatus.FAILED
                run.reason = "compensation_failed" if failures else act.reason
                run.error = dict(act.error or {})
                if failures:
                    run.error["compensation_failures"] = failures
                run.history.outcome = "failed"
            else:  # suspended
                run.status = RunStatus.SUSPENDED
                run.reason = act.reason
                run.error = act.error
            return

    def _verify_replay(self, run: TestRun, live: Activation) -> None:
        fresh = Interpreter(self.workflow, run_id=run.id, trigger=run.trigger, payload=run.payload)
        copy = run.history.copy()
        again = fresh.advance(copy, now=self._now, inbox=list(run._inbox))
        fresh.close()
        if live.outcome == "suspended":
            return
        if again.outcome == "suspended" and again.reason == "nondeterminism":
            details = (again.error or {}).get("details") or {}
            raise NondeterminismError(
                run_id=run.id,
                seq=int(details.get("seq", -1)),
                expected=str(details.get("expected")),
                recorded=str(details.get("recorded")),
            )
        if (
            again.new_entries
            or again.outcome != live.outcome
            or (live.outcome == "waiting" and again.waiting_on != live.waiting_on)
        ):
            first_new = again.new_entries[0].label() if again.new_entries else again.outcome
            raise NondeterminismError(
                f"run {run.id}: a fresh replay of the history did not reach the same state "
                f"(live: {live.outcome} on {live.waiting_on}; replay: {again.outcome}, "
                f"first difference {first_new}). Workflow code must depend only on its "
                "payload and the results of yielded commands.",
                run_id=run.id,
                seq=len(run.history),
                expected=first_new,
                recorded=live.outcome,
            )

    def _run_due_steps(self, run: TestRun) -> bool:
        ran = False
        stamp = self._now.isoformat()
        for entry in list(run.history.entries):
            if entry.kind != "step" or entry.status != "pending":
                continue
            if entry.wake_at is not None and entry.wake_at > stamp:
                continue
            self._execute(run, entry)
            ran = True
        return ran

    def _definition(self, run: TestRun, name: str) -> StepDefinition[Any, Any]:
        definition = run._steps.get(name)
        if definition is None:  # pragma: no cover - the interpreter saw every yielded step
            raise SquidmeshError(f"run {run.id}: step {name} is not known to the tester")
        return definition

    def _execute(self, run: TestRun, entry: Entry) -> None:
        definition = run._step_calls.get(entry.seq) or self._definition(run, entry.name)
        number = state.begin_attempt(entry, self._now)
        started = self._now.isoformat()
        token = set_step_context(
            StepContext(run_id=run.id, step=entry.name, seq=entry.seq, attempt=number)
        )
        try:
            value = self._call(definition, entry.input or {})
        except Exception as exc:
            _, error = state.fail_attempt(run.history, entry.seq, exc, definition.retry, self._now)
            run.attempts.setdefault(entry.seq, []).append(
                state.Attempt(number, "failed", error, started, self._now.isoformat())
            )
            return
        finally:
            reset_step_context(token)
        try:
            state.complete_attempt(run.history, entry.seq, value, self._now)
        except Exception as exc:  # the value cannot be stored: a non-retryable failure
            entry.status = EntryStatus.RUNNING.value
            _decision, error = state.fail_attempt(
                run.history, entry.seq, exc, definition.retry, self._now
            )
            run.attempts.setdefault(entry.seq, []).append(
                state.Attempt(number, "failed", error, started, self._now.isoformat())
            )
            return
        run.attempts.setdefault(entry.seq, []).append(
            state.Attempt(number, "completed", None, started, self._now.isoformat())
        )

    def _call(self, definition: StepDefinition[Any, Any], stored: Mapping[str, Any]) -> Any:
        args, kwargs = definition.decode_arguments(stored)
        stub = self._stubs.get(definition.name, _REAL)
        if isinstance(stub, raises):
            stub.calls += 1
            if stub.times is None or stub.calls <= stub.times:
                raise _fresh(stub.exc)
            stub = _REAL
        if stub is _REAL:
            return call_maybe_async(definition.fn, args, kwargs)
        if callable(stub):
            return call_maybe_async(stub, args, kwargs)
        return stub

    def _compensate(
        self, run: TestRun, plan: Iterable[int], failure: dict[str, Any] | None
    ) -> list[dict[str, Any]]:
        failures: list[dict[str, Any]] = []
        for seq in plan:
            entry = run.history[seq]
            definition = run._step_calls.get(seq) or run._steps.get(entry.name)
            comp = definition.compensate if definition is not None else None
            if comp is None:  # pragma: no cover - the plan only lists compensatable steps
                continue
            fn = comp.fn if isinstance(comp, StepDefinition) else comp
            stub = self._stubs.get(comp.name, _REAL) if isinstance(comp, StepDefinition) else _REAL
            attempts = comp.retry.max_attempts if isinstance(comp, StepDefinition) else 1
            kwargs = {"input": entry.input, "output": entry.result, "failure": failure}
            error: dict[str, Any] | None = None
            output: Any = None
            for _ in range(attempts):
                try:
                    if isinstance(stub, raises):
                        stub.calls += 1
                        if stub.times is None or stub.calls <= stub.times:
                            raise _fresh(stub.exc)
                    if stub is _REAL or isinstance(stub, raises):
                        output = call_maybe_async(fn, [], kwargs)
                    elif callable(stub):  # a callable stub replaces the compensation
                        output = call_maybe_async(stub, [], kwargs)
                    else:  # a stub by value
                        output = stub
                    error = None
                    break
                except Exception as exc:
                    error = error_info(exc)
            status = "failed" if error else "completed"
            state.record_compensation(
                run.history,
                seq,
                status=status,
                output=None if error else _jsonable(output),
                error=error,
                now=self._now,
            )
            run.compensations.append((entry.name, status))
            if error:
                failures.append({"step": entry.name, "seq": seq, "error": error})
        return failures


_REAL = object()


def _fresh(exc: BaseException | type[BaseException]) -> BaseException:
    # A stub instance is raised again on every attempt: drop the previous traceback so
    # recorded errors show one raise, not all of them.
    return exc() if isinstance(exc, type) else exc.with_traceback(None)


def _jsonable(value: Any) -> Any:
    from squidmesh.core.contracts import EncodeError, encode

    try:
        return encode(value, what="compensation output")
    except EncodeError:
        return repr(value)


# ---------------------------------------------------------------------- golden histories


def replay(workflow: WorkflowDefinition, history: History | Mapping[str, Any]) -> Activation:
    """Replay a recorded history against the current code.

    Raises ``NondeterminismError`` when the code and the history disagree, including
    when a run that ended in the history would now go on to yield more commands.
    """
    recorded = history.copy() if isinstance(history, History) else History.from_json(dict(history))
    interp = Interpreter(
        workflow,
        run_id=recorded.run_id or str(uuid.uuid4()),
        trigger=recorded.trigger,
        payload=recorded.payload,
        schedule=recorded.schedule,
    )
    stamp = max((e.completed_at or e.created_at or "" for e in recorded.entries), default="")
    when = datetime.fromisoformat(stamp) if stamp else DEFAULT_START
    length = len(recorded)
    act = interp.advance(recorded, now=when)
    interp.close()
    if act.outcome == "suspended" and act.reason == "nondeterminism":
        details = (act.error or {}).get("details") or {}
        raise NondeterminismError(
            run_id=recorded.run_id,
            seq=int(details.get("seq", -1)),
            expected=str(details.get("expected")),
            recorded=str(details.get("recorded")),
        )
    if act.outcome == "suspended":
        raise NondeterminismError(
            f"replay of run {recorded.run_id} stopped on a workflow error: "
            f"{(act.error or {}).get('message')}",
            run_id=recorded.run_id,
            seq=length,
            expected="the workflow to replay",
            recorded=str((act.error or {}).get("type")),
        )
    if recorded.outcome in ("completed", "failed") and act.new_entries:
        raise NondeterminismError(
            run_id=recorded.run_id,
            seq=length,
            expected=act.new_entries[0].label(),
            recorded=f"the run to end ({recorded.outcome})",
        )
    if recorded.outcome == "completed" and act.outcome != "completed":
        raise NondeterminismError(
            run_id=recorded.run_id,
            seq=length,
            expected=f"the workflow to end as {act.outcome}",
            recorded="the run completed",
        )
    return act


def assert_golden_histories(
    workflows: Iterable[WorkflowDefinition], folder: str | Path
) -> list[Path]:
    """Replay every ``*.json`` history in ``folder`` against the matching workflow.

    Returns the files checked; raises ``NondeterminismError`` naming the first file
    that no longer replays, and ``LookupError`` for a history of an unknown workflow.
    """
    by_name = {wf.name: wf for wf in workflows}
    checked = []
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text())
        wf = by_name.get(str(data.get("workflow")))
        if wf is None:
            raise LookupError(f"{path}: no workflow named {data.get('workflow')!r} was given")
        try:
            replay(wf, data)
        except NondeterminismError as exc:
            raise NondeterminismError(
                f"{path.name}: {exc.message}",
                run_id=exc.run_id,
                seq=exc.seq,
                expected=exc.expected,
                recorded=exc.recorded,
            ) from exc
        checked.append(path)
    return checked
