"""The other commands: migrate, worker, drain, graph, check, check-deploy, prune, demo."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from squidmesh.cli import database, logs
from squidmesh.cli.app import Context, import_named, workflows_in
from squidmesh.cli.errors import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, NEEDS_APP, CliError
from squidmesh.cli.parser import TERMINAL
from squidmesh.cli.render import dumps, relative_paths, table
from squidmesh.cli.style import paint
from squidmesh.core.definition import WorkflowDefinition, registered_workflow
from squidmesh.storage.base import SCHEMA_VERSION

__all__ = [
    "cmd_check",
    "cmd_check_deploy",
    "cmd_demo",
    "cmd_drain",
    "cmd_graph",
    "cmd_migrate",
    "cmd_prune",
    "cmd_worker",
    "resolve_workflow",
]


def cmd_migrate(ctx: Context) -> int:
    """The one command that may create a database: it says which, and what it applied."""
    mesh = ctx.mesh
    path = database.sqlite_path(mesh.store)
    created = path is not None and not path.exists()
    applied = mesh.migrate()
    where = database.label(mesh.store) + (" (a new file)" if created else "")
    if applied:
        ctx.print(
            f"squidmesh: applied {', '.join(applied)} to {where}; "
            f"the schema is at version {SCHEMA_VERSION}"
        )
    else:
        ctx.print(
            f"squidmesh: schema is up to date (version {SCHEMA_VERSION}) in {where}; "
            "nothing to apply"
        )
    return EXIT_OK


def cmd_worker(ctx: Context) -> int:
    """Run a worker in this process; SIGTERM and SIGINT drain it gracefully."""
    import signal

    from squidmesh.runtime.worker import Worker

    args = ctx.args
    logs.configure(args.log_level, args.log_format)
    mesh = ctx.need_workflows("the worker")
    worker = Worker(
        mesh.runner,
        concurrency=args.concurrency,
        poll_interval=args.poll_interval,
        lease_seconds=args.lease_seconds,
        scheduler=not args.no_scheduler,
        sweep_interval=args.sweep_interval,
    )

    def drain(signum: int, _frame: object) -> None:
        ctx.progress(f"{signal.Signals(signum).name} received, draining")
        worker.request_stop()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    ctx.progress(f"worker {worker.name} running {sorted(mesh.workflows)}")
    worker.run()
    return EXIT_OK


def cmd_drain(ctx: Context) -> int:
    logs.configure(ctx.args.log_level, ctx.args.log_format)
    ran = ctx.need_workflows("drain").drain(limit=ctx.args.limit)
    ctx.emit({"jobs": ran}, lambda: f"ran {ran} job(s)")
    return EXIT_OK


def cmd_queues(ctx: Context) -> int:
    states = ctx.mesh.queues()

    def human() -> str:
        if not states:
            return "no queues (declare sm.Queue in the --app's modules)"
        lines = []
        for q in states:
            limits = [
                f"concurrency {q.concurrency if q.concurrency is not None else '-'}",
                f"per key {q.key_concurrency if q.key_concurrency is not None else '-'}",
            ]
            if q.rate is not None:
                limits.append(
                    f"rate {q.rate['limit']:g}/{q.rate['per']:g}s "
                    f"({q.started_in_window} started in the window)"
                )
            if not q.declared:
                limits = ["limits unknown here (not declared by --app)"]
            lines.append(
                f"{q.name}: {q.running} running, {q.waiting} waiting; " + ", ".join(limits)
            )
            for k in q.keys:
                name = k.key if k.key is not None else "(no key)"
                lines.append(f"  {name}: {k.running} running, {k.waiting} waiting")
        return "\n".join(lines)

    ctx.emit({"queues": [q.to_json() for q in states]}, human)
    return EXIT_OK


def resolve_workflow(ctx: Context, spec: str) -> WorkflowDefinition:
    """``module:attr`` (imported), or a name registered on ``--app``'s Mesh."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        found = getattr(import_named(module_name, what="workflow"), attr, None)
        if not isinstance(found, WorkflowDefinition):
            raise CliError(EXIT_NOT_FOUND, f"{spec} is not an @sm.workflow")
        return found
    if not ctx.args.app:
        raise CliError(
            EXIT_NOT_FOUND,
            f"unknown workflow {spec!r}: name it as module:attr (like "
            "examples.ring_errand:ring_errand)",
            hint=NEEDS_APP,
            kind="UnknownWorkflowError",
        )
    return registered_workflow(ctx.mesh.workflows, spec)


def cmd_graph(ctx: Context) -> int:
    from squidmesh.analysis import step_graph

    graph = step_graph(resolve_workflow(ctx, ctx.args.workflow))
    fmt = ctx.args.format
    if fmt == "mermaid":
        ctx.print(graph.to_mermaid().rstrip("\n"))
    elif fmt == "dot":
        ctx.print(graph.to_dot().rstrip("\n"))
    else:
        data: Any = graph.to_json()
        ctx.print(dumps(json.loads(data) if isinstance(data, str) else data))
    return EXIT_OK


def _display_path(file: str | None) -> str:
    """``file`` relative to the working directory when it lies below it."""
    if not file:
        return "?"
    here = os.path.join(os.getcwd(), "")
    full = os.path.abspath(file)
    return full[len(here) :] if full.startswith(here) else file


def cmd_check(ctx: Context) -> int:
    from squidmesh.analysis import lint

    spec = ctx.args.module
    if ":" in spec and not Path(spec).exists():
        workflows = [resolve_workflow(ctx, spec)]
    else:
        workflows = workflows_in(import_named(spec, what="check"))
    if not workflows:
        raise CliError(EXIT_NOT_FOUND, f"no @sm.workflow found in {ctx.args.module}")
    seen: set[tuple[Any, ...]] = set()
    found: list[dict[str, Any]] = []
    for wf in workflows:
        for f in lint(wf):
            key = (f.file, f.lineno, f.code, f.message)
            if key in seen:
                continue
            seen.add(key)
            found.append(
                {
                    "workflow": wf.name,
                    "code": f.code,
                    "message": f.message,
                    "file": _display_path(f.file),
                    "lineno": f.lineno,
                    "hint": f.hint,
                }
            )
    found.sort(key=lambda d: (d["file"], d["lineno"] or 0, d["code"]))
    names = [wf.name for wf in workflows]

    def human() -> str:
        lines = [
            f"{d['file']}:{d['lineno']} {d['code']} {d['message']}"
            + (f" ({d['hint']})" if d["hint"] else "")
            for d in found
        ]
        if found:
            lines.append(f"{len(found)} finding(s) in {len(names)} workflow(s): {', '.join(names)}")
        else:
            lines.append(f"{len(names)} workflow(s) checked, no findings: {', '.join(names)}")
        return "\n".join(lines)

    ctx.emit({"findings": found, "workflows": names}, human)
    return EXIT_FAILED if found else EXIT_OK


def cmd_check_deploy(ctx: Context) -> int:
    from squidmesh.deploy import ACTIVE_STATUSES, check_deploy

    mesh = ctx.need_workflows("check-deploy")
    where = database.label(mesh.store)
    counts = database.run_counts(mesh.store)
    stored = sum(counts.values())
    in_flight = sum(n for status, n in counts.items() if status in ACTIVE_STATUSES)
    ctx.progress(
        f"check-deploy: {where} holds {stored} run(s), {in_flight} in flight; replaying them "
        f"against {', '.join(sorted(mesh.workflows))}"
    )
    report = check_deploy(
        mesh,
        batch_size=ctx.args.batch_size,
        progress=lambda n: ctx.progress(f"check-deploy: {n} run(s) checked"),
    )

    def human() -> str:
        lines = [f"database: {where} ({stored} run(s) stored, {in_flight} in flight)"]
        if report.problems:
            lines.append(
                table(
                    ("RUN", "WORKFLOW", "STATUS", "PROBLEM", "SEQ", "DETAIL"),
                    [
                        (
                            p.run_id,
                            p.workflow,
                            p.status,
                            p.kind,
                            p.seq,
                            relative_paths(
                                f"code yields {p.expected}; history has {p.recorded}"
                                if p.kind == "nondeterminism"
                                else p.message
                            ),
                        )
                        for p in report.problems
                    ],
                    wrap=(5,),
                )
            )
            lines.append(
                paint(
                    f"{len(report.problems)} of {report.checked} run(s) in flight would break: "
                    "keep the old code path (or guard the change with sm.patched), or deal with "
                    "these runs before deploying",
                    "red",
                )
            )
        else:
            lines.append(
                paint(f"{report.checked} run(s) in flight replay cleanly: safe to deploy", "green")
            )
        if stored == 0:
            lines.append(
                "note: this database holds no runs at all; check that it is the one your "
                "application uses"
            )
        return "\n".join(lines)

    data = report.to_json()
    data["database"] = {"label": where, "runs": stored, "in_flight": in_flight}
    ctx.emit(data, human)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_prune(ctx: Context) -> int:
    a = ctx.args
    mesh = ctx.database()
    statuses = tuple(dict.fromkeys(a.status or TERMINAL))
    ctx.progress(f"prune: deleting {'/'.join(statuses)} runs older than {a.older_than:g} day(s)")
    deleted = mesh.prune(
        timedelta(days=a.older_than),
        statuses,
        batch_size=a.batch_size,
        progress=lambda n: ctx.progress(f"prune: {n} run(s) deleted"),
    )
    ctx.emit(
        {"deleted": deleted, "older_than_days": a.older_than, "statuses": list(statuses)},
        lambda: (
            f"pruned {deleted} run(s) older than {a.older_than:g} day(s) ({', '.join(statuses)})"
        ),
    )
    return EXIT_OK


def cmd_demo(ctx: Context) -> int:
    from squidmesh.cli.app import DEFAULT_URL
    from squidmesh.demo import run_demo

    # The run stays in the database every command uses, so `squidmesh ui` shows it.
    return run_demo(ctx.out, database=ctx.args.database_url or DEFAULT_URL)
