"""Test workflows in memory: ``WorkflowTester`` and ``replay``.

``WorkflowTester`` runs a workflow on the real runtime engine (an ``sm.Mesh`` over an
``InMemoryStore`` with the ``InlineExecutor``), so runs go through exactly the state
transitions, jobs, retries, timers and compensations of production, with steps executed
in the test's thread, a virtual clock and optional step stubs. Child runs (``sm.child``,
``sm.start_child``, ``sm.continue_as_new``) run in the same tester, each a ``TestRun``
too (``run.children``); ``children={workflow: stub}`` replaces a child workflow by a
stub. With
``replay_each_command=True`` (the default) every activation is re-checked by a fresh
replay of the history, so every unit test is also a determinism test. A step call the
workflow creates and never yields (recorded by the runtime as a ``warning`` audit event)
makes the tester raise ``DefinitionError``: a unit test should not pass over it.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

from squidmesh.core import unyielded
from squidmesh.core.definition import StepDefinition, WorkflowDefinition
from squidmesh.core.history import Entry, History
from squidmesh.core.records import Attempt, AuditEvent
from squidmesh.core.replay import Activation, Interpreter
from squidmesh.core.state import with_entry_attempts
from squidmesh.errors import DefinitionError, NondeterminismError
from squidmesh.mesh import Mesh
from squidmesh.runtime.engine import EngineHooks
from squidmesh.runtime.executors import InlineExecutor
from squidmesh.runtime.replaying import run_history, run_interpreter
from squidmesh.runtime.starting import NewRun, create_run
from squidmesh.storage.base import RunRecord
from squidmesh.storage.memory import InMemoryStore
from squidmesh.types import RunStatus

__all__ = [
    "TestRun",
    "Wait",
    "WorkflowTester",
    "assert_golden_histories",
    "raises",
    "replay",
]

DEFAULT_START = datetime(2030, 1, 1, tzinfo=timezone.utc)
_NAMELESS = frozenset(
    {"sleep", "join", "first", "log", "undo", "now", "uuid4", "random", "continue_as_new"}
)


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


class _Snapshot(NamedTuple):
    record: RunRecord
    history: History
    attempts: dict[int, list[Attempt]]
    audit: list[AuditEvent]


class TestRun:
    """A run inside a ``WorkflowTester``; its attributes reflect the latest stored state."""

    __test__ = False  # not a pytest test class

    def __init__(self, tester: WorkflowTester, run_id: str, trigger: str, payload: dict[str, Any]):
        self._tester = tester
        self.id = run_id
        self.trigger = trigger
        self.payload = payload
        self._snap: _Snapshot | None = None

    def __repr__(self) -> str:
        return f"<TestRun {self.id} {self.status.value}>"

    def _load(self) -> _Snapshot:
        """The stored run; re-read only when its version moved on. The ``History`` and
        its ``Entry`` objects are updated in place, so references to them stay current."""
        with self._tester._mesh.store.transaction() as tx:
            record = tx.get_run(self.id)
            if record is None:  # pragma: no cover - runs are never deleted here
                raise LookupError(f"run {self.id} is not stored")
            if self._snap is not None and self._snap.record.version == record.version:
                return self._snap
            history = run_history(record, tx.load_entries(self.id))
            attempts = with_entry_attempts(history.entries, tx.load_attempts(self.id))
            audit = tx.load_audit(self.id)
        if self._snap is not None:
            kept = self._snap.history
            for entry in history.entries[: len(kept.entries)]:
                target = kept.entries[entry.seq]
                for field in dataclasses.fields(Entry):
                    setattr(target, field.name, getattr(entry, field.name))
            kept.entries.extend(history.entries[len(kept.entries) :])
            kept.outcome, kept.result = history.outcome, history.result
            history = kept
        self._snap = _Snapshot(record, history, attempts, audit)
        return self._snap

    @property
    def status(self) -> RunStatus:
        return RunStatus(self._load().record.status)

    @property
    def result(self) -> Any:
        return self._load().record.result

    @property
    def error(self) -> dict[str, Any] | None:
        return self._load().record.error

    @property
    def reason(self) -> str | None:
        """Why a failed or suspended run stopped (None otherwise)."""
        record = self._load().record
        return record.reason if record.status in (RunStatus.FAILED, RunStatus.SUSPENDED) else None

    @property
    def history(self) -> History:
        return self._load().history

    @property
    def attempts(self) -> dict[int, list[Attempt]]:
        return self._load().attempts

    @property
    def logs(self) -> list[dict[str, Any]]:
        """The ``sm.log`` lines recorded, each ``{"message", "level", "fields", "seq"}``."""
        return [{**(e.input or {}), "seq": e.seq} for e in self.history.entries if e.kind == "log"]

    @property
    def compensations(self) -> list[tuple[str, str]]:
        """``(step name, status)`` of every compensation that ran, in order."""
        done = {"compensated": "completed", "compensation_failed": "failed"}
        return [(str(a.step), done[a.type]) for a in self._load().audit if a.type in done]

    @property
    def trace(self) -> list[str]:
        """The commands the workflow yielded, in order: ``"step:pack"``, ``"sleep"``, ..."""
        return [str(Wait(e.kind, e.name, e.seq)) for e in self.history.entries]

    @property
    def waiting_on(self) -> list[Wait]:
        snap = self._load()
        if self.status.is_terminal or self.status is RunStatus.SUSPENDED:
            return []
        entries = (snap.history[s] for s in snap.record.waiting_on)
        return [Wait(e.kind, e.name, e.seq, e.wake_at) for e in entries]

    @property
    def published(self) -> dict[str, Any]:
        """The values published with ``sm.publish`` so far (latest per name)."""
        published: dict[str, Any] = {}
        for entry in self.history.entries:
            if entry.kind == "publish":
                published[entry.name] = entry.result
        return published

    @property
    def children(self) -> list[TestRun]:
        """The runs this run started (``sm.child``, ``sm.start_child``), in the order
        they were started; a child that continued as new is followed by its successors."""
        with self._tester._mesh.store.transaction() as tx:
            records = tx.list_children(self.id)
        order = {
            str(e.meta.get("run_id")): e.seq
            for e in self.history.entries
            if e.kind in ("child", "start_child")
        }
        records.sort(
            key=lambda r: (
                order.get(r.id, r.parent_seq if r.parent_seq is not None else -1),
                r.created_at,
            )
        )
        return [self._tester._run_for(record) for record in records]

    @property
    def parent(self) -> TestRun | None:
        """The run that started this one, if any."""
        parent_id = self._load().record.parent_run_id
        return self._tester._run_for(parent_id) if parent_id else None

    @property
    def continued_as(self) -> TestRun | None:
        """The run that continues this one (``sm.continue_as_new``), if any."""
        nxt = self._load().record.continued_as_run_id
        return self._tester._run_for(nxt) if nxt else None

    @property
    def workflow(self) -> str:
        return self._load().record.workflow

    def step_attempts(self, name: str) -> list[Attempt]:
        """Every attempt of every call of step ``name``, in order."""
        snap = self._load()
        out: list[Attempt] = []
        for entry in snap.history.entries:
            if entry.kind == "step" and entry.name == name:
                out.extend(snap.attempts.get(entry.seq, []))
        return out

    def entries(self, kind: str | None = None, name: str | None = None) -> list[Entry]:
        return [
            e
            for e in self.history.entries
            if (kind is None or e.kind == kind) and (name is None or e.name == name)
        ]


class WorkflowTester:
    """Run a workflow in memory with a virtual clock and step stubs.

    Every method that drives a run raises ``DefinitionError`` naming the step and
    file:line when the workflow created a step call it never yielded.
    """

    __test__ = False

    def __init__(
        self,
        workflow: WorkflowDefinition,
        *,
        steps: Mapping[Any, Any] | None = None,
        start: datetime | None = None,
        replay_each_command: bool = True,
        children: Mapping[Any, Any] | None = None,
    ) -> None:
        """``children`` maps a child workflow (or its name) to what its runs return
        instead of running it: a value, a callable taking the child's validated payload,
        or ``raises(exc)`` (the child run fails with ``exc``; the parent gets
        ``sm.ChildFailed``). Other child workflows run for real, in this tester."""
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
        self._child_stubs: dict[str, Any] = {}
        for key, stub in (children or {}).items():
            name = key.name if isinstance(key, WorkflowDefinition) else key
            if not isinstance(name, str):
                raise TypeError(f"children= keys must be workflows or their names, got {key!r}")
            self._child_stubs[name] = stub
        self.runs: list[TestRun] = []
        #: every run known here by id: those started, and child runs once looked at
        self._by_id: dict[str, TestRun] = {}
        #: run id -> never-yielded warnings already raised for it
        self._warned: dict[str, int] = {}
        self._mesh = Mesh(
            store=InMemoryStore(),
            workflows=[workflow],
            executor=InlineExecutor(),
            clock=lambda: self._now,
            hooks=EngineHooks(step_override=self._override, on_activation=self._on_activation),
        )

    # ------------------------------------------------------------------ clock

    @property
    def now(self) -> datetime:
        return self._now

    def advance(self, amount: float | timedelta) -> None:
        """Move the virtual clock forward, running every job that falls due, in order."""
        delta = amount if isinstance(amount, timedelta) else timedelta(seconds=amount)
        if delta < timedelta(0):
            raise ValueError("the virtual clock only moves forward")
        target = self._now + delta
        while True:
            with self._mesh.store.transaction() as tx:
                nxt = tx.next_job_time()
            if nxt is None or nxt > target:
                break
            self._now = max(self._now, nxt)
            self._mesh.drain()
        self._now = target
        self._raise_unyielded()

    def advance_to_next_timer(self) -> datetime | None:
        """Jump to the earliest pending timer (sleep, timeout or retry) and fire it."""
        stamps = [
            e.wake_at
            for run in self._all_runs()
            if not run.status.is_terminal and run.status is not RunStatus.SUSPENDED
            for e in run.history.entries
            if e.wake_at is not None and e.status in ("pending", "running")
        ]
        if not stamps:
            return None
        self._now = max(self._now, datetime.fromisoformat(min(stamps)))
        self._mesh.drain()
        self._raise_unyielded()
        return self._now

    # ------------------------------------------------------------------ runs

    def start(
        self, payload: Any = None, trigger: str | None = None, *, run_id: str | None = None
    ) -> TestRun:
        """Validate the payload, start a run and drive it until it must wait."""
        stored = self.workflow.validate_payload(payload, trigger)
        trig = self.workflow.trigger(trigger)
        try:
            rid = str(uuid.UUID(run_id)) if run_id is not None else str(uuid.uuid4())
        except (ValueError, TypeError, AttributeError):
            raise ValueError(f"run_id must be a UUID, got {run_id!r}") from None
        run = TestRun(self, rid, trig.name, stored)
        self.runs.append(run)
        self._by_id[rid] = run
        try:
            create_run(
                self._mesh.runner.engine,
                NewRun(self.workflow.name, trig.name, stored, run_id=rid),
            )
        except BaseException:
            with self._mesh.store.transaction() as tx:
                if tx.get_run(rid) is None:  # nothing was started
                    self.runs.remove(run)
                    self._by_id.pop(rid, None)
            raise
        return self._checked(run)

    def approve(
        self,
        run: TestRun,
        *,
        actor: str,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> TestRun:
        self._mesh.approve_run(run.id, actor=actor, comment=comment, metadata=metadata)
        return self._checked(run)

    def reject(
        self,
        run: TestRun,
        *,
        actor: str,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> TestRun:
        self._mesh.reject_run(run.id, actor=actor, comment=comment, metadata=metadata)
        return self._checked(run)

    def unblock(
        self,
        run: TestRun,
        data: Any = None,
        *,
        actor: str | None = None,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> TestRun:
        self._mesh.unblock_run(run.id, actor=actor, comment=comment, metadata=metadata, data=data)
        return self._checked(run)

    def send_event(self, run: TestRun, name: str, data: Any = None) -> TestRun:
        self._mesh.send_event(run.id, name, data)
        return self._checked(run)

    def cancel(self, run: TestRun, *, compensate: bool = False) -> TestRun:
        self._mesh.cancel_run(run.id, compensate=compensate)
        return self._checked(run)

    def resume(self, run: TestRun) -> TestRun:
        """Re-activate a suspended run (after the workflow code was fixed)."""
        self._mesh.resume_run(run.id)
        return self._checked(run)

    # ------------------------------------------------------------------ checks

    def _checked(self, run: TestRun) -> TestRun:
        self._raise_unyielded()
        return run

    def _run_for(self, record: RunRecord | str) -> TestRun:
        """The ``TestRun`` of a stored run (made once per id)."""
        run_id = record if isinstance(record, str) else record.id
        found = self._by_id.get(run_id)
        if found is None:
            if isinstance(record, str):
                with self._mesh.store.transaction() as tx:
                    stored = tx.get_run(record)
                if stored is None:
                    raise LookupError(f"run {record} is not stored")
                record = stored
            found = TestRun(self, record.id, record.trigger, record.payload)
            self._by_id[record.id] = found
        return found

    def _all_runs(self) -> list[TestRun]:
        """Every run stored in this tester: those started, their children, continuations."""
        with self._mesh.store.transaction() as tx:
            records = tx.list_runs(limit=1_000_000)
        return [self._run_for(record) for record in reversed(records)]

    def _raise_unyielded(self) -> None:
        """Fail the test on a step call the workflow created and never yielded: the
        runtime only records it (a ``warning`` audit event), a unit test should not pass."""
        for run in self._all_runs():
            found = [
                a
                for a in run._load().audit
                if a.type == "warning" and (a.metadata or {}).get("code") == unyielded.CODE
            ]
            fresh = found[self._warned.get(run.id, 0) :]
            if fresh:
                self._warned[run.id] = len(found)
                raise DefinitionError(
                    f"workflow {run.workflow} (run {run.id}): "
                    + "; ".join(str(a.comment) for a in fresh)
                )

    # ------------------------------------------------------------------ engine hooks

    def _override(self, target: Any, attempt: int) -> Callable[..., Any] | None:
        """The stub to call instead of step (or compensation) ``target``, if any."""
        stub = self._stubs.get(target.name, _REAL) if isinstance(target, StepDefinition) else _REAL
        if isinstance(stub, raises):
            stub.calls += 1
            if stub.times is not None and stub.calls > stub.times:
                return None
            error = _fresh(stub.exc)

            def fail(*_args: Any, **_kwargs: Any) -> Any:
                raise error

            return fail
        if stub is _REAL:
            return None
        if callable(stub):
            return stub  # type: ignore[no-any-return]
        return lambda *_args, **_kwargs: stub

    def _on_activation(self, run: RunRecord, history: History, live: Activation) -> None:
        self._register_children(live)
        if self.replay_each_command:
            self._verify_replay(run, history, live)

    def _register_children(self, act: Activation) -> None:
        """Child workflows run in this tester: register each the first time a run asks
        for it (a stub's stand-in when ``children=`` names it)."""
        workflows = self._mesh.workflows
        for request in act.children:
            command = request.command
            name = command.name
            if name in workflows:
                continue
            definition = command.definition
            if name in self._child_stubs:
                workflows[name] = _stand_in(name, definition, self._child_stubs[name])
            elif definition is not None:
                workflows[name] = definition

    def _verify_replay(self, run: RunRecord, history: History, live: Activation) -> None:
        """Replay a copy of the history with a fresh interpreter: it must agree."""
        if live.outcome == "suspended":
            return
        fresh = run_interpreter(run, self._mesh.workflows.get(run.workflow, self.workflow))
        again = fresh.advance(history.copy(), now=self._now)
        fresh.close()
        _raise_nondeterminism(again, run.id)
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
                seq=len(history),
                expected=first_new,
                recorded=live.outcome,
            )


_REAL = object()


def _stand_in(name: str, definition: WorkflowDefinition[Any] | None, stub: Any) -> Any:
    """A workflow that returns what a ``children=`` stub says, under the child's name and
    triggers (so its payload is validated as the real child's would be)."""

    def stub_body(payload: Any = None) -> Any:
        if isinstance(stub, raises):
            raise _fresh(stub.exc)
        value = stub(payload) if callable(stub) else stub
        return value
        yield  # pragma: no cover - a generator function, as workflows are

    triggers = definition.triggers if definition is not None else ()
    return WorkflowDefinition(stub_body, name=name, triggers=triggers, on_error="fail")


def _fresh(exc: BaseException | type[BaseException]) -> BaseException:
    # A stub instance is raised again on every attempt: drop the previous traceback so
    # recorded errors show one raise, not all of them.
    return exc() if isinstance(exc, type) else exc.with_traceback(None)


def _raise_nondeterminism(act: Activation, run_id: str | None) -> None:
    if act.outcome == "suspended" and act.reason == "nondeterminism":
        found = act.error.details if act.error is not None else None
        details: dict[str, Any] = found if isinstance(found, dict) else {}
        raise NondeterminismError(
            run_id=run_id,
            seq=int(details.get("seq", -1)),
            expected=str(details.get("expected")),
            recorded=str(details.get("recorded")),
        )


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
    _raise_nondeterminism(act, recorded.run_id)
    if act.outcome == "suspended":
        raise NondeterminismError(
            f"replay of run {recorded.run_id} stopped on a workflow error: "
            f"{act.error.message if act.error is not None else None}",
            run_id=recorded.run_id,
            seq=length,
            expected="the workflow to replay",
            recorded=str(act.error.type if act.error is not None else None),
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
