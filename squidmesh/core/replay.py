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
import hashlib
import inspect
import uuid
from collections.abc import Generator, Sequence
from datetime import datetime, timedelta
from typing import Any

from squidmesh.core import commands as cmds
from squidmesh.core import contracts
from squidmesh.core.context import CurrentRun, reset_current_run, set_current_run
from squidmesh.core.definition import StepCall, WorkflowDefinition
from squidmesh.core.failures import error_info, exception_for
from squidmesh.core.history import Entry, History
from squidmesh.errors import (
    DefinitionError,
    Fail,
    NondeterminismError,
    RunCancelled,
    StepFailed,
    TimedOut,
)
from squidmesh.types import EntryStatus

__all__ = ["Activation", "BufferedEvent", "Interpreter", "compensation_plan"]

WAITING = "waiting"
COMPLETED = "completed"
FAILED = "failed"
SUSPENDED = "suspended"
CANCELLED = "cancelled"

_DONE = EntryStatus.COMPLETED.value
_FAILED = EntryStatus.FAILED.value
_CANCELLED = EntryStatus.CANCELLED.value
_PENDING = EntryStatus.PENDING.value
_RUNNING = EntryStatus.RUNNING.value
_IMMEDIATE = frozenset({"log", "now", "uuid4", "random"})


@dataclasses.dataclass(frozen=True)
class BufferedEvent:
    """An event sent to a run before it waited for it."""

    id: int
    name: str
    data: Any


@dataclasses.dataclass
class Activation:
    """What one activation of a workflow decided. Plain values, ready to persist.

    ``new_entries`` were appended to the history (some already resolved: logs, recorded
    values); ``updates`` are earlier entries this activation changed (cancelled branches,
    resolved joins, compensations requested). ``compensate`` lists step seqs whose
    compensations must now run, in that order.
    """

    outcome: str = WAITING
    new_entries: list[Entry] = dataclasses.field(default_factory=list)
    updates: list[Entry] = dataclasses.field(default_factory=list)
    waiting_on: tuple[int, ...] = ()
    result: Any = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    compensate: tuple[int, ...] = ()
    consumed_events: tuple[int, ...] = ()

    @property
    def logs(self) -> list[Entry]:
        """Log lines first recorded by this activation: emit these, and only these."""
        return [e for e in self.new_entries if e.kind == "log"]

    def _touch(self, entry: Entry) -> None:
        if entry not in self.new_entries and entry not in self.updates:
            self.updates.append(entry)


@dataclasses.dataclass(frozen=True)
class _Feed:
    throw: bool
    value: Any


_START = _Feed(False, None)


@dataclasses.dataclass(frozen=True)
class _Blocked:
    seq: int
    command: Any

    @property
    def kind(self) -> str:
        return str(self.command.kind)


class _WorkflowBug(Exception):
    """A problem in the workflow's code found while interpreting a command."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        super().__init__(str(error))


class _StopReplay(Exception):
    """Raised when a replay-only pass reaches a command it would have to record."""


def compensation_plan(history: History) -> list[int]:
    """Completed steps with a compensation not yet run, newest completion first."""
    todo = [
        e
        for e in history.entries
        if e.kind == "step"
        and e.status == _DONE
        and e.meta.get("compensate")
        and e.compensation is None
    ]
    todo.sort(key=lambda e: e.order if e.order is not None else -1, reverse=True)
    return [e.seq for e in todo]


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _yield_location(gen: Generator[Any, Any, Any]) -> str | None:
    inner: Any = gen
    while True:
        nxt = getattr(inner, "gi_yieldfrom", None)
        if nxt is None or not inspect.isgenerator(nxt):
            break
        inner = nxt
    frame = getattr(inner, "gi_frame", None)
    if frame is None:
        return None
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _derived_bytes(run_id: str, seq: int, kind: str) -> bytes:
    # Recorded values are derived from (run, position) rather than an RNG so that the core
    # stays pure; the history still records them, so replay never recomputes.
    return hashlib.sha256(f"{run_id}:{seq}:{kind}".encode()).digest()


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
    ) -> None:
        self.workflow = workflow
        self.run_id = run_id
        self.trigger = trigger or workflow.default_trigger.name
        self.payload = dict(payload or {})
        self.schedule = schedule
        self._gen: Generator[Any, Any, Any] | None = None
        self._cursor = 0
        self._horizon = 0
        self._blocked: _Blocked | None = None
        self._finished = False
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
                feed = _START
            else:
                assert self._blocked is not None
                resolved = self._resolve(self._blocked, history, act, now)
                if resolved is None:
                    act.waiting_on = self._waiting_seqs(history)
                    return act
                feed = resolved
            return self._run(feed, history, act, now, list(inbox), record=True)
        except NondeterminismError as exc:
            self._discard()
            return self._suspend(act, "nondeterminism", exc)
        except _WorkflowBug as bug:
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
                    self._run(_START, history, act, now, [], record=False)
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
        except (NondeterminismError, _WorkflowBug):
            pass  # the run is being cancelled; a broken replay cannot stop that
        self._gen = None
        self._finished = True
        for entry in history.entries:
            if entry.status in (_PENDING, _RUNNING):
                entry.status = _CANCELLED
                entry.wake_at = None
                act._touch(entry)
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
        # A run that already ended (its history has an outcome) replays to its very end.
        token = self._enter(history, replaying=self._horizon > 0 or history.outcome is not None)
        try:
            self._gen = self.workflow(payload)
        except Exception as exc:
            raise _WorkflowBug(exc) from exc
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
        feed: _Feed,
        history: History,
        act: Activation,
        now: datetime,
        inbox: list[BufferedEvent],
        *,
        record: bool,
    ) -> Activation:
        gen = self._gen
        assert gen is not None
        next_feed: _Feed | None = feed
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
        try:
            act.result = contracts.encode(value, what=f"workflow {self.workflow.name} result")
        except contracts.EncodeError as exc:
            return self._suspend(act, "workflow_error", exc)
        act.outcome = COMPLETED
        return act

    def _fail(
        self, act: Activation, history: History, error: dict[str, Any], reason: str
    ) -> Activation:
        self._gen = None
        self._finished = True
        act.outcome = FAILED
        act.error = error
        act.reason = reason
        act.compensate = tuple(self._request_compensation(history, act))
        return act

    def _suspend(self, act: Activation, reason: str, exc: BaseException) -> Activation:
        act.outcome = SUSPENDED
        act.reason = reason
        act.error = error_info(exc, retryable=True)
        if isinstance(exc, NondeterminismError):
            act.error["details"] = {
                "seq": exc.seq,
                "expected": exc.expected,
                "recorded": exc.recorded,
            }
        return act

    def _request_compensation(self, history: History, act: Activation) -> list[int]:
        plan = compensation_plan(history)
        for seq in plan:
            entry = history[seq]
            entry.compensation = {"status": _PENDING}
            act._touch(entry)
        return plan

    def _step_error(self, exc: StepFailed, history: History) -> dict[str, Any]:
        if 0 <= exc.seq < len(history) and history[exc.seq].error:
            error = dict(history[exc.seq].error or {})
            error["step"] = exc.step
            error["seq"] = exc.seq
            error["attempts"] = exc.attempts
            return error
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
    ) -> _Feed | None:
        gen = self._gen
        assert gen is not None
        if not isinstance(command, cmds.COMMAND_TYPES):
            raise _WorkflowBug(
                DefinitionError(
                    f"workflow {self.workflow.name} (run {self.run_id}) yielded {command!r} at "
                    f"{_yield_location(gen)}: yield a step call or an sm.* command "
                    "(did you forget to call the step?)"
                )
            )
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
                        f"{_yield_location(gen)}",
                        recorded=f"{recorded.label()} with {len(branches)} branches",
                    )
                for branch_cmd, branch in zip(command.commands, branches, strict=False):
                    self._check(branch_cmd, branch, gen)
                self._cursor = seq + 1 + len(branches)
            else:
                self._cursor = seq + 1
        else:
            if not record:
                raise _StopReplay()
            self._new(command, history, act, now, inbox)
            self._cursor = len(history)
        self._blocked = _Blocked(seq, command)
        return self._resolve(self._blocked, history, act, now)

    def _check(self, command: Any, recorded: Entry, gen: Generator[Any, Any, Any]) -> None:
        if command.kind != recorded.kind or command.name != recorded.name:
            raise NondeterminismError(
                run_id=self.run_id,
                seq=recorded.seq,
                expected=f"{command.kind} {command.name!r} at {_yield_location(gen)}",
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
    ) -> _Feed:
        cursor = self._cursor
        if cursor < len(history):
            # Markers of patches the code no longer checks may stand in front of ours.
            probe = cursor
            while probe < len(history) and history[probe].kind == "patch":
                if history[probe].name == command.change_id:
                    self._cursor = probe + 1
                    return _Feed(False, True)
                probe += 1
            # Recorded before the change: old code never asked here, so take the old path
            # and consume no position.
            return _Feed(False, False)
        if history.outcome is not None:
            # The run already ended on code that never asked here: replay the old path.
            return _Feed(False, False)
        if not record:
            raise _StopReplay()
        entry = self._append(history, act, now, "patch", command.change_id)
        history.resolve(entry.seq, _DONE, result=True, at=_iso(now))
        self._cursor = entry.seq + 1
        return _Feed(False, True)

    # ------------------------------------------------------------------ recording

    def _append(
        self,
        history: History,
        act: Activation,
        now: datetime,
        kind: str,
        name: str,
        *,
        status: str = _PENDING,
        input: Any = None,
        parent: int | None = None,
        meta: dict[str, Any] | None = None,
        wake_at: datetime | None = None,
    ) -> Entry:
        entry = Entry(
            seq=len(history),
            kind=kind,
            name=name,
            status=status,
            input=input,
            parent=parent,
            meta=meta or {},
            loc=_yield_location(self._gen) if self._gen is not None else None,
            wake_at=_iso(wake_at) if wake_at is not None else None,
            created_at=_iso(now),
        )
        history.append(entry)
        act.new_entries.append(entry)
        return entry

    def _new(
        self,
        command: Any,
        history: History,
        act: Activation,
        now: datetime,
        inbox: list[BufferedEvent],
    ) -> None:
        kind = command.kind
        if kind in _IMMEDIATE:
            entry = self._append(
                history,
                act,
                now,
                kind,
                command.name,
                input={
                    "message": command.message,
                    "level": command.level,
                    "fields": _safe(command.fields),
                }
                if kind == "log"
                else None,
            )
            history.resolve(
                entry.seq, _DONE, result=self._immediate_value(entry, now), at=_iso(now)
            )
            return
        if kind == "undo":
            plan = compensation_plan(history)
            entry = self._append(
                history, act, now, "undo", "undo", status=_RUNNING, input={"steps": plan}
            )
            if plan:
                act.compensate = tuple(plan)
                for seq in plan:
                    history[seq].compensation = {"status": _PENDING}
                    act._touch(history[seq])
            return
        if isinstance(command, (cmds.Join, cmds.First)):
            container = self._append(
                history,
                act,
                now,
                kind,
                kind,
                status=_RUNNING,
                input={
                    "branches": len(command.commands),
                    "return_exceptions": getattr(command, "return_exceptions", False),
                },
            )
            for branch in command.commands:
                self._new_leaf(branch, history, act, now, inbox, parent=container.seq)
            return
        self._new_leaf(command, history, act, now, inbox, parent=None)

    def _new_leaf(
        self,
        command: Any,
        history: History,
        act: Activation,
        now: datetime,
        inbox: list[BufferedEvent],
        *,
        parent: int | None,
    ) -> None:
        if isinstance(command, StepCall):
            try:
                arguments = contracts.encode(
                    command.arguments, what=f"an argument of step {command.name}"
                )
            except contracts.EncodeError as exc:
                raise _WorkflowBug(
                    DefinitionError(f"run {self.run_id}: step {command.name} was called with {exc}")
                ) from exc
            self._append(
                history,
                act,
                now,
                "step",
                command.name,
                input=arguments,
                parent=parent,
                meta=command.step.policy(),
            )
        elif isinstance(command, cmds.Sleep):
            if command.until is not None:
                wake = command.until
                spec: dict[str, Any] = {"until": _iso(command.until)}
            else:
                wake = now + timedelta(seconds=command.seconds or 0.0)
                spec = {"seconds": command.seconds}
            self._append(
                history,
                act,
                now,
                "sleep",
                "sleep",
                status=_RUNNING,
                input=spec,
                parent=parent,
                wake_at=wake,
            )
        elif isinstance(command, cmds.Pause):
            self._append(
                history,
                act,
                now,
                "pause",
                command.name,
                status=_RUNNING,
                input={"reason": command.reason},
                parent=parent,
            )
        elif isinstance(command, (cmds.Approval, cmds.WaitForEvent)):
            deadline = (
                now + timedelta(seconds=command.timeout) if command.timeout is not None else None
            )
            entry = self._append(
                history,
                act,
                now,
                command.kind,
                command.name,
                status=_RUNNING,
                input={"timeout": command.timeout},
                parent=parent,
                wake_at=deadline,
            )
            if command.kind == "event":
                for index, event in enumerate(inbox):
                    if event.name == command.name:
                        del inbox[index]
                        history.resolve(entry.seq, _DONE, result=event.data, at=_iso(now))
                        act.consumed_events = (*act.consumed_events, event.id)
                        break
        else:  # pragma: no cover - commands.join() validates branch kinds
            raise _WorkflowBug(DefinitionError(f"unsupported command {command!r}"))

    def _immediate_value(self, entry: Entry, now: datetime) -> Any:
        if entry.kind == "now":
            return _iso(now)
        if entry.kind == "uuid4":
            return str(
                uuid.UUID(bytes=_derived_bytes(self.run_id, entry.seq, "uuid4")[:16], version=4)
            )
        if entry.kind == "random":
            raw = int.from_bytes(_derived_bytes(self.run_id, entry.seq, "random")[:8], "big")
            return (raw >> 11) / float(1 << 53)
        return None

    # ------------------------------------------------------------------ resolution

    def _waiting_seqs(self, history: History) -> tuple[int, ...]:
        blocked = self._blocked
        if blocked is None:
            return ()
        if blocked.kind in ("join", "first"):
            return tuple(
                b.seq for b in history.branches(blocked.seq) if b.status in (_PENDING, _RUNNING)
            )
        return (blocked.seq,)

    def _resolve(
        self, blocked: _Blocked, history: History, act: Activation, now: datetime
    ) -> _Feed | None:
        kind = blocked.kind
        entry = history[blocked.seq]
        if kind in ("join", "first"):
            return self._resolve_group(blocked, history, act, now)
        if kind == "undo":
            return self._resolve_undo(entry, history, act, now)
        if entry.status == _DONE:
            return _Feed(False, self._value(entry, blocked.command))
        if entry.status == _FAILED:
            return _Feed(True, exception_for(entry))
        return None

    def _value(self, entry: Entry, command: Any) -> Any:
        try:
            if entry.kind == "step":
                return contracts.decode(entry.result, command.step.return_annotation)
            if entry.kind == "approval":
                return cmds.Decision.from_json(entry.result)
            if entry.kind == "now":
                return datetime.fromisoformat(entry.result)
            if entry.kind == "uuid4":
                return uuid.UUID(entry.result)
        except Exception as exc:
            raise _WorkflowBug(
                DefinitionError(
                    f"run {self.run_id}: the recorded result of {entry.label()} no longer fits "
                    f"the code ({exc}); restore the old return type or guard with sm.patched"
                )
            ) from exc
        return entry.result

    def _resolve_group(
        self, blocked: _Blocked, history: History, act: Activation, now: datetime
    ) -> _Feed | None:
        container = history[blocked.seq]
        branches = history.branches(blocked.seq)
        commands: tuple[Any, ...] = blocked.command.commands
        finished = sorted((b for b in branches if b.resolved), key=lambda b: b.order or 0)
        feed: _Feed | None = None
        if blocked.kind == "first":
            if finished:
                winner = finished[0]
                index = winner.seq - blocked.seq - 1
                if winner.status == _FAILED:
                    feed = _Feed(True, exception_for(winner))
                else:
                    feed = _Feed(False, (index, self._value(winner, commands[index])))
        else:
            return_exceptions = bool(blocked.command.return_exceptions)
            if not return_exceptions:
                for branch in finished:
                    if branch.status == _FAILED:
                        feed = _Feed(True, exception_for(branch))
                        break
            if feed is None and len(finished) == len(branches):
                values = []
                for offset, branch in enumerate(branches):
                    if branch.status == _FAILED:
                        values.append(exception_for(branch))
                    else:
                        values.append(self._value(branch, commands[offset]))
                feed = _Feed(False, tuple(values))
        if feed is None:
            return None
        # The group is decided: losers and pending siblings are cancelled, and the
        # container records how it ended.
        for branch in branches:
            if branch.status in (_PENDING, _RUNNING):
                branch.status = _CANCELLED
                branch.wake_at = None
                act._touch(branch)
        if container.status in (_PENDING, _RUNNING):
            history.resolve(container.seq, _FAILED if feed.throw else _DONE, at=_iso(now))
            act._touch(container)
        return feed

    def _resolve_undo(
        self, entry: Entry, history: History, act: Activation, now: datetime
    ) -> _Feed | None:
        outcomes = []
        for seq in (entry.input or {}).get("steps", []):
            step_entry = history[seq]
            comp = step_entry.compensation or {}
            if comp.get("status") not in (_DONE, _FAILED):
                return None
            outcomes.append(
                {
                    "step": step_entry.name,
                    "seq": seq,
                    "status": comp.get("status"),
                    "output": comp.get("output"),
                    "error": comp.get("error"),
                }
            )
        if entry.status in (_PENDING, _RUNNING):
            history.resolve(entry.seq, _DONE, result=outcomes, at=_iso(now))
            act._touch(entry)
        return _Feed(False, outcomes)


def _safe(fields: dict[str, Any]) -> Any:
    try:
        return contracts.encode(fields, what="log fields")
    except contracts.EncodeError:
        return {k: repr(v) for k, v in fields.items()}
