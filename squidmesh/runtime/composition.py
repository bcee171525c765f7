"""Composition: child runs, continue-as-new and cancelling a run with its children.

A child (``sm.child``, ``sm.start_child``) is a history entry of its parent whose outcome
is the child run's. The pieces, each inside one state change (``Engine.change``):

- **Starting.** The activation that records the entry (or releases it from a
  ``join(limit=...)``) lists it in ``Activation.children``; ``start_children`` validates
  the payload against the child's trigger, inserts the child run (id derived from
  ``(parent run, seq)``, so a second creation could only collide, never duplicate) and
  its first activation in the parent's transaction, and records the id in the entry's
  ``meta["run_id"]``. A payload that does not fit resolves the entry as failed at once
  (``sm.ChildFailed`` with ``child_status="not_started"``); ``sm.start_child`` resolves
  with the new run's id.
- **Ending.** When an attached child ends (completed, failed, cancelled; not when it
  continues as new: its successor inherits the parent link), ``on_end`` adds an
  ``activate`` job for the parent to the child's ending transaction, naming the child.
  The parent's own activation then ``settle``s the entry from the child's committed row
  under the parent's lock. The child's transaction never locks its parent: locks are
  always taken parent before child (cancellation goes down the tree), so the two
  directions cannot deadlock, and the notice cannot be lost (it commits with the end).
- **Cancelling.** ``request_cancel`` is ``cancel_run``'s body: it first cancels the
  run's attached children (with their compensations), and the run stays ``cancelling``
  until they have ended, so the children's compensations run before the parent's own.
  Children the parent stopped waiting for (losers of ``sm.first``, branches of a failed
  ``sm.join``) are cancelled the same way (``cancel_abandoned``). Detached children are
  never cancelled by their parent.
- **Continue-as-new.** ``continue_as_new`` inserts the next run (same workflow, trigger,
  schedule and parent link; an empty history) in the transaction that completes this one.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from squidmesh.core.activation import Activation, ChildStart
from squidmesh.core.contracts import json_text
from squidmesh.core.definition import WorkflowDefinition
from squidmesh.core.failures import child_error, error_info
from squidmesh.core.flow import holds_slot, run_flow_data
from squidmesh.core.history import Entry, History
from squidmesh.core.lifecycle import RunEvent, transition
from squidmesh.core.records import CancelRequest, ErrorRecord, Job
from squidmesh.errors import (
    PayloadError,
    RunCancelled,
    SquidmeshError,
    UnknownTriggerError,
    UnknownWorkflowError,
    UnstorableValueError,
)
from squidmesh.runtime.explain import replay_blockers
from squidmesh.runtime.replaying import run_history
from squidmesh.storage.base import RunRecord, Transaction
from squidmesh.types import EntryStatus, RunStatus

if TYPE_CHECKING:
    from squidmesh.runtime.engine import Change, Engine, Live

__all__ = [
    "CHILD_KINDS",
    "cancel_abandoned",
    "cancel_children",
    "child_run_id",
    "children_replay_blockers",
    "continuation_run_id",
    "continue_as_new",
    "final_run",
    "on_end",
    "request_cancel",
    "settle",
    "start_children",
]

log = logging.getLogger("squidmesh")

#: history entry kinds that start a child run
CHILD_KINDS = frozenset({"child", "start_child"})
_TERMINAL = frozenset(s.value for s in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED))
_RUNNING = EntryStatus.RUNNING.value
_DONE = EntryStatus.COMPLETED.value
_FAILED = EntryStatus.FAILED.value
_CANCELLED = EntryStatus.CANCELLED.value
#: the namespace of the run ids squidmesh derives (children, continuations)
_NAMESPACE = uuid.UUID("5c1d0f4e-8a51-4d0b-9a8e-7f3f1f2b6c20")
#: how long a chain of continue-as-new runs ``final_run`` follows
_CHAIN_LIMIT = 10_000


def child_run_id(parent_run_id: str, seq: int) -> str:
    """The id of the child run started by the entry at ``seq`` of ``parent_run_id``:
    derived, so creating it twice is a key violation, never a second child."""
    return str(uuid.uuid5(_NAMESPACE, f"child:{parent_run_id}:{seq}"))


def continuation_run_id(run_id: str) -> str:
    """The id of the run that continues ``run_id`` (``sm.continue_as_new``)."""
    return str(uuid.uuid5(_NAMESPACE, f"continue:{run_id}"))


# ---------------------------------------------------------------------- starting


def start_children(engine: Engine, ch: Change, run: RunRecord, live: Live, act: Activation) -> bool:
    """Create the child runs ``act`` asks for, in this transaction. True when some entry
    was resolved at once (a detached child's id, a payload that does not fit, a keyed
    run that already ended): the workflow can then go on, so the caller advances again.
    The change must hold the parent's lock (see ``Engine.apply``)."""
    resolved = False
    for request in act.children:
        entry = live.history[request.seq]
        if entry.kind not in CHILD_KINDS or entry.meta.get("run_id") or entry.resolved:
            continue
        resolved = _start(engine, ch, run, live.history, entry, request) or resolved
    return resolved


def _start(
    engine: Engine,
    ch: Change,
    run: RunRecord,
    history: History,
    entry: Entry,
    request: ChildStart,
) -> bool:
    spec = entry.input or {}
    detached = entry.kind == "start_child"
    definition: WorkflowDefinition[Any] | None = engine.workflows.get(entry.name)
    if definition is None:
        definition = getattr(request.command, "definition", None)
    if definition is None:
        missing = UnknownWorkflowError(
            f"run {run.id} (seq {entry.seq}) asked for a child run of workflow {entry.name!r}, "
            "which this Mesh does not register: pass the @sm.workflow object to "
            "sm.child/sm.start_child, or register the workflow with the Mesh",
            workflow=entry.name,
            registered=engine.workflows,
            run_id=run.id,
        )
        return _not_started(ch, run, history, entry, missing)
    try:
        trigger = definition.trigger(spec.get("trigger"))
        payload = definition.validate_payload(spec.get("payload"), trigger.name)
        json_text(payload, what="the payload", max_bytes=engine.max_value_bytes)
    except (PayloadError, UnknownTriggerError, UnstorableValueError) as exc:
        return _not_started(ch, run, history, entry, exc)
    key = spec.get("key")
    if key is not None:
        existing = ch.tx.find_run_by_key(definition.name, key)
        if existing is not None:
            return _reuse(ch, run, history, entry, existing, detached)
    rid = child_run_id(run.id, entry.seq)
    record = RunRecord(
        id=rid,
        workflow=definition.name,
        trigger=trigger.name,
        status=RunStatus.PENDING.value,
        payload=payload,
        created_at=ch.now,
        updated_at=ch.now,
        idempotency_key=key,
        parent_run_id=run.id,
        parent_seq=None if detached else entry.seq,
    )
    ch.batch.runs_insert.append(record)
    ch.audit(
        rid,
        "run_started",
        metadata={"trigger": trigger.name, "parent_run_id": run.id, "parent_seq": entry.seq},
    )
    # A child of a queued workflow is admitted by its queue like any start (no flow key:
    # sm.child's key= is an idempotency key).
    admission = run_flow_data(definition.queue, None, None)
    ch.jobs.append(Job("activate", rid, run_at=ch.now, data=admission))
    entry.meta["run_id"] = rid
    entry.started_at = ch.now.isoformat()  # the child run exists from now on
    ch.touched(run.id, entry)
    if definition.name not in engine.workflows:
        log.warning(
            "run %s started child run %s of workflow %r, which this process's Mesh does not "
            "register: a worker whose Mesh registers it will run it",
            run.id,
            rid,
            definition.name,
        )
    if detached:
        history.resolve(entry.seq, _DONE, result=rid, at=ch.now.isoformat())
        return True
    return False


def _not_started(
    ch: Change, run: RunRecord, history: History, entry: Entry, exc: BaseException
) -> bool:
    """The child run could not be created: the entry fails (``sm.ChildFailed``)."""
    error = child_error(
        entry,
        child_run_id=None,
        status="not_started",
        error=error_info(exc, retryable=False, with_traceback=False),
    )
    history.resolve(entry.seq, _FAILED, error=error, at=ch.now.isoformat())
    ch.touched(run.id, entry)
    return True


def _reuse(
    ch: Change,
    run: RunRecord,
    history: History,
    entry: Entry,
    existing: RunRecord,
    detached: bool,
) -> bool:
    """A run of the child's workflow already has the child's key (``start_run``'s
    idempotency): a detached child is that run; an attached child takes its outcome
    when it has ended, and fails when it is still running elsewhere (nobody would tell
    this parent when it ends)."""
    entry.meta["run_id"] = existing.id
    ch.touched(run.id, entry)
    if detached:
        history.resolve(entry.seq, _DONE, result=existing.id, at=ch.now.isoformat())
        return True
    final = final_run(ch.tx, existing.id)
    if final is not None:
        _resolve_from(history, entry, final, ch.now.isoformat())
        return True
    conflict = SquidmeshError(
        f"a run of workflow {existing.workflow!r} with key {existing.idempotency_key!r} is "
        f"already running (run {existing.id}, started "
        + (f"by run {existing.parent_run_id}" if existing.parent_run_id else "elsewhere")
        + "): a child with a key reuses a run that has ended, it does not wait for one "
        "started by someone else; wait for that run, or use another key"
    )
    error = child_error(
        entry,
        child_run_id=existing.id,
        status="not_started",
        error=error_info(conflict, retryable=False, with_traceback=False),
    )
    history.resolve(entry.seq, _FAILED, error=error, at=ch.now.isoformat())
    return True


# ---------------------------------------------------------------------- ending


def on_end(ch: Change, run: RunRecord) -> None:
    """``run`` just ended in this change: an attached child tells its parent (an
    activation job naming it, committed with the ending)."""
    if run.parent_run_id is None or run.parent_seq is None:
        return
    if run.reason == "continued_as_new":
        return  # its successor inherits the link and tells the parent when it ends
    ch.jobs.append(
        Job(
            "activate",
            run.parent_run_id,
            run_at=ch.now,
            data={"child_run_id": run.id, "seq": run.parent_seq},
        )
    )


def final_run(tx: Transaction, run_id: str) -> RunRecord | None:
    """The ended run at the end of ``run_id``'s continue-as-new chain (``run_id`` itself
    when it did not continue), or None while the chain is still running."""
    current = run_id
    for _ in range(_CHAIN_LIMIT):
        record = tx.get_run(current)
        if record is None or record.status not in _TERMINAL:
            return None
        if record.reason == "continued_as_new" and record.continued_as_run_id:
            current = record.continued_as_run_id
            continue
        return record
    return None


def _resolve_from(history: History, entry: Entry, child: RunRecord, at: str) -> None:
    if child.status == RunStatus.COMPLETED.value:
        history.resolve(entry.seq, _DONE, result=child.result, at=at)
        return
    error = ErrorRecord.from_json(child.error) if child.error else None
    if child.status == RunStatus.CANCELLED.value and error is None:
        request = CancelRequest.from_json(child.cancel_request) or CancelRequest()
        cancelled = RunCancelled(
            f"run {child.id} was cancelled" + (f": {request.reason}" if request.reason else "")
        )
        error = error_info(cancelled, retryable=False, with_traceback=False)
    history.resolve(
        entry.seq,
        _FAILED,
        error=child_error(entry, child_run_id=child.id, status=child.status, error=error),
        at=at,
    )


def settle(ch: Change, run: RunRecord, history: History, job: Job | None = None) -> list[Entry]:
    """Resolve the parent's ``sm.child`` entries whose child runs have ended, from their
    committed rows (read without a lock: an ended run never changes). A job naming the
    child (``on_end``) settles that one; any other activation looks at every child entry
    still waiting (after a restart of the parent, say). Returns the entries resolved."""
    data = (job.data or {}) if job is not None else {}
    if isinstance(data.get("child_run_id"), str) and isinstance(data.get("seq"), int):
        candidates = [(int(data["seq"]), str(data["child_run_id"]))]
    else:
        candidates = [
            (e.seq, str(e.meta["run_id"]))
            for e in history.entries
            if e.kind == "child" and e.status == _RUNNING and e.meta.get("run_id")
        ]
    settled = []
    for seq, child_id in candidates:
        if not 0 <= seq < len(history):
            continue
        entry = history[seq]
        if entry.kind != "child" or entry.status != _RUNNING:
            continue  # settled already, or the parent stopped waiting for it
        child = final_run(ch.tx, child_id)
        if child is None:
            continue
        if child.id != entry.meta.get("run_id") and (
            child.parent_run_id != run.id or child.parent_seq != seq
        ):
            continue  # a stale or foreign notice: not this entry's child
        _resolve_from(history, entry, child, ch.now.isoformat())
        ch.touched(run.id, entry)
        settled.append(entry)
    return settled


# ---------------------------------------------------------------------- cancelling


def request_cancel(
    engine: Engine,
    ch: Change,
    run: RunRecord,
    *,
    actor: str | None,
    reason: str | None,
    compensate: bool,
) -> None:
    """Cancel ``run`` (locked by ``ch``; not terminal, not already cancelling): its
    attached children first, then, once nothing is in flight, the run itself."""
    ch.audit(
        run.id,
        "cancel_requested",
        actor=actor,
        comment=reason,
        metadata={"compensate": compensate},
    )
    run.cancel_request = CancelRequest(actor, reason, compensate).to_json()
    live = engine.live(ch, run) if run.status != RunStatus.SUSPENDED.value else None
    history = live.history if live is not None else run_history(run, ch.tx.load_entries(run.id))
    waiting = cancel_children(engine, ch, run, history, actor=actor)
    if waiting or (live is not None and engine.in_flight(live)):
        run.status = transition(run.status, RunEvent.CANCEL_REQUESTED).value
        return
    if run.status == RunStatus.SUSPENDED.value:
        engine.evict(run.id)
        live = None
    engine.finish_cancel(ch, run, live)


def cancel_children(
    engine: Engine, ch: Change, run: RunRecord, history: History, *, actor: str | None
) -> bool:
    """Cancel (with compensation) the attached children ``run`` waits for. Entries of
    children that ended at once are settled here; True while some child is still
    ending (the run must wait for it)."""
    waiting = False
    for entry in history.entries:
        if entry.kind != "child" or entry.status != _RUNNING or not entry.meta.get("run_id"):
            continue
        if _cancel_child(
            engine, ch, run, entry, actor=actor, reason=f"its parent run {run.id} was cancelled"
        ):
            _resolve_ended(ch, run, history, entry)
        if entry.status == _RUNNING:
            waiting = True
    return waiting


def cancel_abandoned(engine: Engine, ch: Change, run: RunRecord, act: Activation) -> None:
    """Cancel the child runs of entries this activation cancelled: ``sm.first`` losers
    and the pending branches of a failed ``sm.join`` no longer matter to the parent."""
    for entry in abandoned(act):
        _cancel_child(
            engine,
            ch,
            run,
            entry,
            actor=None,
            reason=f"its parent run {run.id} no longer waits for it (seq {entry.seq})",
        )


def abandoned(act: Activation) -> list[Entry]:
    """The child entries ``act`` cancelled while their runs may still be active."""
    return [
        e
        for e in act.updates
        if e.kind == "child" and e.status == _CANCELLED and e.meta.get("run_id")
    ]


def _cancel_child(
    engine: Engine,
    ch: Change,
    parent: RunRecord,
    entry: Entry,
    *,
    actor: str | None,
    reason: str,
) -> bool:
    """Cancel the run behind ``entry`` (the last of its continue-as-new chain) unless it
    has ended; True when it has ended (now or before)."""
    current = str(entry.meta["run_id"])
    for _ in range(_CHAIN_LIMIT):
        child = engine.lock(ch, current)  # parent before child: the one lock order
        if child is None:
            return True
        if child.status in _TERMINAL:
            if child.reason == "continued_as_new" and child.continued_as_run_id:
                current = child.continued_as_run_id
                continue
            return True
        if child.status != RunStatus.CANCELLING.value:
            log.info("run %s: cancelling child run %s (%s)", parent.id, child.id, reason)
            request_cancel(engine, ch, child, actor=actor, reason=reason, compensate=True)
        return child.status in _TERMINAL
    return True


def _resolve_ended(ch: Change, run: RunRecord, history: History, entry: Entry) -> None:
    child = final_run_in_change(ch, str(entry.meta["run_id"]))
    if child is not None and entry.status == _RUNNING:
        _resolve_from(history, entry, child, ch.now.isoformat())
        ch.touched(run.id, entry)


def final_run_in_change(ch: Change, run_id: str) -> RunRecord | None:
    """``final_run`` seeing this change's own (unwritten) updates of the runs it holds."""
    current = run_id
    for _ in range(_CHAIN_LIMIT):
        record = ch.runs.get(current) or ch.tx.get_run(current)
        if record is None or record.status not in _TERMINAL:
            return None
        if record.reason == "continued_as_new" and record.continued_as_run_id:
            current = record.continued_as_run_id
            continue
        return record
    return None


# ---------------------------------------------------------------------- replaying


def children_replay_blockers(tx: Transaction, entries: list[Entry]) -> list[str]:
    """Irreversible (or non-compensatable) steps completed by the child runs a replay of
    the run with ``entries`` would start again, as ``"<workflow>:<step>"``: its children
    and theirs, with the runs they continued as. Children started with a ``key`` are not
    started again (the key finds them), so they do not count."""

    def started(found: list[Entry]) -> list[str]:
        return [
            str(e.meta["run_id"])
            for e in found
            if e.kind in CHILD_KINDS and e.meta.get("run_id") and not (e.input or {}).get("key")
        ]

    blockers: list[str] = []
    todo, seen = started(entries), set[str]()
    while todo and len(seen) < _CHAIN_LIMIT:
        run_id = todo.pop()
        if run_id in seen:
            continue
        seen.add(run_id)
        record = tx.get_run(run_id)
        if record is None:
            continue
        found = tx.load_entries(run_id)
        blockers.extend(f"{record.workflow}:{name}" for name in replay_blockers(found))
        todo.extend(started(found))
        if record.continued_as_run_id:
            todo.append(record.continued_as_run_id)
    return sorted(set(blockers))


# ---------------------------------------------------------------------- continuing


def continue_as_new(ch: Change, run: RunRecord, act: Activation) -> None:
    """``run`` completed with ``sm.continue_as_new``: insert the next run (same workflow,
    trigger, schedule and parent link; empty history) and link the two, in this change."""
    assert act.continued is not None
    rid = continuation_run_id(run.id)
    record = RunRecord(
        id=rid,
        workflow=run.workflow,
        trigger=run.trigger,
        status=RunStatus.PENDING.value,
        payload=dict(act.continued.get("payload") or {}),
        created_at=ch.now,
        updated_at=ch.now,
        schedule=run.schedule,
        parent_run_id=run.parent_run_id,
        parent_seq=run.parent_seq,
        continued_from_run_id=run.id,
    )
    ch.batch.runs_insert.append(record)
    ch.audit(rid, "run_started", metadata={"trigger": run.trigger, "continued_from_run_id": run.id})
    # The next run waits for the queue again, under the same key and priority: the slot
    # this run held (its admission job, a holder row or still the claimed job when the
    # run continues in the activation that admitted it) is freed by this very change.
    held = [q.job.data for q in ch.tx.load_jobs(run.id) if holds_slot(q.job.data)]
    admission = dict(held[0]) if held and held[0] is not None else None
    ch.jobs.append(Job("activate", rid, run_at=ch.now, data=admission))
    run.reason = "continued_as_new"
    run.continued_as_run_id = rid
