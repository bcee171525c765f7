"""Operator actions on runs: decisions, unblocking, events, cancel, resume, replay,
fork and retention. ``Mesh`` builds one ``OperatorActions`` and delegates to it; each
action is one transaction through the engine.

Everything it uses is given to its constructor: the engine it changes runs through, the
``RunClient`` it reads, starts and re-reads runs with, the schema gate every call
passes first, the telemetry its API spans go to, and the size limit on stored values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from squidmesh.client import RunClient, parse_run_id
from squidmesh.core import state
from squidmesh.core.arguments import count
from squidmesh.core.contracts import stored
from squidmesh.core.definition import WorkflowDefinition, registered_workflow
from squidmesh.core.lifecycle import RunEvent, transition
from squidmesh.errors import (
    InvalidArgumentError,
    InvalidTransitionError,
    ReviewError,
    RunNotFoundError,
    UnknownWorkflowError,
    UnsafeReplayError,
    shown,
)
from squidmesh.runtime import composition
from squidmesh.runtime.engine import Engine
from squidmesh.runtime.explain import replay_blockers
from squidmesh.runtime.schema_gate import SchemaGate
from squidmesh.runtime.starting import NewRun
from squidmesh.runtime.telemetry import Telemetry, api_call
from squidmesh.runtime.views import Run, build_run
from squidmesh.storage.base import RunRecord, Store
from squidmesh.types import TERMINAL_STATUSES, RunStatus

__all__ = ["OperatorActions"]


class OperatorActions:
    """Everything a person (or a tool) does to a run (each method is the body of the
    ``Mesh`` method of the same name, which documents it)."""

    def __init__(self, runs: RunClient) -> None:
        #: reads runs, starts replays and forks, re-reads a run an inline executor moved;
        #: its engine, schema gate, telemetry and value limit are the operator's too
        self.runs = runs
        self.engine: Engine = runs.engine
        self.store: Store = runs.store
        #: the Mesh's registry (the same dict: ``Mesh.register`` adds to it)
        self.workflows: Mapping[str, WorkflowDefinition] = runs.workflows
        self.clock: Callable[[], datetime] = runs.clock
        #: passed before the first call that touches the database
        self.gate: SchemaGate = runs.gate
        #: spans of API calls (``api_call``); None when ``Mesh(telemetry=False)``
        self.telemetry: Telemetry | None = runs.telemetry
        #: the largest JSON (bytes) of metadata, data and event data
        self.max_value_bytes: int | None = runs.max_value_bytes

    def _value(self, value: Any, what: str) -> Any:
        """``value`` as it will be stored, refused (nothing changes) when it cannot be."""
        return stored(value, what=what, max_bytes=self.max_value_bytes)

    def _text(self, value: Any, what: str) -> str | None:
        """An optional text argument (actor, comment, reason), checked like any value."""
        if value is None:
            return None
        if not isinstance(value, str):
            raise InvalidArgumentError(f"{what} must be a string, got {type(value).__name__}")
        self._value(value, what)
        return value

    # ------------------------------------------------------------------ operator actions

    def _locked(self, ch: Any, run_id: Any) -> RunRecord:
        rid = parse_run_id(run_id)
        run = self.engine.lock(ch, rid)
        if run is None:
            raise RunNotFoundError(f"run {rid} not found")
        return run

    def _waiting_entry(self, ch: Any, run: RunRecord, kind: str, action: str) -> Any:
        live = self.engine.live(ch, run)
        if live is None:
            raise UnknownWorkflowError(
                f"run {run.id} belongs to workflow {run.workflow!r}, which this Mesh does not "
                "have: register it before acting on the run",
                workflow=run.workflow,
                registered=self.workflows,
                run_id=run.id,
            )
        for seq in run.waiting_on:
            entry = live.history[seq]
            if entry.kind == kind and entry.status == "running":
                return live, entry
        where = ", ".join(
            f"{live.history[s].kind} {live.history[s].name!r}" for s in run.waiting_on
        )
        raise InvalidTransitionError(
            f"cannot {action} run {run.id}: it is {run.status}"
            + (f" and waiting on {where}" if where else "")
            + f", not at {'an approval' if kind == 'approval' else 'a ' + kind}",
            status=run.status,
            action=action,
        )

    @api_call
    def approve_run(
        self,
        run_id: Any,
        *,
        actor: str,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Run:
        return self._decide(run_id, True, actor, comment, metadata)

    @api_call
    def reject_run(
        self,
        run_id: Any,
        *,
        actor: str,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Run:
        return self._decide(run_id, False, actor, comment, metadata)

    def _decide(
        self,
        run_id: Any,
        approved: bool,
        actor: Any,
        comment: str | None,
        metadata: dict[str, Any] | None,
    ) -> Run:
        action = "approve_run" if approved else "reject_run"
        if not isinstance(actor, str) or not actor.strip():
            raise ReviewError(f"{action} needs actor= as a non-empty string (who decided)")
        if metadata is not None and not isinstance(metadata, dict):
            raise ReviewError(f"{action}: metadata must be a dict")
        self._text(actor, f"{action}: the actor")
        self._text(comment, f"{action}: the comment")
        metadata = self._value(metadata, f"{action}: the metadata")
        self.gate.ready()
        with self.engine.change() as ch:
            run = self._locked(ch, run_id)
            live, entry = self._waiting_entry(ch, run, "approval", action)
            state.deliver_decision(
                live.history,
                entry.seq,
                approved=approved,
                actor=actor,
                comment=comment,
                metadata=metadata,
                now=ch.now,
            )
            ch.touched(run.id, entry)
            ch.audit(
                run.id,
                "approved" if approved else "rejected",
                step=entry.name,
                actor=actor,
                comment=comment,
                metadata=metadata,
            )
            run.status = transition(run.status, RunEvent.RESUMED).value
            self.engine.advance(ch, run, live)
        return self.runs.fresh(build_run(run))

    @api_call
    def unblock_run(
        self,
        run_id: Any,
        *,
        actor: str | None = None,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
        data: Any = None,
    ) -> Run:
        self._text(actor, "unblock_run: the actor")
        self._text(comment, "unblock_run: the comment")
        metadata = self._value(metadata, "unblock_run: the metadata")
        data = self._value(data, "unblock_run: the data")
        self.gate.ready()
        with self.engine.change() as ch:
            run = self._locked(ch, run_id)
            live, entry = self._waiting_entry(ch, run, "pause", "unblock_run")
            state.deliver_unblock(live.history, entry.seq, data, ch.now)
            ch.touched(run.id, entry)
            ch.audit(
                run.id,
                "unblocked",
                step=entry.name,
                actor=actor,
                comment=comment,
                metadata=metadata,
            )
            run.status = transition(run.status, RunEvent.RESUMED).value
            self.engine.advance(ch, run, live)
        return self.runs.fresh(build_run(run))

    @api_call
    def send_event(
        self, run_id: Any, name: str, data: Any = None, *, actor: str | None = None
    ) -> Run:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("send_event needs a non-empty event name")
        self._text(name, "send_event: the event name")
        data = self._value(data, f"send_event: the data of event {shown(name)}")
        self.gate.ready()
        with self.engine.change() as ch:
            run = self._locked(ch, run_id)
            if run.status in TERMINAL_STATUSES:
                raise InvalidTransitionError(
                    f"cannot send event {shown(name)} to run {run.id}: it is {run.status}",
                    status=run.status,
                    action="send_event",
                )
            live = self.engine.live(ch, run)
            entry = None
            if live is not None and run.status != RunStatus.SUSPENDED:
                entry = state.deliver_event(live.history, name, data, ch.now)
            if entry is None:
                ch.tx.add_event(run.id, name, data, ch.now)
                ch.audit(
                    run.id, "event_received", step=name, actor=actor, metadata={"buffered": True}
                )
                ch.runs.pop(run.id)  # nothing about the run itself changed
                ch.lives.pop(run.id, None)
            else:
                assert live is not None
                ch.touched(run.id, entry)
                ch.audit(run.id, "event_received", step=name, actor=actor)
                self.engine.advance(ch, run, live)
        return self.runs.fresh(build_run(run))

    @api_call
    def cancel_run(
        self,
        run_id: Any,
        *,
        actor: str | None = None,
        reason: str | None = None,
        compensate: bool = False,
    ) -> Run:
        self._text(actor, "cancel_run: the actor")
        self._text(reason, "cancel_run: the reason")
        self.gate.ready()
        with self.engine.change() as ch:
            run = self._locked(ch, run_id)
            if run.status in TERMINAL_STATUSES or run.status == RunStatus.CANCELLING:
                raise InvalidTransitionError(
                    f"cannot cancel run {run.id}: it is already {run.status}",
                    status=run.status,
                    action="cancel_run",
                )
            # Attached child runs are cancelled first (with their compensations); the run
            # stays cancelling until they have ended (see runtime/composition.py).
            composition.request_cancel(
                self.engine, ch, run, actor=actor, reason=reason, compensate=compensate
            )
        return self.runs.fresh(build_run(run))

    @api_call
    def resume_run(self, run_id: Any, *, actor: str | None = None) -> Run:
        self.gate.ready()
        with self.engine.change() as ch:
            run = self._locked(ch, run_id)
            if run.status != RunStatus.SUSPENDED:
                raise InvalidTransitionError(
                    f"cannot resume run {run.id}: it is {run.status}, not suspended",
                    status=run.status,
                    action="resume_run",
                )
            self.engine.evict(run.id)
            ch.audit(run.id, "resumed", actor=actor)
            run.status = transition(run.status, RunEvent.RESUMED).value
            run.error = None
            run.reason = None
            live = self.engine.live(ch, run)
            if live is None:
                raise UnknownWorkflowError(
                    f"run {run.id} belongs to workflow {run.workflow!r}, which this Mesh does "
                    "not have",
                    workflow=run.workflow,
                    registered=self.workflows,
                    run_id=run.id,
                )
            # Children that ended while it was suspended told it then (and were ignored).
            composition.settle(ch, run, live.history)
            self.engine.advance(ch, run, live)
        return self.runs.fresh(build_run(run))

    @api_call
    def replay_run(
        self, run_id: Any, *, allow_irreversible: bool = False, actor: str | None = None
    ) -> Run:
        with self.runs.reading(run_id) as (tx, source):
            entries = tx.load_entries(source.id)
            # The replay's children are new runs: their irreversible steps would repeat.
            children = composition.children_replay_blockers(tx, entries)
        rid = source.id
        registered_workflow(self.workflows, source.workflow)
        blocked = replay_blockers(entries) + children
        if blocked and allow_irreversible is not True:
            raise UnsafeReplayError(
                f"run {rid} completed irreversible or non-compensatable steps "
                f"({', '.join(blocked)}): review their effects, then call "
                "replay_run(..., allow_irreversible=True)",
                steps=blocked,
            )
        return self.runs.create(
            NewRun(
                source.workflow,
                source.trigger,
                source.payload,
                schedule=source.schedule,
                replayed_from=source.id,
                source_audit=("replayed", source.id),
                actor=actor,
            )
        )

    @api_call
    def fork_run(self, run_id: Any, *, at_seq: int, actor: str | None = None) -> Run:
        with self.runs.reading(run_id) as (tx, source):
            entries = tx.load_entries(source.id)
        registered_workflow(self.workflows, source.workflow)
        if not isinstance(at_seq, int) or not 0 <= at_seq <= len(entries):
            raise InvalidArgumentError(
                f"fork_run at_seq must be between 0 and {len(entries)}, got {shown(at_seq)}"
            )
        if at_seq < len(entries) and entries[at_seq].parent is not None:
            raise InvalidArgumentError(
                f"fork_run at_seq={at_seq} falls inside the join/first at seq "
                f"{entries[at_seq].parent}: fork at that seq instead"
            )
        prefix = []
        for entry in entries[:at_seq]:
            if not entry.resolved and entry.kind not in ("join", "first"):
                raise InvalidArgumentError(
                    f"fork_run at_seq={at_seq}: seq {entry.seq} ({entry.label()}) has no recorded "
                    f"result yet; fork at or before seq {entry.seq}"
                )
            copy = entry.copy()
            copy.set_compensation(None)
            state.end_attempt(copy)  # its attempts are the source run's, not the fork's
            prefix.append(copy)
        return self.runs.create(
            NewRun(
                source.workflow,
                source.trigger,
                source.payload,
                schedule=source.schedule,
                forked_from=source.id,
                prefix=prefix,
                source_audit=("forked", source.id),
                actor=actor,
            )
        )

    # ------------------------------------------------------------------ retention

    def prune(
        self,
        older_than: timedelta | datetime,
        statuses: Iterable[str] = ("completed", "cancelled", "failed"),
        *,
        batch_size: int = 500,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        if isinstance(older_than, datetime):
            if older_than.tzinfo is None:
                raise InvalidArgumentError("prune(older_than=...) needs a timezone-aware datetime")
            cutoff = older_than
        elif isinstance(older_than, timedelta):
            if older_than < timedelta(0):
                raise InvalidArgumentError(
                    f"prune(older_than=...) must not be negative, got {older_than}"
                )
            cutoff = self.clock() - older_than
        else:
            raise InvalidArgumentError(
                f"prune(older_than=...) takes a timedelta or a datetime, got {shown(older_than)}"
            )
        if isinstance(statuses, str):
            statuses = [statuses]
        if not isinstance(statuses, Iterable):
            raise InvalidArgumentError(
                f"prune(statuses=...) takes run statuses, got {shown(statuses)}"
            )
        chosen: list[str] = []
        refused: list[str] = []
        for status in statuses:
            value = status.value if isinstance(status, RunStatus) else status
            if isinstance(value, str) and value in TERMINAL_STATUSES:
                chosen.append(value)
            else:
                refused.append(shown(value))
        if refused:
            raise InvalidArgumentError(
                f"prune only deletes finished runs; not terminal: {', '.join(refused)} "
                f"(allowed: {', '.join(sorted(s.value for s in TERMINAL_STATUSES))})"
            )
        if not chosen:
            raise InvalidArgumentError("prune needs at least one status")
        count(batch_size, what="prune batch_size")
        self.gate.ready()
        total = 0
        while True:
            with self.store.transaction() as tx:
                ids = tx.find_prunable(list(dict.fromkeys(chosen)), cutoff, batch_size)
                deleted = tx.delete_runs(ids) if ids else 0
            if not ids:
                break
            for rid in ids:
                self.engine.discard(rid)
            total += deleted
            if progress is not None:
                progress(total)
            if len(ids) < batch_size:
                break
        return total
