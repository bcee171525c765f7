"""The ``squidmesh`` command line.

``squidmesh [--app module:mesh] [--database-url URL] <command>``. ``--app`` names the
``Mesh`` your application builds (or a function returning one); the URL also comes from
``SQUIDMESH_DATABASE_URL`` and defaults to ``sqlite:///squidmesh.db``.

Exit codes: 0 ok; 1 the operation failed (or ``check``/``check-deploy`` found
problems); 2 usage error; 3 run not found or unknown workflow; 4 the run refused the
action (invalid transition, unsafe replay, review error).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import importlib.util
import inspect
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn, TextIO

from squidmesh.core.definition import WorkflowDefinition
from squidmesh.errors import (
    InvalidTransitionError,
    PayloadError,
    ReviewError,
    RunNotFoundError,
    SchemaOutOfDateError,
    SquidmeshError,
    UnknownTriggerError,
    UnknownWorkflowError,
    UnsafeReplayError,
)
from squidmesh.mesh import Mesh
from squidmesh.runtime.views import Explanation, Run
from squidmesh.types import RunStatus

__all__ = ["EXIT_FAILED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "main"]

DEFAULT_URL = "sqlite:///squidmesh.db"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4

STATUSES = tuple(s.value for s in RunStatus)
TERMINAL = ("completed", "cancelled", "failed")


class CliError(Exception):
    """A failure reported as one ``squidmesh: error: ...`` line with an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- loading


def load_mesh(app: str | None, url: str | None) -> Mesh:
    """The Mesh named by ``--app module:attr``, or a bare one on ``--database-url``.

    ``attr`` (default ``mesh``) is a ``Mesh`` or a callable returning one; a callable
    that takes an argument is given the database URL when one was set.
    """
    if app:
        module_name, _, attr = app.partition(":")
        try:
            module = _import(module_name, what="--app")
        except CliError as exc:
            raise CliError(
                EXIT_USAGE if exc.code == EXIT_NOT_FOUND else exc.code, exc.message
            ) from exc
        target = getattr(module, attr or "mesh", None)
        if target is None:
            raise CliError(
                EXIT_USAGE, f"--app {app}: module {module_name} has no {attr or 'mesh'!r}"
            )
        if callable(target) and not isinstance(target, Mesh):
            target = _call_factory(target, url)
        if not isinstance(target, Mesh):
            raise CliError(
                EXIT_USAGE, f"--app {app} is not a squidmesh Mesh (got {type(target).__name__})"
            )
        return target
    return Mesh(url or DEFAULT_URL, auto_migrate=False)


def _call_factory(factory: Callable[..., Any], url: str | None) -> Any:
    try:
        params = [
            p
            for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return factory(url) if params and url is not None else factory()


def _import(name: str, *, what: str) -> ModuleType:
    """Import a dotted module name, or a ``.py`` file path."""
    try:
        if name.endswith(".py") or os.sep in name:
            path = Path(name).absolute()
            if not path.is_file():
                raise CliError(EXIT_NOT_FOUND, f"{what} {name}: no such file")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise CliError(EXIT_USAGE, f"{what} {name}: cannot load this file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(name)
    except CliError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise CliError(EXIT_NOT_FOUND, f"{what} {name}: no module named {exc.name!r}") from exc
        raise CliError(EXIT_FAILED, f"{what} {name}: import failed: {exc}") from exc
    except Exception as exc:
        raise CliError(
            EXIT_FAILED, f"{what} {name}: import failed: {type(exc).__name__}: {exc}"
        ) from exc


def workflows_in(module: ModuleType) -> list[WorkflowDefinition]:
    """Every ``@sm.workflow`` object bound at the top level of ``module`` (in order)."""
    found: dict[int, WorkflowDefinition] = {}
    for value in vars(module).values():
        if isinstance(value, WorkflowDefinition):
            found.setdefault(id(value), value)
    return list(found.values())


# --------------------------------------------------------------------------- output


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: dataclasses -> dicts, UUIDs -> str, datetimes -> ISO 8601."""
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return value


def dumps(value: Any) -> str:
    """Stable JSON: sorted keys, two-space indent."""
    return json.dumps(to_jsonable(value), sort_keys=True, indent=2, ensure_ascii=False)


def compact(value: Any) -> str:
    """One-line JSON for table cells (strings stay bare)."""
    if isinstance(value, str):
        return value
    return json.dumps(to_jsonable(value), sort_keys=True, ensure_ascii=False)


def when(value: Any) -> str:
    """A timestamp to the second (ISO 8601), or ``-``."""
    if value is None or value == "":
        return "-"
    moment: Any = value
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return str(value)
    if isinstance(moment, datetime):
        return moment.isoformat(timespec="seconds")
    return str(moment)


def clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cell(value: Any) -> str:
    if value is None or value == "" or value == () or value == []:
        return "-"
    if isinstance(value, enum.Enum):
        return str(value.value)
    return compact(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, indent: str = "") -> str:
    """Aligned columns, two spaces apart; ``None`` and empty values print as ``-``."""
    body = [[cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    lines = [
        indent + "  ".join(text.ljust(widths[i]) for i, text in enumerate(row)).rstrip()
        for row in [list(headers), *body]
    ]
    return "\n".join(lines)


def facts(pairs: Sequence[tuple[str, Any]], *, indent: str = "") -> str:
    """``key   value`` lines with the values aligned."""
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{indent}{k.ljust(width)}  {cell(v)}".rstrip() for k, v in pairs)


def run_json(run: Run) -> dict[str, Any]:
    """A run as JSON; the history keys only when the run was read with its history."""
    data: dict[str, Any] = to_jsonable(run)
    for key in ("steps", "step_runs", "audit_events"):
        if data.get(key) is None:
            data.pop(key, None)
    return data


def explanation_json(run_id: str, explanation: Explanation) -> dict[str, Any]:
    data: dict[str, Any] = to_jsonable(explanation)
    data["run_id"] = run_id
    return data


def run_detail(run: Run) -> str:
    """What a run is doing or how it ended, in a few words."""
    if run.status.value == "completed":
        return "result " + clip(compact(run.result), 50)
    if run.error and run.status.value in ("failed", "suspended", "retrying"):
        return clip(f"{run.error.get('type', 'error')}: {run.error.get('message', '')}", 60)
    if run.current_steps:
        return "waiting on " + ", ".join(run.current_steps)
    return "-"


def runs_table(runs: Sequence[Run]) -> str:
    return table(
        ("ID", "WORKFLOW", "STATUS", "CREATED", "DETAIL"),
        [(str(r.id), r.workflow, r.status.value, when(r.created_at), run_detail(r)) for r in runs],
    )


def run_facts(run: Run) -> str:
    pairs: list[tuple[str, Any]] = [
        ("run", str(run.id)),
        ("workflow", run.workflow),
        ("trigger", run.trigger),
        ("status", run.status.value),
        ("reason", run.reason),
        ("created", when(run.created_at)),
        ("updated", when(run.updated_at)),
        ("payload", run.payload),
        ("result", run.result),
        ("error", _error_line(run.error)),
        ("waiting on", ", ".join(run.current_steps)),
    ]
    for label, value in (
        ("replayed from", run.replayed_from_run_id),
        ("forked from", run.forked_from_run_id),
        ("idempotency key", run.idempotency_key),
        ("schedule", run.schedule),
    ):
        if value is not None:
            pairs.append((label, str(value) if isinstance(value, uuid.UUID) else value))
    return facts(pairs)


def _error_line(error: dict[str, Any] | None) -> str | None:
    if not error:
        return None
    return f"{error.get('type', 'error')}: {' '.join(str(error.get('message', '')).split())}"


def step_runs_table(run: Run) -> str:
    rows: list[Sequence[Any]] = []
    notes: dict[int, list[str]] = {}
    for s in run.step_runs or ():
        attempts = ",".join(f"{a.number}:{a.status}" for a in s.attempts)
        name = s.name if s.parent is None else f"  {s.name}"
        rows.append(
            (s.seq, s.kind, name, s.status, attempts, when(s.started_at), when(s.completed_at))
        )
        lines = notes.setdefault(s.seq, [])
        if s.kind == "log" and isinstance(s.input, dict):
            fields = s.input.get("fields") or {}
            lines.append(
                f"{s.input.get('level', 'info')}: {s.input.get('message')}"
                + "".join(f" {k}={compact(v)}" for k, v in sorted(fields.items()))
            )
        for a in s.attempts:
            if a.error:
                lines.append(f"attempt {a.number} {a.status}: {_error_line(a.error)}")
        if s.error and not s.attempts:
            lines.append(f"error: {_error_line(s.error)}")
        if s.compensation:
            comp = s.compensation
            lines.append(
                f"compensation {comp.get('status')}: "
                + (compact(comp.get("output")) if comp.get("output") is not None else "")
                + (f" {_error_line(comp.get('error'))}" if comp.get("error") else "")
            )
    if not rows:
        return "  (no commands recorded yet)"
    text = table(
        ("SEQ", "KIND", "NAME", "STATUS", "ATTEMPTS", "STARTED", "COMPLETED"), rows, indent="  "
    ).splitlines()
    out = [text[0]]
    for line, row in zip(text[1:], rows, strict=True):
        out.append(line)
        out.extend(f"        {clip(n, 120)}" for n in notes.get(int(row[0]), []))
    return "\n".join(out)


def audit_table(run: Run) -> str:
    events = run.audit_events or ()
    if not events:
        return "  (none)"
    return table(
        ("AT", "TYPE", "STEP", "ACTOR", "COMMENT", "METADATA"),
        [(when(e.at), e.type, e.step, e.actor, e.comment, e.metadata) for e in events],
        indent="  ",
    )


def explanation_text(run_id: str, explanation: Explanation) -> str:
    pairs: list[tuple[str, Any]] = [
        ("run", run_id),
        ("status", explanation.status.value),
        ("reason", explanation.reason),
        ("step", explanation.step),
        ("next actions", ", ".join(explanation.next_actions) or "(none)"),
    ]
    lines = [facts(pairs), "details"]
    if explanation.details:
        lines.append(facts(sorted(explanation.details.items()), indent="  "))
    else:
        lines.append("  (none)")
    evidence = explanation.evidence
    step_run = evidence.get("step_run")
    attempt = evidence.get("attempt")
    lines.append("evidence")
    ev: list[tuple[str, Any]] = [("run", f"{evidence['run']['status']}")]
    if step_run:
        ev.append(
            (
                "step run",
                f"seq {step_run['seq']} {step_run['kind']} {step_run['name']} {step_run['status']}",
            )
        )
    if attempt:
        ev.append(("attempt", f"{attempt['number']} {attempt['status']}"))
    lines.append(facts(ev, indent="  "))
    return "\n".join(lines)


# --------------------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
    """argparse with one-line ``squidmesh: error: ...`` usage errors (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        where = self.prog[len("squidmesh") :].strip() if self.prog.startswith("squidmesh") else ""
        prefix = f"{where}: " if where else ""
        self.exit(
            EXIT_USAGE,
            f"squidmesh: error: {prefix}{message} (see '{self.prog} --help')\n",
        )


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None


def _json_object(text: str) -> dict[str, Any]:
    value = _json_arg(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="squidmesh",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--app",
        default=os.environ.get("SQUIDMESH_APP"),
        metavar="MODULE:ATTR",
        help="your application's Mesh (or a function returning one); env SQUIDMESH_APP",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("SQUIDMESH_DATABASE_URL"),
        metavar="URL",
        help=f"database of a bare Mesh (without --app); env SQUIDMESH_DATABASE_URL; "
        f"default {DEFAULT_URL}",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    json_flag = _Parser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON (sorted keys)")

    commands.add_parser("migrate", help="create or upgrade squidmesh's tables")

    worker = commands.add_parser("worker", help="run jobs until SIGTERM/SIGINT (needs --app)")
    worker.add_argument("--concurrency", type=_positive_int, default=4)
    worker.add_argument("--poll-interval", type=float, default=2.0)
    worker.add_argument("--lease-seconds", type=float, default=30.0)
    worker.add_argument("--no-scheduler", action="store_true", help="never run cron triggers")

    drain = commands.add_parser(
        "drain", parents=[json_flag], help="run every due job in this process, then exit"
    )
    drain.add_argument("--limit", type=_positive_int, default=None)

    runs = commands.add_parser("runs", help="inspect and operate runs")
    ops = runs.add_subparsers(dest="action", required=True, metavar="ACTION")

    start = ops.add_parser("start", parents=[json_flag], help="start a run")
    start.add_argument("workflow", metavar="WORKFLOW")
    start.add_argument("--payload", type=_json_object, default=None, metavar="JSON")
    start.add_argument("--trigger", default=None)
    start.add_argument("--idempotency-key", default=None, metavar="KEY")

    listing = ops.add_parser("list", parents=[json_flag], help="runs, newest first")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--workflow", metavar="NAME")
    listing.add_argument("--limit", type=_positive_int, default=50)
    listing.add_argument("--before", metavar="RUN_ID", help="the page after this run")

    show = ops.add_parser(
        "show", parents=[json_flag], help="a run, its step runs (with attempts) and audit"
    )
    show.add_argument("run_id", metavar="RUN_ID")

    explain = ops.add_parser(
        "explain", parents=[json_flag], help="why the run is where it is; what to do next"
    )
    explain.add_argument("run_id", metavar="RUN_ID")

    history = ops.add_parser(
        "history", parents=[json_flag], help="the run's history as JSON (for testing.replay)"
    )
    history.add_argument("run_id", metavar="RUN_ID")
    history.add_argument("--out", metavar="FILE", help="write it to FILE instead of stdout")

    for name, verb in (("approve", "approve"), ("reject", "reject")):
        review = ops.add_parser(
            name, parents=[json_flag], help=f"{verb} the approval the run is paused at"
        )
        review.add_argument("run_id", metavar="RUN_ID")
        review.add_argument("--actor", required=True, help="who decided")
        review.add_argument("--comment")
        review.add_argument("--metadata", type=_json_object, metavar="JSON")

    unblock = ops.add_parser("unblock", parents=[json_flag], help="resume a run paused at sm.pause")
    unblock.add_argument("run_id", metavar="RUN_ID")
    unblock.add_argument("--actor")
    unblock.add_argument("--comment")
    unblock.add_argument("--metadata", type=_json_object, metavar="JSON")
    unblock.add_argument("--data", type=_json_arg, metavar="JSON", help="what the yield returns")

    cancel = ops.add_parser("cancel", parents=[json_flag], help="cancel a run")
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--actor")
    cancel.add_argument("--reason")
    cancel.add_argument("--compensate", action="store_true", help="undo the completed steps first")

    replay = ops.add_parser(
        "replay", parents=[json_flag], help="start a new run with the same payload"
    )
    replay.add_argument("run_id", metavar="RUN_ID")
    replay.add_argument(
        "--allow-irreversible",
        action="store_true",
        help="replay even after irreversible or non-compensatable steps completed",
    )

    fork = ops.add_parser(
        "fork", parents=[json_flag], help="new run reusing the results before --at-seq"
    )
    fork.add_argument("run_id", metavar="RUN_ID")
    fork.add_argument("--at-seq", type=_non_negative_int, required=True, metavar="N")

    resume = ops.add_parser("resume", parents=[json_flag], help="re-activate a suspended run")
    resume.add_argument("run_id", metavar="RUN_ID")

    send = ops.add_parser(
        "send-event", parents=[json_flag], help="deliver an event to wait_for_event(NAME)"
    )
    send.add_argument("run_id", metavar="RUN_ID")
    send.add_argument("name", metavar="NAME")
    send.add_argument("--data", type=_json_arg, metavar="JSON")

    graph = commands.add_parser("graph", help="a workflow's step graph")
    graph.add_argument(
        "workflow", metavar="WORKFLOW", help="a name registered on --app's Mesh, or module:attr"
    )
    graph.add_argument("--format", choices=("mermaid", "dot", "json"), default="mermaid")

    check = commands.add_parser(
        "check", parents=[json_flag], help="lint every workflow of a module (exit 1 on findings)"
    )
    check.add_argument(
        "module", metavar="MODULE", help="a dotted module name, a .py file, or module:attr"
    )

    deploy = commands.add_parser(
        "check-deploy",
        parents=[json_flag],
        help="replay the runs in flight against --app's code (exit 1 if any would break)",
    )
    deploy.add_argument(
        "--batch-size",
        type=_positive_int,
        default=500,
        metavar="N",
        help="runs read per batch; progress is reported every N runs",
    )

    prune = commands.add_parser(
        "prune", parents=[json_flag], help="delete finished runs older than --older-than days"
    )
    prune.add_argument("--older-than", type=_days, required=True, metavar="DAYS")
    prune.add_argument(
        "--status",
        action="append",
        choices=TERMINAL,
        metavar="STATUS",
        help="completed, cancelled or failed; repeat for several (default: all three)",
    )
    prune.add_argument("--batch-size", type=_positive_int, default=500, metavar="N")

    commands.add_parser(
        "demo", help="run the Ring Errand end to end on a throwaway SQLite database"
    )
    return parser


# --------------------------------------------------------------------------- commands


class Context:
    """The parsed arguments and a lazily built Mesh."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self._mesh: Mesh | None = None

    @property
    def mesh(self) -> Mesh:
        if self._mesh is None:
            self._mesh = load_mesh(self.args.app, self.args.database_url)
        return self._mesh

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def progress(self, text: str) -> None:
        print(f"squidmesh: {text}", file=self.err, flush=True)

    def emit(self, data: Any, human: Callable[[], str]) -> None:
        self.print(dumps(data) if self.args.json else human())

    def need_workflows(self, command: str) -> Mesh:
        mesh = self.mesh
        if not mesh.workflows:
            raise CliError(
                EXIT_USAGE,
                f"{command} needs your workflows: pass --app module:mesh (or set "
                "SQUIDMESH_APP) naming the Mesh your application builds",
            )
        return mesh


def cmd_migrate(ctx: Context) -> int:
    ctx.mesh.migrate()
    ctx.print(f"squidmesh: schema is up to date ({ctx.mesh.store.dialect})")
    return EXIT_OK


def cmd_worker(ctx: Context) -> int:
    """Run a worker in this process; SIGTERM and SIGINT drain it gracefully."""
    import signal

    from squidmesh.runtime.worker import Worker

    args = ctx.args
    mesh = ctx.need_workflows("the worker")
    mesh._ready()
    worker = Worker(
        mesh,
        concurrency=args.concurrency,
        poll_interval=args.poll_interval,
        lease_seconds=args.lease_seconds,
        scheduler=not args.no_scheduler,
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
    ran = ctx.need_workflows("drain").drain(limit=ctx.args.limit)
    ctx.emit({"jobs": ran}, lambda: f"ran {ran} job(s)")
    return EXIT_OK


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


def resolve_workflow(ctx: Context, spec: str) -> WorkflowDefinition:
    """``module:attr`` (imported), or a name registered on ``--app``'s Mesh."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        found = getattr(_import(module_name, what="workflow"), attr, None)
        if not isinstance(found, WorkflowDefinition):
            raise CliError(EXIT_NOT_FOUND, f"{spec} is not an @sm.workflow")
        return found
    if not ctx.args.app:
        raise CliError(
            EXIT_NOT_FOUND,
            f"unknown workflow {spec!r}: name it as module:attr, or pass --app module:mesh "
            "whose Mesh registers it",
        )
    return ctx.mesh._workflow(spec)


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


def _relative_paths(text: str) -> str:
    """``text`` with the working directory's prefix dropped from the paths it names."""
    return text.replace(os.path.join(os.getcwd(), ""), "")


def cmd_check(ctx: Context) -> int:
    from squidmesh.analysis import lint

    spec = ctx.args.module
    if ":" in spec and not Path(spec).exists():
        workflows = [resolve_workflow(ctx, spec)]
    else:
        workflows = workflows_in(_import(spec, what="check"))
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
    from squidmesh.deploy import check_deploy

    mesh = ctx.need_workflows("check-deploy")
    ctx.progress(
        f"check-deploy: replaying runs in flight against {', '.join(sorted(mesh.workflows))}"
    )
    report = check_deploy(
        mesh,
        batch_size=ctx.args.batch_size,
        progress=lambda n: ctx.progress(f"check-deploy: {n} run(s) checked"),
    )

    def human() -> str:
        lines: list[str] = []
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
                            _relative_paths(
                                f"code yields {p.expected}; history has {p.recorded}"
                                if p.kind == "nondeterminism"
                                else p.message
                            ),
                        )
                        for p in report.problems
                    ],
                )
            )
            lines.append(
                f"{len(report.problems)} of {report.checked} run(s) in flight would break: "
                "keep the old code path (or guard the change with sm.patched), or deal with "
                "these runs before deploying"
            )
        else:
            lines.append(f"{report.checked} run(s) in flight replay cleanly: safe to deploy")
        return "\n".join(lines)

    ctx.emit(report.to_json(), human)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_prune(ctx: Context) -> int:
    a = ctx.args
    statuses = tuple(dict.fromkeys(a.status or TERMINAL))
    ctx.progress(f"prune: deleting {'/'.join(statuses)} runs older than {a.older_than:g} day(s)")
    deleted = ctx.mesh.prune(
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
    from squidmesh.demo import run_demo

    return run_demo(ctx.out)


COMMANDS: dict[str, Callable[[Context], int]] = {
    "migrate": cmd_migrate,
    "worker": cmd_worker,
    "drain": cmd_drain,
    "runs start": cmd_runs_start,
    "runs list": cmd_runs_list,
    "runs show": cmd_runs_show,
    "runs explain": cmd_runs_explain,
    "runs history": cmd_runs_history,
    "runs approve": cmd_runs_approve,
    "runs reject": cmd_runs_reject,
    "runs unblock": cmd_runs_unblock,
    "runs cancel": cmd_runs_cancel,
    "runs replay": cmd_runs_replay,
    "runs fork": cmd_runs_fork,
    "runs resume": cmd_runs_resume,
    "runs send-event": cmd_runs_send_event,
    "graph": cmd_graph,
    "check": cmd_check,
    "check-deploy": cmd_check_deploy,
    "prune": cmd_prune,
    "demo": cmd_demo,
}


def exit_code(exc: BaseException) -> int:
    """The exit code for an API error."""
    if isinstance(exc, (RunNotFoundError, UnknownWorkflowError)):
        return EXIT_NOT_FOUND
    if isinstance(exc, (InvalidTransitionError, UnsafeReplayError, ReviewError)):
        return EXIT_REFUSED
    if isinstance(exc, (PayloadError, UnknownTriggerError, ValueError)):
        return EXIT_USAGE
    return EXIT_FAILED


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command + (f" {args.action}" if args.command == "runs" else "")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # --app myapp:mesh finds ./myapp.py, as with -m
    ctx = Context(args, sys.stdout, sys.stderr)
    try:
        try:
            return COMMANDS[command](ctx)
        finally:
            ctx.close()
    except CliError as exc:
        message, code = exc.message, exc.code
    except SchemaOutOfDateError as exc:
        message = str(exc) if "migrate" in str(exc) else f"{exc} (run `squidmesh migrate`)"
        code = EXIT_FAILED
    except (SquidmeshError, ValueError) as exc:
        message, code = str(exc), exit_code(exc)
    except KeyboardInterrupt:
        message, code = "interrupted", 130
    except BrokenPipeError:
        # The reader went away (`squidmesh runs history ID | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    print(f"squidmesh: error: {_one_line(message)}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
