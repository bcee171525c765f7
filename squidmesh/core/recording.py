"""Recording and resolving history entries for the commands a workflow yields.

``record_new`` appends the entries of a command yielded past the end of the history (a
step call, a timer, a join's branches, ...), resolving at once the ones whose value is
known now (logs, ``sm.now``, ``sm.uuid4``, ``sm.random``). ``resolve`` turns the entry a
command is blocked on back into what the generator is fed: its decoded result, or the
exception it failed with; ``None`` while it is still undecided. Pure, like the rest of
the core: the interpreter passes in the run id, the generator and ``now``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import uuid
from collections.abc import Generator
from datetime import datetime, timedelta
from typing import Any

from squidmesh.core import commands as cmds
from squidmesh.core import contracts
from squidmesh.core.activation import Activation, BufferedEvent, ChildStart, compensation_plan
from squidmesh.core.definition import StepCall
from squidmesh.core.failures import exception_for
from squidmesh.core.history import Entry, History
from squidmesh.core.records import COMPENSATION_PENDING
from squidmesh.errors import DefinitionError, UnstorableValueError
from squidmesh.types import EntryStatus

__all__ = [
    "HELD",
    "START",
    "Blocked",
    "Feed",
    "WorkflowBug",
    "append_entry",
    "iso",
    "record_new",
    "recorded_value",
    "resolve",
    "yield_location",
]

_DONE = EntryStatus.COMPLETED.value
_FAILED = EntryStatus.FAILED.value
_CANCELLED = EntryStatus.CANCELLED.value
_PENDING = EntryStatus.PENDING.value
_RUNNING = EntryStatus.RUNNING.value
_IMMEDIATE = frozenset({"log", "now", "uuid4", "random", "publish"})
#: ``meta`` flag of a ``join(limit=...)`` branch waiting for a slot: recorded, not started
HELD = "held"


@dataclasses.dataclass(frozen=True)
class Feed:
    throw: bool
    value: Any


START = Feed(False, None)


@dataclasses.dataclass(frozen=True)
class Blocked:
    seq: int
    command: Any

    @property
    def kind(self) -> str:
        return str(self.command.kind)


class WorkflowBug(Exception):
    """A problem in the workflow's code found while interpreting a command."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        super().__init__(str(error))


def iso(moment: datetime) -> str:
    return moment.isoformat()


def yield_location(gen: Generator[Any, Any, Any]) -> str | None:
    """file:line of the ``yield`` the workflow is parked at.

    ``yield from helper()`` chains are followed into the helper generators (their lines
    are the ones that yielded). ``yield from cmd`` ends the chain at the workflow's own
    frame: a command's iterator is not a generator (see ``yielding``).
    """
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


# ------------------------------------------------------------------ recording


def append_entry(
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
    gen: Generator[Any, Any, Any] | None,
) -> Entry:
    entry = Entry(
        seq=len(history),
        kind=kind,
        name=name,
        status=status,
        input=input,
        parent=parent,
        meta=meta or {},
        loc=yield_location(gen) if gen is not None else None,
        wake_at=iso(wake_at) if wake_at is not None else None,
        created_at=iso(now),
    )
    history.append(entry)
    act.new_entries.append(entry)
    return entry


def record_new(
    command: Any,
    history: History,
    act: Activation,
    now: datetime,
    inbox: list[BufferedEvent],
    *,
    run_id: str,
    gen: Generator[Any, Any, Any] | None,
    max_bytes: int | None = None,
) -> None:
    kind = command.kind
    if kind in _IMMEDIATE:
        logged = None
        if kind == "log":
            logged = _stored(
                {
                    "message": command.message,
                    "level": command.level,
                    "fields": _safe(command.fields),
                },
                f"sm.log at {yield_location(gen) if gen is not None else '?'}",
                run_id,
                max_bytes,
            )
        if kind == "publish":
            where = yield_location(gen) if gen is not None else "?"
            value = _stored(
                command.value, f"sm.publish({command.name!r}) at {where}", run_id, max_bytes
            )
            entry = append_entry(history, act, now, kind, command.name, gen=gen)
            history.resolve(entry.seq, _DONE, result=value, at=iso(now))
            return
        entry = append_entry(history, act, now, kind, command.name, input=logged, gen=gen)
        history.resolve(entry.seq, _DONE, result=_immediate_value(entry, now, run_id), at=iso(now))
        return
    if kind == "undo":
        plan = compensation_plan(history)
        entry = append_entry(
            history, act, now, "undo", "undo", status=_RUNNING, input={"steps": plan}, gen=gen
        )
        if plan:
            act.compensate = tuple(plan)
            for seq in plan:
                history[seq].set_compensation(COMPENSATION_PENDING)
                act.touch(history[seq])
        return
    if isinstance(command, (cmds.Join, cmds.First)):
        spec: dict[str, Any] = {
            "branches": len(command.commands),
            "return_exceptions": getattr(command, "return_exceptions", False),
        }
        limit = getattr(command, "limit", None)
        if limit is not None:
            spec["limit"] = limit
        container = append_entry(
            history, act, now, kind, kind, status=_RUNNING, input=spec, gen=gen
        )
        for index, branch in enumerate(command.commands):
            _new_leaf(
                branch,
                history,
                act,
                now,
                inbox,
                parent=container.seq,
                run_id=run_id,
                gen=gen,
                max_bytes=max_bytes,
                # beyond the limit: recorded now, started when a slot frees (_release)
                held=limit is not None and index >= limit,
            )
        return
    _new_leaf(
        command, history, act, now, inbox, parent=None, run_id=run_id, gen=gen, max_bytes=max_bytes
    )


def _new_leaf(
    command: Any,
    history: History,
    act: Activation,
    now: datetime,
    inbox: list[BufferedEvent],
    *,
    parent: int | None,
    run_id: str,
    gen: Generator[Any, Any, Any] | None,
    max_bytes: int | None = None,
    held: bool = False,
) -> None:
    entry = _append_leaf(
        command, history, act, now, parent=parent, run_id=run_id, gen=gen, max_bytes=max_bytes
    )
    if held:
        entry.meta[HELD] = True
    else:
        _start_leaf(command, entry, history, act, now, inbox)


def _append_leaf(
    command: Any,
    history: History,
    act: Activation,
    now: datetime,
    *,
    parent: int | None,
    run_id: str,
    gen: Generator[Any, Any, Any] | None,
    max_bytes: int | None,
) -> Entry:
    """Record what a waiting command asks for (pending: nothing started yet)."""
    if isinstance(command, StepCall):
        where = yield_location(gen) if gen is not None else None
        arguments = _stored(
            command.arguments,
            f"the arguments of step {command.name}" + (f" at {where}" if where else ""),
            run_id,
            max_bytes,
        )
        meta = command.step.policy().to_json()
        if command.flow is not None:
            meta["flow"] = dict(command.flow)
        return append_entry(
            history,
            act,
            now,
            "step",
            command.name,
            input=arguments,
            parent=parent,
            meta=meta,
            gen=gen,
        )
    if isinstance(command, cmds.Sleep):
        if command.until is not None:
            spec: dict[str, Any] = {"until": iso(command.until)}
        else:
            spec = {"seconds": command.seconds}
        return append_entry(history, act, now, "sleep", "sleep", input=spec, parent=parent, gen=gen)
    if isinstance(command, cmds.Pause):
        return append_entry(
            history,
            act,
            now,
            "pause",
            command.name,
            input={"reason": command.reason},
            parent=parent,
            gen=gen,
        )
    if isinstance(command, (cmds.Approval, cmds.WaitForEvent)):
        return append_entry(
            history,
            act,
            now,
            command.kind,
            command.name,
            input={"timeout": command.timeout},
            parent=parent,
            gen=gen,
        )
    if isinstance(command, (cmds.Child, cmds.StartChild)):
        where = yield_location(gen) if gen is not None else None
        payload = _stored(
            command.payload,
            f"the payload of child workflow {command.name}" + (f" at {where}" if where else ""),
            run_id,
            max_bytes,
        )
        return append_entry(
            history,
            act,
            now,
            command.kind,
            command.name,
            input={
                "workflow": command.name,
                "trigger": command.trigger,
                "payload": payload,
                "key": command.key,
            },
            parent=parent,
            gen=gen,
        )
    # pragma: no cover - commands.join() validates branch kinds
    raise WorkflowBug(DefinitionError(f"unsupported command {command!r}"))


def _start_leaf(
    command: Any,
    entry: Entry,
    history: History,
    act: Activation,
    now: datetime,
    inbox: list[BufferedEvent],
) -> None:
    """Start the wait a recorded command asks for, from ``now``: a timer, a wait for a
    person or an event, a child run. A step stays pending: the runtime schedules it."""
    if entry.kind == "step":
        return
    entry.status = _RUNNING
    if isinstance(command, cmds.Sleep):
        wake = command.until or now + timedelta(seconds=command.seconds or 0.0)
        entry.wake_at = iso(wake)
    elif isinstance(command, (cmds.Approval, cmds.WaitForEvent)):
        if command.timeout is not None:
            entry.wake_at = iso(now + timedelta(seconds=command.timeout))
        if command.kind == "event":
            for index, event in enumerate(inbox):
                if event.name == command.name:
                    del inbox[index]
                    history.resolve(entry.seq, _DONE, result=event.data, at=iso(now))
                    act.consumed_events = (*act.consumed_events, event.id)
                    break
    elif isinstance(command, (cmds.Child, cmds.StartChild)):
        act.children.append(ChildStart(entry.seq, command))


def _immediate_value(entry: Entry, now: datetime, run_id: str) -> Any:
    if entry.kind == "now":
        return iso(now)
    if entry.kind == "uuid4":
        return str(uuid.UUID(bytes=_derived_bytes(run_id, entry.seq, "uuid4")[:16], version=4))
    if entry.kind == "random":
        raw = int.from_bytes(_derived_bytes(run_id, entry.seq, "random")[:8], "big")
        return (raw >> 11) / float(1 << 53)
    return None


def resolve(
    blocked: Blocked,
    history: History,
    act: Activation,
    now: datetime,
    run_id: str,
    *,
    start_held: bool = True,
) -> Feed | None:
    """What the generator blocked on ``blocked`` is fed next, or None while undecided.

    ``start_held``: branches of a ``join(limit=...)`` waiting for a slot may be started
    (False while only replaying, to cancel a run: nothing new may begin then).
    """
    kind = blocked.kind
    entry = history[blocked.seq]
    if kind in ("join", "first"):
        return _resolve_group(blocked, history, act, now, run_id, start_held=start_held)
    if kind == "undo":
        return _resolve_undo(entry, history, act, now)
    if entry.status == _DONE:
        return Feed(False, recorded_value(entry, blocked.command, run_id))
    if entry.status == _FAILED:
        return Feed(True, exception_for(entry))
    return None


def recorded_value(entry: Entry, command: Any, run_id: str) -> Any:
    try:
        if entry.kind == "step":
            return contracts.decode(entry.result, command.step.return_annotation)
        if entry.kind == "approval":
            return cmds.Decision.from_json(entry.result)
        if entry.kind == "now":
            return datetime.fromisoformat(entry.result)
        if entry.kind == "uuid4":
            return uuid.UUID(entry.result)
        if entry.kind == "child":
            definition = getattr(command, "definition", None)
            if definition is None:
                return entry.result
            return contracts.decode(entry.result, definition.result_annotation)
        if entry.kind == "start_child":
            return uuid.UUID(str(entry.result))
        if entry.kind == "publish":
            return None  # the yield evaluates to None; the value is what was published
    except Exception as exc:
        raise WorkflowBug(
            DefinitionError(
                f"run {run_id}: the recorded result of {entry.label()} no longer fits "
                f"the code ({exc}); restore the old return type or guard with sm.patched"
            )
        ) from exc
    return entry.result


def _resolve_group(
    blocked: Blocked,
    history: History,
    act: Activation,
    now: datetime,
    run_id: str,
    *,
    start_held: bool = True,
) -> Feed | None:
    container = history[blocked.seq]
    branches = history.branches(blocked.seq)
    commands: tuple[Any, ...] = blocked.command.commands
    # One pass, no sort: a fan-out's join is looked at once per finished branch, so
    # this stays linear in its branches (earliest = lowest resolution order).
    finished = [b for b in branches if b.resolved]
    feed: Feed | None = None
    if blocked.kind == "first":
        if finished:
            winner = min(finished, key=lambda b: b.order or 0)
            index = winner.seq - blocked.seq - 1
            if winner.status == _FAILED:
                feed = Feed(True, exception_for(winner))
            else:
                feed = Feed(False, (index, recorded_value(winner, commands[index], run_id)))
    else:
        return_exceptions = bool(blocked.command.return_exceptions)
        if not return_exceptions:
            failed = [b for b in finished if b.status == _FAILED]
            if failed:
                feed = Feed(True, exception_for(min(failed, key=lambda b: b.order or 0)))
        if feed is None and len(finished) == len(branches):
            values = []
            for offset, branch in enumerate(branches):
                if branch.status == _FAILED:
                    values.append(exception_for(branch))
                else:
                    values.append(recorded_value(branch, commands[offset], run_id))
            feed = Feed(False, tuple(values))
    if feed is None:
        if start_held:
            _release(container, branches, commands, history, act, now)
        return None
    # The group is decided: losers and pending siblings are cancelled, and the
    # container records how it ended.
    for branch in branches:
        if branch.status in (_PENDING, _RUNNING):
            branch.status = _CANCELLED
            branch.wake_at = None
            act.touch(branch)
    if container.status in (_PENDING, _RUNNING):
        history.resolve(container.seq, _FAILED if feed.throw else _DONE, at=iso(now))
        act.touch(container)
    return feed


def _release(
    container: Entry,
    branches: list[Entry],
    commands: tuple[Any, ...],
    history: History,
    act: Activation,
    now: datetime,
) -> None:
    """Start held branches of a ``join(limit=N)``, in argument order, until N are in
    flight. Driven only by the recorded branch states (and the limit recorded with the
    join), so a replay reaches the same decisions: a consistent history has nothing to
    release."""
    limit = (container.input or {}).get("limit")
    if not limit:
        return
    active = (_PENDING, _RUNNING)
    in_flight = sum(1 for b in branches if b.status in active and not b.meta.get(HELD))
    for offset, branch in enumerate(branches):
        if in_flight >= limit:
            break
        if branch.status != _PENDING or not branch.meta.get(HELD):
            continue
        del branch.meta[HELD]
        branch.started_at = iso(now)  # when it got its slot (created_at: when recorded)
        _start_leaf(commands[offset], branch, history, act, now, [])
        act.touch(branch)
        act.started.append(branch)
        in_flight += 0 if branch.resolved else 1


def _resolve_undo(entry: Entry, history: History, act: Activation, now: datetime) -> Feed | None:
    outcomes = []
    for seq in (entry.input or {}).get("steps", []):
        step_entry = history[seq]
        comp = step_entry.compensation_state
        if comp is None or not comp.ended:
            return None
        outcomes.append(
            {
                "step": step_entry.name,
                "seq": seq,
                "status": comp.status.value,
                "output": comp.output,
                "error": comp.error.to_json() if comp.error is not None else None,
            }
        )
    if entry.status in (_PENDING, _RUNNING):
        history.resolve(entry.seq, _DONE, result=outcomes, at=iso(now))
        act.touch(entry)
    return Feed(False, outcomes)


def _stored(value: Any, what: str, run_id: str, max_bytes: int | None) -> Any:
    """A value recorded from workflow code; one that cannot be stored is a bug in that
    code (the run is suspended with the message, nothing is recorded)."""
    try:
        return contracts.stored(value, what=what, max_bytes=max_bytes)
    except UnstorableValueError as exc:
        raise WorkflowBug(DefinitionError(f"run {run_id}: {exc}")) from exc


def _safe(fields: dict[str, Any]) -> Any:
    try:
        return contracts.encode(fields, what="log fields")
    except contracts.EncodeError:
        return {k: repr(v) for k, v in fields.items()}
