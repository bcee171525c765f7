"""A tour of the operator API: the Ring Errand driven through ``sm.Mesh`` on SQLite.

Everything runs in this process: a throwaway SQLite file in a temporary directory,
``sm.InlineExecutor()`` (jobs run right after each commit) and a clock the script moves
by hand, so timers fire exactly when the tour says so. docs/operations.md shows (and
explains) this script's output; tests/test_operations_tour.py checks the facts that
``main()`` returns.

    python -m examples.operations_tour
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import squidmesh as sm
from examples.ring_errand import ring_errand

T0 = datetime(2030, 1, 1, 9, 0, tzinfo=timezone.utc)


class Clock:
    """A clock that only moves when told to (pass it as ``Mesh(clock=...)``)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def short(run_id: Any) -> str:
    """The first block of a run id: enough to tell the tour's runs apart."""
    return str(run_id)[:8]


def show_explanation(title: str, explanation: sm.Explanation) -> None:
    print(f"== explain_run: {title}")
    print(f"status:       {explanation.status.value}")
    print(f"reason:       {explanation.reason}")
    print(f"step:         {explanation.step}")
    print(f"details:      {explanation.details}")
    print(f"next_actions: {', '.join(explanation.next_actions) or '(none)'}")
    step_run = explanation.evidence["step_run"]
    if step_run is not None:
        print(
            f"evidence:     run {explanation.evidence['run']['status']}, "
            f"step_run seq={step_run['seq']} kind={step_run['kind']} "
            f"status={step_run['status']}"
        )
    else:
        print(f"evidence:     run {explanation.evidence['run']['status']}, no current step run")
    print()


def show_runs(title: str, runs: list[sm.Run]) -> None:
    print(f"== list_runs({title})")
    print(f"{'id':<10}{'status':<11}{'created_at':<27}{'result / waiting on'}")
    for run in runs:
        note = run.result if run.result is not None else ", ".join(run.current_steps)
        print(f"{short(run.id):<10}{run.status.value:<11}{run.created_at.isoformat():<27}{note}")
    print()


def to_council(mesh: sm.Mesh, clock: Clock, ring_id: str) -> sm.Run:
    """Start an errand and take it past the sleep and the pause, to the council vote."""
    run = mesh.start_run("ring_errand", {"ring_id": ring_id, "started_on": "2030-01-01"})
    clock.advance(5)
    mesh.drain()  # the 5-second sleep is due: drain() fires the timer
    mesh.unblock_run(run.id, actor="strider")
    return run


def tour(mesh: sm.Mesh, clock: Clock) -> dict[str, Any]:
    facts: dict[str, Any] = {}

    # -- start_run, with an idempotency key ------------------------------------------
    errand = {"ring_id": "one-ring", "started_on": "2030-01-01"}
    run = mesh.start_run(ring_errand, errand, idempotency_key="errand-one-ring")
    again = mesh.start_run(ring_errand, errand, idempotency_key="errand-one-ring")
    print("== start_run")
    print(f"returned status: {run.status.value}")
    print(f"stored payload:  {run.payload}")
    print(f"same key, same run: {again.id == run.id}")
    print(f"now:             {mesh.inspect_run(run.id).status.value}")
    print()
    facts["idempotent"] = again.id == run.id
    facts["payload"] = run.payload

    timer = mesh.explain_run(run.id)
    show_explanation("sleeping", timer)
    facts["timer"] = (timer.reason, timer.details["wake_at"])

    # -- the timer fires, the run pauses at sm.pause ----------------------------------
    clock.advance(5)
    ran = mesh.drain()
    print(f"== drain() ran {ran} job(s)\n")
    pause = mesh.explain_run(run.id)
    show_explanation("at the pause", pause)
    facts["pause"] = (pause.status.value, pause.reason, pause.step, pause.next_actions)

    mesh.unblock_run(
        run.id,
        actor="strider",
        comment="pipeweed restocked",
        metadata={"ticket": "BREE-42"},
    )
    approval = mesh.explain_run(run.id)
    show_explanation("at the approval", approval)
    facts["approval"] = (approval.status.value, approval.reason, approval.next_actions)

    clock.advance(60)
    mesh.approve_run(run.id, actor="elrond", comment="the council agrees", metadata={"vote": "9-0"})
    done = mesh.explain_run(run.id)
    show_explanation("after completion", done)
    facts["completed"] = (done.status.value, done.reason, done.next_actions)
    facts["replay_details"] = done.details["replay"]
    facts["result"] = done.details["result"]

    # -- inspect_run with history ---------------------------------------------------
    full = mesh.inspect_run(run.id, include_history=True)
    assert full.step_runs is not None and full.audit_events is not None
    print("== inspect_run(include_history=True): step_runs")
    print(f"{'seq':<5}{'kind':<10}{'name':<23}{'status':<11}{'attempts'}")
    for step_run in full.step_runs:
        attempts = ",".join(f"{a.number}:{a.status}" for a in step_run.attempts) or "-"
        print(
            f"{step_run.seq:<5}{step_run.kind:<10}{step_run.name:<23}{step_run.status:<11}"
            f"{attempts}"
        )
    print()
    print("== inspect_run(include_history=True): audit_events")
    for event in full.audit_events:
        who = f" actor={event.actor}" if event.actor else ""
        said = f" comment={event.comment!r}" if event.comment else ""
        meta = f" metadata={event.metadata}" if event.metadata else ""
        print(f"{event.at}  {event.type:<12} step={event.step}{who}{said}{meta}")
    print()
    facts["step_runs"] = [(s.seq, s.kind, s.name, s.status) for s in full.step_runs]
    facts["audit"] = [(e.type, e.step, e.actor) for e in full.audit_events]
    facts["approved_metadata"] = next(e.metadata for e in full.audit_events if e.type == "approved")

    # -- two more errands: one rejected, one left waiting for the council ------------
    clock.advance(60)
    home = to_council(mesh, clock, "spare-ring")
    mesh.reject_run(home.id, actor="boromir", comment="use it instead")
    clock.advance(60)
    waiting = to_council(mesh, clock, "third-ring")

    newest = mesh.list_runs(workflow=ring_errand, limit=2)
    show_runs("workflow=ring_errand, limit=2", newest)
    older = mesh.list_runs(workflow=ring_errand, limit=2, before=newest[-1])
    show_runs("workflow=ring_errand, limit=2, before=<last run above>", older)
    paused = mesh.list_runs(status="paused")
    show_runs('status="paused"', paused)
    facts["page1"] = [r.id for r in newest]
    facts["page2"] = [r.id for r in older]
    facts["ids"] = {"one": run.id, "home": home.id, "waiting": waiting.id}
    facts["home_result"] = mesh.inspect_run(home.id).result
    facts["paused_ids"] = [r.id for r in paused]

    # -- cancel the waiting errand -----------------------------------------------------
    cancelled = mesh.cancel_run(waiting.id, actor="gandalf", reason="fly, you fools")
    print(f"== cancel_run -> {cancelled.status.value}")
    try:
        mesh.cancel_run(waiting.id)
    except sm.InvalidTransitionError as exc:
        print(f"cancel again: {type(exc).__name__}: {exc}")
        facts["cancel_again"] = (exc.status, exc.action)
    print()
    facts["cancelled"] = cancelled.status.value

    # -- replay_run: refused after irreversible steps ----------------------------------
    print("== replay_run")
    try:
        mesh.replay_run(run.id)
    except sm.UnsafeReplayError as exc:
        print(f"{type(exc).__name__}: {exc}")
        print(f"steps: {exc.steps}")
        facts["unsafe_steps"] = list(exc.steps)
    replayed = mesh.replay_run(home.id)  # went home: nothing irreversible happened
    print(
        f"replay of the rejected errand: new run {short(replayed.id)}, "
        f"replayed_from_run_id={short(replayed.replayed_from_run_id)}, "
        f"status now {mesh.inspect_run(replayed.id).status.value}"
    )
    print()
    facts["replayed_from"] = replayed.replayed_from_run_id
    facts["replayed_status"] = mesh.inspect_run(replayed.id).status.value

    # -- fork_run: reuse everything up to the council vote, run the rest again --------
    at_seq = next(s.seq for s in full.step_runs if s.name == "cross_moria")
    fork = mesh.fork_run(run.id, at_seq=at_seq)
    forked = mesh.inspect_run(fork.id, include_history=True)
    assert forked.step_runs is not None
    print(f"== fork_run(at_seq={at_seq})")
    print(
        f"new run {short(forked.id)}, forked_from_run_id={short(forked.forked_from_run_id)}, "
        f"status {forked.status.value}, result {forked.result!r}"
    )
    reused = [s.name for s in forked.step_runs if s.seq < at_seq]
    print(f"reused from the source (seq < {at_seq}): {', '.join(reused)}")
    print()
    facts["fork"] = {
        "at_seq": at_seq,
        "forked_from": forked.forked_from_run_id,
        "status": forked.status.value,
        "result": forked.result,
        "reused": reused,
    }

    # -- export_history ------------------------------------------------------------------
    history = mesh.export_history(run.id)
    print("== export_history")
    print(f"keys: {sorted(history)}")
    print(f"outcome: {history.get('outcome')}, {len(history['entries'])} entries")
    facts["export"] = {"outcome": history.get("outcome"), "entries": len(history["entries"])}
    return facts


def main(database_url: str | None = None) -> dict[str, Any]:
    """Run the tour on a throwaway SQLite file (or ``database_url``); return its facts."""
    with tempfile.TemporaryDirectory(prefix="squidmesh-tour-") as tmp:
        url = database_url or f"sqlite:///{Path(tmp) / 'tour.db'}"
        clock = Clock(T0)
        with sm.Mesh(
            url, workflows=[ring_errand], executor=sm.InlineExecutor(), clock=clock
        ) as mesh:
            return tour(mesh, clock)


if __name__ == "__main__":
    main()
