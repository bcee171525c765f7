"""The replay interpreter: drives a workflow generator against its history.

Given a workflow, the run's stored payload and its history, ``Interpreter.advance`` feeds
recorded results into the generator (``send``) and recorded failures (``throw``), checks
that every yielded command matches the recorded one on (kind, name), records new commands
past the end of the history, and returns an ``Activation``: what to schedule, or how the
run ended. It does no I/O: the caller persists the activation and performs the work.

An interpreter is live: kept in a cache, it continues from the command it is blocked on
without replaying (the hot path). A fresh interpreter replays from seq 0 (a cold resume).
Both feed values read from the history, so they behave identically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Sequence
from datetime import datetime
from typing import Any

from squidmesh.core import commands as cmds
from squidmesh.core import contracts, unyielded
from squidmesh.core.activation import (
    CANCELLED,
    COMPLETED,
    FAILED,
    SUSPENDED,
    Activation,
    BufferedEvent,
    compensation_plan,
)
from squidmesh.core.activation import WAITING as WAITING  # re-exported with the outcomes
from squidmesh.core.context import CurrentRun, reset_current_run, set_current_run
from squidmesh.core.definition import StepCall, WorkflowDefinition
from squidmesh.core.failures import error_info
from squidmesh.core.history import Entry, History
from squidmesh.core.recording import (
    HELD,
    START,
    Blocked,
    Feed,
    WorkflowBug,
    append_entry,
    iso,
    record_new,
    resolve,
    yield_location,
)
from squidmesh.core.records import COMPENSATION_PENDING, ErrorRecord
from squidmesh.errors import (
    DefinitionError,
    Fail,
    NondeterminismError,
    PayloadError,
    RunCancelled,
    StepFailed,
    TimedOut,
    UnstorableValueError,
)
from squidmesh.types import EntryStatus

__all__ = ["Activation", "BufferedEvent", "Interpreter", "compensation_plan"]

_DONE = EntryStatus.COMPLETED.value
_CANCELLED = EntryStatus.CANCELLED.value
_PENDING = EntryStatus.PENDING.value
_RUNNING = EntryStatus.RUNNING.value


class _StopReplay(Exception):
    """Raised when a replay-only pass reaches a command it would have to record."""


class Interpreter:
    """Drives one run's workflow generator. Not thread-safe; one per run."""

    def __init__(
        self,
        workflow: WorkflowDefinition,
        *,
        run_id: str,
        trigger: str | None = None,
        payload: dict[str, Any] | None = None,
        schedule: dict[str, Any] | None = None,
        max_value_bytes: int | None = None,
    ) -> None:
        self.workflow = workflow
        #: the largest JSON (bytes) of a value the code records: arguments, logs, result
        self.max_value_bytes = max_value_bytes
        self.run_id = run_id
        self.trigger = trigger or workflow.default_trigger.name
        self.payload = dict(payload or {})
        self.schedule = schedule
        self._gen: Generator[Any, Any, Any] | None = None
        self._cursor = 0
        self._horizon = 0
        self._blocked: Blocked | None = None
        self._finished = False
        #: the step calls the current generator created, until yielded (see ``unyielded``)
        self._calls: unyielded.Tracker | None = None
        #: step definitions by step name, learned from the step calls the code yielded
        self.step_definitions: dict[str, Any] = {}
        #: the step definition of each step call by seq, with its per-call ``options``
        self.step_calls: dict[int, Any] = {}

    # ------------------------------------------------------------------ public

    @property
    def is_live(self) -> bool:
        """True while a generator is held (the run can advance without replay)."""
        return self._gen is not None

    @property
    def position(self) -> int:
        """How many history entries this interpreter has consumed."""
        return self._cursor

    def advance(
        self,
        history: History,
        *,
        now: datetime,
        inbox: Sequence[BufferedEvent] = (),
    ) -> Activation:
        """Run the workflow as far as the history allows and decide what comes next.

        New entries are appended to ``history`` and outcome changes are written into it;
        the same entries are listed on the returned activation for persistence.
        """
        act = Activation()
        try:
            if self._gen is None:
                if self._finished:
                    raise RuntimeError("this interpreter's run has already ended")
                self._start(history)
                feed = START
            else:
                assert self._blocked is not None
                resolved = resolve(self._blocked, history, act, now, self.run_id)
                if resolved is None:
                    act.waiting_on = self._waiting_seqs(history)
                    return act
                feed = resolved
            return self._run(feed, history, act, now, list(inbox), record=True)
        except NondeterminismError as exc:
            self._discard()
            return self._suspend(act, "nondeterminism", exc)
        except WorkflowBug as bug:
            self._discard()
            return self._suspend(act, "workflow_error", bug.error)

    def cancel(self, history: History, *, now: datetime, compensate: bool = False) -> Activation:
        """Deliver cancellation into the workflow (so ``finally`` blocks run) and end it.

        Replays to the current position without recording anything new, throws
        ``RunCancelled`` at the pending yield, and marks every unresolved entry cancelled.
        Commands yielded while unwinding are ignored.
        """
        act = Activation()
        try:
            if self._gen is None and not self._finished:
                self._start(history)
                try:
                    self._run(START, history, act, now, [], record=False)
                except _StopReplay:
                    pass
            if self._gen is not None:
                token = self._enter(history, replaying=False)
                try:
                    self._gen.throw(RunCancelled())
                except (RunCancelled, StopIteration):
                    pass
                except BaseException:
                    pass
                else:
                    self._close_quietly()
                finally:
                    reset_current_run(token)
        except (NondeterminismError, WorkflowBug):
            pass  # the run is being cancelled; a broken replay cannot stop that
        self._gen = None
        self._finished = True
        for entry in history.entries:
            if entry.status in (_PENDING, _RUNNING):
                entry.status = _CANCELLED
                entry.wake_at = None
                act.touch(entry)
        act.outcome = CANCELLED
        if compensate:
            act.compensate = tuple(self._request_compensation(history, act))
        return act

    def close(self) -> None:
        """Drop the generator (cache eviction). Emits nothing, records nothing."""
        self._close_quietly()
        self._gen = None
        self._blocked = None

    # ------------------------------------------------------------------ driving

    def _start(self, history: History) -> None:
        payload = self.workflow.load_payload(self.payload, self.trigger)
        self._horizon = len(history)
        self._cursor = 0
        self._blocked = None
        self._calls = unyielded.Tracker()
        # A run that already ended (its history has an outcome) replays to its very end.
        token = self._enter(history, replaying=self._horizon > 0 or history.outcome is not None)
        try:
            self._gen = self.workflow(payload)
        except Exception as exc:
            raise WorkflowBug(exc) from exc
        finally:
            reset_current_run(token)

    def _enter(self, history: History, *, replaying: bool) -> Any:
        return set_current_run(
            CurrentRun(
                run_id=self.run_id,
                workflow=self.workflow.name,
                trigger=self.trigger,
                schedule=self.schedule,
                is_replaying=replaying,
                history_length=len(history),
            )
        )

    def _run(
        self,
        feed: Feed,
        history: History,
        act: Activation,
        now: datetime,
        inbox: list[BufferedEvent],
        *,
        record: bool,
    ) -> Activation:
        # The step calls the workflow creates while it runs are tracked (``unyielded``).
        tracking = unyielded.activate(self._calls)
        try:
            return self._drive(feed, history, act, now, inbox, record=record)
        finally:
            unyielded.deactivate(tracking)

    def _drive(
        self,
        feed: Feed,
        history: History,
        act: Activation,
        now: datetime,
        inbox: list[BufferedEvent],
        *,
        record: bool,
    ) -> Activation:
        gen = self._gen
        assert gen is not None
        next_feed: Feed | None = feed
        while next_feed is not None:
            token = self._enter(
                history,
                replaying=self._cursor < self._horizon or history.outcome is not None,
            )
            try:
                if next_feed.throw:
                    command = gen.throw(next_feed.value)
                else:
                    command = gen.send(next_feed.value)
            except StopIteration as stop:
                return self._finish(stop.value, history, act)
            except Fail as exc:
                return self._fail(act, history, error_info(exc, retryable=False), "workflow_failed")
            except StepFailed as exc:
                return self._fail(act, history, self._step_error(exc, history), "step_failed")
            except TimedOut as exc:
                return self._fail(act, history, error_info(exc, retryable=False), "workflow_failed")
            except Exception as exc:
                self._discard()
                if self.workflow.on_error == "fail":
                    return self._fail(
                        act, history, error_info(exc, retryable=False), "workflow_failed"
                    )
                return self._suspend(act, "workflow_error", exc)
            finally:
                reset_current_run(token)
            if isinstance(command, cmds.ContinueAsNew):
                return self._continue_as_new(command, history, act, now, record=record)
            next_feed = self._record(command, history, act, now, inbox, record=record)
        act.waiting_on = self._waiting_seqs(history)
        return act

    def _finish(self, value: Any, history: History, act: Activation) -> Activation:
        self._gen = None
        self._finished = True
        cursor = self._skip_markers(history)
        if cursor < len(history):
            raise NondeterminismError(
                run_id=self.run_id,
                seq=cursor,
                expected=f"the workflow to return (code ended after seq {cursor - 1})",
                recorded=history[cursor].label(),
            )
        # The workflow returned: a step call it never yielded never will be. A run that
        # had already ended (an inspection replaying it) reported them when it ended.
        never = self._calls.remaining() if self._calls is not None else []
        try:
            act.result = contracts.stored(
                value,
                what=f"the result of workflow {self.workflow.name} (run {self.run_id})",
                max_bytes=self.max_value_bytes,
            )
        except UnstorableValueError as exc:
            if never and isinstance(exc, contracts.EncodeError):
                # most likely the StepCall itself ended up in the result
                hint = DefinitionError(f"{exc}. A {never[0].message()}")
                return self._suspend(act, "workflow_error", hint)
            return self._suspend(act, "workflow_error", exc)
        if history.outcome is None:
            act.warnings.extend(call.audit() for call in never)
        act.outcome = COMPLETED
        return act

    def _continue_as_new(
        self,
        command: cmds.ContinueAsNew,
        history: History,
        act: Activation,
        now: datetime,
        *,
        record: bool,
    ) -> Activation:
        """``yield sm.continue_as_new(payload)``: the run completes (reason
        ``continued_as_new``); the runtime starts the next run in the same transaction.
        The recorded entry holds the next payload, so a replay decides the same."""
        gen = self._gen
        assert gen is not None
        if self._calls is not None:
            self._calls.yielded(command)
        seq = self._skip_markers(history)
        if seq < len(history):
            recorded = history[seq]
            self._check(command, recorded, gen)
            self._cursor = seq + 1
            payload = (recorded.input or {}).get("payload")
        else:
            if not record:
                raise _StopReplay()
            payload = self._next_payload(command, gen)
            entry = append_entry(
                history,
                act,
                now,
                "continue_as_new",
                "continue_as_new",
                input={"payload": payload},
                gen=gen,
            )
            history.resolve(entry.seq, _DONE, at=iso(now))
            self._cursor = len(history)
        cursor = self._skip_markers(history)
        if cursor < len(history):
            raise NondeterminismError(
                run_id=self.run_id,
                seq=cursor,
                expected=f"the run to continue as new (code ended after seq {cursor - 1})",
                recorded=history[cursor].label(),
            )
        never = self._calls.remaining() if self._calls is not None else []
        # Nothing after the yield runs: close the generator (its finally blocks run, what
        # they yield is dropped), as an evicted interpreter would.
        self._close_quietly()
        self._gen = None
        self._finished = True
        if history.outcome is None:
            act.warnings.extend(call.audit() for call in never)
        act.outcome = COMPLETED
        act.result = None
        act.reason = "continued_as_new"
        act.continued = {"payload": payload}
        return act

    def _next_payload(self, command: cmds.ContinueAsNew, gen: Any) -> dict[str, Any]:
        """The next run's payload, validated against this run's trigger like any start."""
        if command.payload is None:
            return dict(self.payload)
        where = yield_location(gen)
        try:
            stored = self.workflow.validate_payload(command.payload, self.trigger)
            contracts.stored(
                stored,
                what=f"the payload of sm.continue_as_new at {where}",
                max_bytes=self.max_value_bytes,
            )
        except (PayloadError, UnstorableValueError) as exc:
            raise WorkflowBug(
                DefinitionError(
                    f"run {self.run_id}: sm.continue_as_new at {where} was given a payload "
                    f"the next run cannot start with: {exc}"
                )
            ) from exc
        return stored

    def _fail(
        self, act: Activation, history: History, error: ErrorRecord, reason: str
    ) -> Activation:
        self._gen = None
        self._finished = True
        if self._calls is not None and history.outcome is None:
            # Only calls already unreachable: the exception being handled keeps the
            # workflow's locals alive, and those may have been meant for later.
            act.warnings.extend(call.audit() for call in self._calls.found())
        act.outcome = FAILED
        act.error = error
        act.reason = reason
        act.compensate = tuple(self._request_compensation(history, act))
        return act

    def _suspend(self, act: Activation, reason: str, exc: BaseException) -> Activation:
        act.outcome = SUSPENDED
        act.reason = reason
        error = error_info(exc, retryable=True)
        if isinstance(exc, NondeterminismError):
            error = dataclasses.replace(
                error,
                details={"seq": exc.seq, "expected": exc.expected, "recorded": exc.recorded},
            )
        act.error = error
        return act

    def _request_compensation(self, history: History, act: Activation) -> list[int]:
        plan = compensation_plan(history)
        for seq in plan:
            entry = history[seq]
            entry.set_compensation(COMPENSATION_PENDING)
            act.touch(entry)
        return plan

    def _step_error(self, exc: StepFailed, history: History) -> ErrorRecord:
        """The run's error when a step's failure ends it: the step's own error, naming
        the step."""
        entry = history[exc.seq] if 0 <= exc.seq < len(history) else None
        recorded = entry.error_record if entry is not None and entry.error else None
        if recorded is not None:
            return dataclasses.replace(recorded, step=exc.step, seq=exc.seq, attempts=exc.attempts)
        return error_info(exc, retryable=False)

    def _discard(self) -> None:
        self._close_quietly()
        self._gen = None
        self._blocked = None

    def _close_quietly(self) -> None:
        gen = self._gen
        if gen is None:
            return
        # ``gen.close()`` leaves a generator whose ``finally`` yields a command suspended
        # (RuntimeError: generator ignored GeneratorExit), and its finalizer then fails
        # again when it is collected. Keep interrupting it, dropping whatever it yields,
        # until it has really ended.
        for _ in range(100):
            try:
                gen.throw(GeneratorExit)
            except BaseException:
                return

    # ------------------------------------------------------------------ matching

    def _skip_markers(self, history: History) -> int:
        """Step over recorded patch markers that the current code no longer asks for."""
        cursor = self._cursor
        while cursor < len(history) and history[cursor].kind == "patch":
            cursor += 1
        return cursor

    def _record(
        self,
        command: Any,
        history: History,
        act: Activation,
        now: datetime,
        inbox: list[BufferedEvent],
        *,
        record: bool,
    ) -> Feed | None:
        gen = self._gen
        assert gen is not None
        if not isinstance(command, cmds.COMMAND_TYPES):
            raise WorkflowBug(
                DefinitionError(
                    f"workflow {self.workflow.name} (run {self.run_id}) yielded {command!r} at "
                    f"{yield_location(gen)}: yield a step call or an sm.* command "
                    "(did you forget to call the step?)"
                )
            )
        if self._calls is not None:
            self._calls.yielded(command)
        if isinstance(command, cmds.Patched):
            return self._patched(command, history, act, now, record=record)
        if isinstance(command, StepCall):
            self.step_definitions[command.name] = command.step
        elif isinstance(command, (cmds.Join, cmds.First)):
            for branch in command.commands:
                if isinstance(branch, StepCall):
                    self.step_definitions[branch.name] = branch.step
        seq = self._skip_markers(history)
        if isinstance(command, StepCall):
            self.step_calls[seq] = command.step
        elif isinstance(command, (cmds.Join, cmds.First)):
            for offset, branch in enumerate(command.commands, start=seq + 1):
                if isinstance(branch, StepCall):
                    self.step_calls[offset] = branch.step
        if seq < len(history):
            recorded = history[seq]
            self._check(command, recorded, gen)
            if isinstance(command, (cmds.Join, cmds.First)):
                branches = history.branches(seq)
                if len(branches) != len(command.commands):
                    raise NondeterminismError(
                        run_id=self.run_id,
                        seq=seq,
                        expected=f"{command.kind} with {len(command.commands)} branches at "
                        f"{yield_location(gen)}",
                        recorded=f"{recorded.label()} with {len(branches)} branches",
                    )
                for branch_cmd, branch in zip(command.commands, branches, strict=False):
                    self._check(branch_cmd, branch, gen)
                self._cursor = seq + 1 + len(branches)
            else:
                self._cursor = seq + 1
            if self._calls is not None:
                self._calls.replayed()  # reported when this command was recorded
        else:
            if not record:
                raise _StopReplay()
            record_new(
                command,
                history,
                act,
                now,
                inbox,
                run_id=self.run_id,
                gen=self._gen,
                max_bytes=self.max_value_bytes,
            )
            self._cursor = len(history)
            if self._calls is not None:
                act.warnings.extend(call.audit() for call in self._calls.found())
        self._blocked = Blocked(seq, command)
        return resolve(self._blocked, history, act, now, self.run_id, start_held=record)

    def _check(self, command: Any, recorded: Entry, gen: Generator[Any, Any, Any]) -> None:
        if command.kind != recorded.kind or command.name != recorded.name:
            raise NondeterminismError(
                run_id=self.run_id,
                seq=recorded.seq,
                expected=f"{command.kind} {command.name!r} at {yield_location(gen)}",
                recorded=recorded.label(),
            )

    def _patched(
        self,
        command: cmds.Patched,
        history: History,
        act: Activation,
        now: datetime,
        *,
        record: bool,
    ) -> Feed:
        cursor = self._cursor
        if cursor < len(history):
            # Markers of patches the code no longer checks may stand in front of ours.
            probe = cursor
            while probe < len(history) and history[probe].kind == "patch":
                if history[probe].name == command.change_id:
                    self._cursor = probe + 1
                    return Feed(False, True)
                probe += 1
            # Recorded before the change: old code never asked here, so take the old path
            # and consume no position.
            return Feed(False, False)
        if history.outcome is not None:
            # The run already ended on code that never asked here: replay the old path.
            return Feed(False, False)
        if not record:
            raise _StopReplay()
        entry = append_entry(history, act, now, "patch", command.change_id, gen=self._gen)
        history.resolve(entry.seq, _DONE, result=True, at=iso(now))
        self._cursor = entry.seq + 1
        return Feed(False, True)

    # ------------------------------------------------------------------ recording

    # ------------------------------------------------------------------ waiting

    def _waiting_seqs(self, history: History) -> tuple[int, ...]:
        blocked = self._blocked
        if blocked is None:
            return ()
        if blocked.kind in ("join", "first"):
            return tuple(
                b.seq
                for b in history.branches(blocked.seq)
                if b.status in (_PENDING, _RUNNING) and not b.meta.get(HELD)
            )
        return (blocked.seq,)
