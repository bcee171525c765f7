"""The ``squidmesh runs ...`` commands: start, list, show and operate single runs.

Every RUN_ID argument may be a unique prefix of the id. An action that succeeded but
left the run ``suspended`` (its code raised, or no longer matches its history) or
``failed`` does not report success: it exits 1, says what happened and points to
``squidmesh runs explain``.
"""

from __future__ import annotations

from pathlib import Path

from squidmesh.cli.app import Context
from squidmesh.cli.errors import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    NEEDS_APP,
    CliError,
    one_line,
)
from squidmesh.cli.render import (
    audit_table,
    children_table,
    compact,
    dumps,
    explanation_json,
    explanation_text,
    published_facts,
    relative_paths,
    run_facts,
    run_json,
    runs_table,
    step_runs_table,
)
from squidmesh.cli.style import paint, status
from squidmesh.core.contracts import type_label
from squidmesh.errors import PayloadError, UnsafeReplayError, did_you_mean
from squidmesh.mesh import Mesh
from squidmesh.runtime.views import Run

__all__ = [
    "cmd_runs_approve",
    "cmd_runs_cancel",
    "cmd_runs_explain",
    "cmd_runs_fork",
    "cmd_runs_history",
    "cmd_runs_list",
    "cmd_runs_reject",
    "cmd_runs_replay",
    "cmd_runs_resume",
    "cmd_runs_send_event",
    "cmd_runs_show",
    "cmd_runs_start",
    "cmd_runs_unblock",
]

#: Where an action must not leave a run without the command saying so.
_BAD_ENDINGS = ("suspended", "failed")


def _action_result(ctx: Context, verb: str, run: Run, *, before: str | None = None) -> int:
    """Report an action. ``before`` is the run's status before the action (None for a
    run the action created); a run the action left suspended or failed is an error."""
    status_now = run.status.value
    if status_now in _BAD_ENDINGS and (before != status_now or verb == "resumed"):
        raise _bad_ending(ctx, verb, run)

    def human() -> str:
        line = f"{verb} run {run.id}: now {status(status_now)}"
        if status_now == "completed":
            line += f", result {compact(run.result)}"
        elif run.current_steps:
            line += f", waiting on {', '.join(run.current_steps)}"
        return line

    ctx.emit(run_json(run), human)
    return EXIT_OK


def _bad_ending(ctx: Context, verb: str, run: Run) -> CliError:
    why = ctx.database().explain_run(run.id)
    status_now = run.status.value
    where = f" at {why.step}" if why.step else ""
    error = run.error or {}
    cause = relative_paths(
        f"{error.get('type', 'error')}: {one_line(str(error.get('message', '')))}"
    )
    return CliError(
        EXIT_FAILED,
        f"{verb} run {run.id}, but the run is now {status_now} ({why.reason}{where}): {cause}",
        hint=f"see `squidmesh runs explain {run.id}`",
        kind="RunSuspended" if status_now == "suspended" else "RunFailed",
        extra={"run": run_json(run), "reason": why.reason},
    )


def _status_before(mesh: Mesh, run_id: str) -> str:
    return mesh.inspect_run(run_id).status.value


def cmd_runs_start(ctx: Context) -> int:
    args = ctx.args
    mesh = ctx.need_workflows("runs start")
    try:
        run = mesh.start_run(
            args.workflow, args.payload, trigger=args.trigger, idempotency_key=args.idempotency_key
        )
    except PayloadError as exc:
        raise CliError(
            EXIT_USAGE,
            str(exc),
            hint=_payload_fields(mesh, args.workflow, args.trigger),
            kind="PayloadError",
        ) from exc
    return _action_result(ctx, "started", run)


def _payload_fields(mesh: Mesh, workflow: str, trigger: str | None) -> str | None:
    """What --payload may hold: the fields of the trigger's model, required ones marked."""
    try:
        trig = mesh.workflows[workflow].trigger(trigger)
    except Exception:
        return None
    model = trig.payload
    if model is None:
        return f"trigger {trig.name} takes no payload"
    fields = [
        f"{name}: {type_label(info.annotation)}" + (" (required)" if info.is_required() else "")
        for name, info in model.model_fields.items()
    ]
    return f"--payload of trigger {trig.name} is a JSON object with {', '.join(fields)}"


def cmd_runs_list(ctx: Context) -> int:
    args = ctx.args
    mesh = ctx.database()
    before = mesh.inspect_run(ctx.resolve_run(args.before)) if args.before else None
    runs = mesh.list_runs(
        status=args.status, workflow=args.workflow, limit=args.limit, before=before
    )
    if not runs and args.workflow and args.workflow not in mesh.workflows:
        _require_known_workflow(ctx, mesh, args.workflow)
    next_before = str(runs[-1].id) if len(runs) == args.limit else None

    def human() -> str:
        if not runs:
            return f"(no runs{_filters(ctx)} in {ctx.database_label})"
        text = runs_table(runs)
        if next_before:
            text += "\n" + paint(f"(more: --before {next_before})", "dim")
        return text

    ctx.emit({"runs": [run_json(r) for r in runs], "next_before": next_before}, human)
    return EXIT_OK


def _filters(ctx: Context) -> str:
    a = ctx.args
    found = [f"--{k} {v}" for k, v in (("status", a.status), ("workflow", a.workflow)) if v]
    if a.before:
        found.append(f"--before {a.before}")
    return f" matching {' '.join(found)}" if found else ""


def _require_known_workflow(ctx: Context, mesh: Mesh, name: str) -> None:
    """An unknown --workflow is an error, not an empty list: neither registered on the
    Mesh nor the workflow of any stored run, it is most likely a typo."""
    if mesh.list_runs(workflow=name, limit=1):
        return
    registered = sorted(mesh.workflows)
    suggestion = did_you_mean(name, registered)
    message = f"no workflow {name!r}: no run of it is stored in {ctx.database_label}"
    if ctx.args.app:
        message += f", and the Mesh of --app {ctx.args.app} does not register it"
        message += f" (registered: {', '.join(registered) or 'none'})"
    if suggestion:
        message += f"; did you mean {suggestion!r}?"
    raise CliError(
        EXIT_NOT_FOUND,
        message,
        hint=None if suggestion or ctx.args.app else NEEDS_APP,
        kind="UnknownWorkflowError",
    )


def cmd_runs_show(ctx: Context) -> int:
    run = ctx.database().inspect_run(ctx.resolve_run(ctx.args.run_id), include_history=True)

    def human() -> str:
        parts = [run_facts(run), ""]
        if run.published:
            parts += [paint("published", "bold"), published_facts(run), ""]
        if run.children:
            parts += [paint("child runs", "bold"), children_table(run), ""]
        parts += [
            paint("step runs", "bold"),
            step_runs_table(run),
            "",
            paint("audit events", "bold"),
            audit_table(run),
        ]
        return "\n".join(parts)

    ctx.emit(run_json(run), human)
    return EXIT_OK


def cmd_runs_explain(ctx: Context) -> int:
    run_id = ctx.resolve_run(ctx.args.run_id)
    explanation = ctx.database().explain_run(run_id)
    ctx.emit(explanation_json(run_id, explanation), lambda: explanation_text(run_id, explanation))
    return EXIT_OK


def cmd_runs_history(ctx: Context) -> int:
    history = ctx.database().export_history(ctx.resolve_run(ctx.args.run_id))
    text = dumps(history)
    if ctx.args.out:
        try:
            Path(ctx.args.out).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise CliError(EXIT_FAILED, f"cannot write {ctx.args.out}: {exc.strerror}") from exc
        entries = len(history.get("entries") or [])
        ctx.progress(
            f"wrote {entries} history entries of run {history.get('run_id')} to {ctx.args.out}"
        )
    else:
        ctx.print(text)
    return EXIT_OK


def cmd_runs_approve(ctx: Context) -> int:
    a, mesh = ctx.args, ctx.database()
    run_id = ctx.resolve_run(a.run_id)
    before = _status_before(mesh, run_id)
    run = mesh.approve_run(run_id, actor=a.actor, comment=a.comment, metadata=a.metadata)
    return _action_result(ctx, "approved", run, before=before)


def cmd_runs_reject(ctx: Context) -> int:
    a, mesh = ctx.args, ctx.database()
    run_id = ctx.resolve_run(a.run_id)
    before = _status_before(mesh, run_id)
    run = mesh.reject_run(run_id, actor=a.actor, comment=a.comment, metadata=a.metadata)
    return _action_result(ctx, "rejected", run, before=before)


def cmd_runs_unblock(ctx: Context) -> int:
    a, mesh = ctx.args, ctx.database()
    run_id = ctx.resolve_run(a.run_id)
    before = _status_before(mesh, run_id)
    run = mesh.unblock_run(
        run_id, actor=a.actor, comment=a.comment, metadata=a.metadata, data=a.data
    )
    return _action_result(ctx, "unblocked", run, before=before)


def cmd_runs_cancel(ctx: Context) -> int:
    a, mesh = ctx.args, ctx.database()
    run = mesh.cancel_run(
        ctx.resolve_run(a.run_id), actor=a.actor, reason=a.reason, compensate=a.compensate
    )
    return _action_result(
        ctx, "cancel requested for" if run.status.value == "cancelling" else "cancelled", run
    )


def cmd_runs_replay(ctx: Context) -> int:
    a, mesh = ctx.args, ctx.database()
    run_id = ctx.resolve_run(a.run_id)
    try:
        run = mesh.replay_run(run_id, allow_irreversible=a.allow_irreversible)
    except UnsafeReplayError as exc:
        raise CliError(
            EXIT_REFUSED,
            f"replay of run {run_id} refused: it completed irreversible or "
            f"non-compensatable steps ({', '.join(exc.steps)}); review their effects, then "
            "pass --allow-irreversible",
            kind="UnsafeReplayError",
        ) from exc
    return _action_result(ctx, f"replayed {run.replayed_from_run_id} as", run)


def cmd_runs_fork(ctx: Context) -> int:
    a, mesh = ctx.args, ctx.database()
    run = mesh.fork_run(ctx.resolve_run(a.run_id), at_seq=a.at_seq)
    return _action_result(ctx, f"forked {run.forked_from_run_id} at seq {a.at_seq} as", run)


def cmd_runs_resume(ctx: Context) -> int:
    mesh = ctx.database()
    run_id = ctx.resolve_run(ctx.args.run_id)
    return _action_result(ctx, "resumed", mesh.resume_run(run_id), before="suspended")


def cmd_runs_send_event(ctx: Context) -> int:
    a, mesh = ctx.args, ctx.database()
    run_id = ctx.resolve_run(a.run_id)
    before = _status_before(mesh, run_id)
    run = mesh.send_event(run_id, a.name, a.data)
    return _action_result(ctx, f"sent event {a.name!r} to", run, before=before)
