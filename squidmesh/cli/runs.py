"""The ``squidmesh runs ...`` commands: start, list, show and operate single runs."""

from __future__ import annotations

from pathlib import Path

from squidmesh.cli.app import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, CliError, Context
from squidmesh.cli.render import (
    audit_table,
    compact,
    dumps,
    explanation_json,
    explanation_text,
    run_facts,
    run_json,
    runs_table,
    step_runs_table,
)
from squidmesh.errors import UnsafeReplayError
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


def _action_result(ctx: Context, verb: str, run: Run) -> int:
    def human() -> str:
        line = f"{verb} run {run.id}: now {run.status.value}"
        if run.status.value == "completed":
            line += f", result {compact(run.result)}"
        elif run.current_steps:
            line += f", waiting on {', '.join(run.current_steps)}"
        return line

    ctx.emit(run_json(run), human)
    return EXIT_OK


def cmd_runs_start(ctx: Context) -> int:
    args = ctx.args
    run = ctx.mesh.start_run(
        args.workflow, args.payload, trigger=args.trigger, idempotency_key=args.idempotency_key
    )
    return _action_result(ctx, "started", run)


def cmd_runs_list(ctx: Context) -> int:
    args = ctx.args
    mesh = ctx.mesh
    before = mesh.inspect_run(args.before) if args.before else None
    runs = mesh.list_runs(
        status=args.status, workflow=args.workflow, limit=args.limit, before=before
    )
    next_before = str(runs[-1].id) if len(runs) == args.limit else None

    def human() -> str:
        if not runs:
            return "(no runs)"
        text = runs_table(runs)
        if next_before:
            text += f"\n(more: --before {next_before})"
        return text

    ctx.emit({"runs": [run_json(r) for r in runs], "next_before": next_before}, human)
    return EXIT_OK


def cmd_runs_show(ctx: Context) -> int:
    run = ctx.mesh.inspect_run(ctx.args.run_id, include_history=True)

    def human() -> str:
        return "\n".join(
            [
                run_facts(run),
                "",
                "step runs",
                step_runs_table(run),
                "",
                "audit events",
                audit_table(run),
            ]
        )

    ctx.emit(run_json(run), human)
    return EXIT_OK


def cmd_runs_explain(ctx: Context) -> int:
    mesh = ctx.mesh
    run_id = str(mesh.inspect_run(ctx.args.run_id).id)
    explanation = mesh.explain_run(run_id)
    ctx.emit(explanation_json(run_id, explanation), lambda: explanation_text(run_id, explanation))
    return EXIT_OK


def cmd_runs_history(ctx: Context) -> int:
    history = ctx.mesh.export_history(ctx.args.run_id)
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
    a = ctx.args
    run = ctx.mesh.approve_run(a.run_id, actor=a.actor, comment=a.comment, metadata=a.metadata)
    return _action_result(ctx, "approved", run)


def cmd_runs_reject(ctx: Context) -> int:
    a = ctx.args
    run = ctx.mesh.reject_run(a.run_id, actor=a.actor, comment=a.comment, metadata=a.metadata)
    return _action_result(ctx, "rejected", run)


def cmd_runs_unblock(ctx: Context) -> int:
    a = ctx.args
    run = ctx.mesh.unblock_run(
        a.run_id, actor=a.actor, comment=a.comment, metadata=a.metadata, data=a.data
    )
    return _action_result(ctx, "unblocked", run)


def cmd_runs_cancel(ctx: Context) -> int:
    a = ctx.args
    run = ctx.mesh.cancel_run(a.run_id, actor=a.actor, reason=a.reason, compensate=a.compensate)
    return _action_result(
        ctx, "cancel requested for" if run.status.value == "cancelling" else "cancelled", run
    )


def cmd_runs_replay(ctx: Context) -> int:
    a = ctx.args
    try:
        run = ctx.mesh.replay_run(a.run_id, allow_irreversible=a.allow_irreversible)
    except UnsafeReplayError as exc:
        raise CliError(
            EXIT_REFUSED,
            f"replay of run {a.run_id} refused: it completed irreversible or "
            f"non-compensatable steps ({', '.join(exc.steps)}); review their effects, then "
            "pass --allow-irreversible",
        ) from exc
    return _action_result(ctx, f"replayed {run.replayed_from_run_id} as", run)


def cmd_runs_fork(ctx: Context) -> int:
    a = ctx.args
    run = ctx.mesh.fork_run(a.run_id, at_seq=a.at_seq)
    return _action_result(ctx, f"forked {run.forked_from_run_id} at seq {a.at_seq} as", run)


def cmd_runs_resume(ctx: Context) -> int:
    return _action_result(ctx, "resumed", ctx.mesh.resume_run(ctx.args.run_id))


def cmd_runs_send_event(ctx: Context) -> int:
    a = ctx.args
    run = ctx.mesh.send_event(a.run_id, a.name, a.data)
    return _action_result(ctx, f"sent event {a.name!r} to", run)
