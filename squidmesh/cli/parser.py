"""The argument parser of the ``squidmesh`` command line.

Every option's help shows its default; usage errors are :class:`CliError` (exit 2), so
they print as one line, or as JSON under ``--json``, like every other error.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, NoReturn

from squidmesh.cli import logs, ui
from squidmesh.cli.errors import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_USAGE, CliError
from squidmesh.storage import DEFAULT_URL
from squidmesh.types import RunStatus

__all__ = ["DESCRIPTION", "STATUSES", "TERMINAL", "build_parser"]

STATUSES = tuple(s.value for s in RunStatus)
#: the order prune lists them in (its --json too)
TERMINAL = tuple(s.value for s in (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.FAILED))

DESCRIPTION = """\
Operate squidmesh: migrate the database, run workers, inspect and act on runs.

--app names the Mesh your application builds (module:attribute, or a function
returning one); commands that run workflow code need it. Without --app, commands work
on a bare Mesh on --database-url. A run id may be given as a unique prefix (the first
8 characters are plenty). Every command that prints data takes --json.
"""

EPILOG = f"""\
exit status:
  0  done
  {EXIT_FAILED}  the operation failed (or left the run suspended or failed), the schema is
     not migrated, or check / check-deploy found problems
  {EXIT_USAGE}  usage error: bad option, JSON, payload, URL or run id prefix; no such
     SQLite file
  {EXIT_NOT_FOUND}  run not found, unknown workflow, nothing to check
  {EXIT_REFUSED}  the run refused the action (invalid transition, unsafe replay, review)

shell completion (bash, zsh; needs the argcomplete package, squidmesh[completion]):
  eval "$(register-python-argcomplete squidmesh)"

docs: docs/operations.md#the-command-line in the repository
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's lines; appends ``(default: X)`` to every option that has
    a meaningful default (not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and default is not None
            and default is not False
            and default is not argparse.SUPPRESS
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are ``CliError`` s (exit code 2, one line)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        where = self.prog[len("squidmesh") :].strip() if self.prog.startswith("squidmesh") else ""
        prefix = f"{where}: " if where else ""
        raise CliError(
            EXIT_USAGE,
            f"{prefix}{message} (see '{self.prog} --help')",
            kind="UsageError",
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
    parser = _Parser(prog="squidmesh", description=DESCRIPTION, epilog=EPILOG)
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
        help="database of a bare Mesh (without --app); env SQUIDMESH_DATABASE_URL; "
        f"when neither is set: {DEFAULT_URL}",
    )
    parser.add_argument(
        "--color",
        "--colour",
        dest="color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour human output: auto = on a terminal, unless NO_COLOR is set",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    json_flag = _Parser(add_help=False)
    json_flag.add_argument(
        "--json", action="store_true", help="print JSON (sorted keys); errors too"
    )

    # worker, drain and ui run work: they configure logging (squidmesh.cli.logs).
    log_flags = _Parser(add_help=False)
    logs.add_options(log_flags)

    commands.add_parser(
        "migrate",
        help="create or upgrade squidmesh's tables (the only command that creates a database)",
    )

    worker = commands.add_parser(
        "worker", parents=[log_flags], help="run jobs until SIGTERM/SIGINT (needs --app)"
    )
    worker.add_argument(
        "--concurrency", type=_positive_int, default=4, metavar="N", help="threads running jobs"
    )
    worker.add_argument(
        "--poll-interval",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between polls of the jobs table (PostgreSQL also wakes on NOTIFY)",
    )
    worker.add_argument(
        "--lease-seconds",
        type=float,
        default=30.0,
        metavar="S",
        help="how long a killed worker's jobs wait before another worker takes them",
    )
    worker.add_argument("--no-scheduler", action="store_true", help="never run cron triggers")
    worker.add_argument(
        "--sweep-interval",
        type=float,
        default=30.0,
        help="seconds between looks for active runs that have no job (0: never)",
    )

    drain = commands.add_parser(
        "drain", parents=[json_flag, log_flags], help="run every due job in this process, then exit"
    )
    drain.add_argument(
        "--limit", type=_positive_int, default=None, metavar="N", help="stop after N jobs"
    )

    commands.add_parser(
        "queues",
        parents=[json_flag],
        help="flow-control queues: running, waiting, limits and rate, per key (needs --app "
        "for the limits)",
    )

    runs = commands.add_parser("runs", help="inspect and operate runs")
    ops = runs.add_subparsers(dest="action", required=True, metavar="ACTION")

    start = ops.add_parser("start", parents=[json_flag], help="start a run")
    start.add_argument("workflow", metavar="WORKFLOW", help="a workflow registered on --app")
    start.add_argument(
        "--payload",
        type=_json_object,
        default=None,
        metavar="JSON",
        help="the payload, a JSON object",
    )
    start.add_argument("--trigger", default=None, help="the trigger (default: the first)")
    start.add_argument(
        "--idempotency-key",
        default=None,
        metavar="KEY",
        help="a second start with the same key returns the same run",
    )

    listing = ops.add_parser("list", parents=[json_flag], help="runs, newest first")
    listing.add_argument("--status", choices=STATUSES, help="only runs with this status")
    listing.add_argument("--workflow", metavar="NAME", help="only runs of this workflow")
    listing.add_argument(
        "--limit", type=_positive_int, default=50, metavar="N", help="runs per page"
    )
    listing.add_argument("--before", metavar="RUN_ID", help="the page after this run")

    show = ops.add_parser(
        "show", parents=[json_flag], help="a run, its step runs (with attempts) and audit"
    )
    show.add_argument("run_id", metavar="RUN_ID", help="a run id, or a unique prefix of one")

    explain = ops.add_parser(
        "explain", parents=[json_flag], help="why the run is where it is; what to do next"
    )
    explain.add_argument("run_id", metavar="RUN_ID", help="a run id, or a unique prefix of one")

    history = ops.add_parser(
        "history", parents=[json_flag], help="the run's history as JSON (for testing.replay)"
    )
    history.add_argument("run_id", metavar="RUN_ID", help="a run id, or a unique prefix of one")
    history.add_argument("--out", metavar="FILE", help="write it to FILE instead of stdout")

    for name, verb in (("approve", "approve"), ("reject", "reject")):
        review = ops.add_parser(
            name, parents=[json_flag], help=f"{verb} the approval the run is paused at"
        )
        review.add_argument("run_id", metavar="RUN_ID", help="a run id, or a unique prefix")
        review.add_argument("--actor", required=True, help="who decided (required)")
        review.add_argument("--comment", help="why, for the audit trail")
        review.add_argument("--metadata", type=_json_object, metavar="JSON", help="a JSON object")

    unblock = ops.add_parser("unblock", parents=[json_flag], help="resume a run paused at sm.pause")
    unblock.add_argument("run_id", metavar="RUN_ID", help="a run id, or a unique prefix")
    unblock.add_argument("--actor", help="who unblocked it")
    unblock.add_argument("--comment", help="why, for the audit trail")
    unblock.add_argument("--metadata", type=_json_object, metavar="JSON", help="a JSON object")
    unblock.add_argument("--data", type=_json_arg, metavar="JSON", help="what the yield returns")

    cancel = ops.add_parser("cancel", parents=[json_flag], help="cancel a run")
    cancel.add_argument("run_id", metavar="RUN_ID", help="a run id, or a unique prefix")
    cancel.add_argument("--actor", help="who cancelled it")
    cancel.add_argument("--reason", help="why, for the audit trail")
    cancel.add_argument("--compensate", action="store_true", help="undo the completed steps first")

    replay = ops.add_parser(
        "replay", parents=[json_flag], help="start a new run with the same payload"
    )
    replay.add_argument("run_id", metavar="RUN_ID", help="a run id, or a unique prefix")
    replay.add_argument(
        "--allow-irreversible",
        action="store_true",
        help="replay even after irreversible or non-compensatable steps completed",
    )

    fork = ops.add_parser(
        "fork", parents=[json_flag], help="new run reusing the results before --at-seq"
    )
    fork.add_argument("run_id", metavar="RUN_ID", help="a run id, or a unique prefix")
    fork.add_argument(
        "--at-seq",
        type=_non_negative_int,
        required=True,
        metavar="N",
        help="execute from this history position on (see `runs show`)",
    )

    resume = ops.add_parser("resume", parents=[json_flag], help="re-activate a suspended run")
    resume.add_argument("run_id", metavar="RUN_ID", help="a run id, or a unique prefix")

    send = ops.add_parser(
        "send-event", parents=[json_flag], help="deliver an event to wait_for_event(NAME)"
    )
    send.add_argument("run_id", metavar="RUN_ID", help="a run id, or a unique prefix")
    send.add_argument("name", metavar="NAME", help="the event's name")
    send.add_argument("--data", type=_json_arg, metavar="JSON", help="what the wait returns")

    graph = commands.add_parser("graph", help="a workflow's step graph")
    graph.add_argument(
        "workflow", metavar="WORKFLOW", help="a name registered on --app's Mesh, or module:attr"
    )
    graph.add_argument(
        "--format", choices=("mermaid", "dot", "json"), default="mermaid", help="output format"
    )

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
    prune.add_argument(
        "--older-than",
        type=_days,
        required=True,
        metavar="DAYS",
        help="age in days since the run last changed (fractions allowed)",
    )
    prune.add_argument(
        "--status",
        action="append",
        choices=TERMINAL,
        metavar="STATUS",
        help="completed, cancelled or failed; repeat for several (default: all three)",
    )
    prune.add_argument(
        "--batch-size", type=_positive_int, default=500, metavar="N", help="runs per transaction"
    )

    ui.add_parser(commands, parents=[log_flags])

    commands.add_parser(
        "demo", help="run the Ring Errand end to end, keeping the run for squidmesh ui"
    )

    bench = commands.add_parser(
        "bench",
        help="the performance bars (python -m benchmarks of a source checkout) against the "
        "PostgreSQL server of --database-url",
    )
    bench.add_argument("--quick", action="store_true", help="small smoke sizes (under a minute)")
    bench.add_argument(
        "--only",
        metavar="LIST",
        help="comma-separated subset of baseline,B1,B2,B3,B4,B5,B6,B7,B8,ASYNC",
    )
    bench.add_argument(
        "--output",
        metavar="FILE",
        help="where the JSON of every number goes (default: the checkout's "
        "benchmarks/results/latest.json)",
    )
    profiling = bench.add_mutually_exclusive_group()
    profiling.add_argument(
        "--profile", action="store_true", help="always profile the B1 hot path afterwards"
    )
    profiling.add_argument(
        "--no-profile", action="store_true", help="never profile (default: when B1/B2 miss)"
    )
    return parser
