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
import json
import os
from typing import Any, NoReturn

from squidmesh.cli import ui
from squidmesh.cli.app import DEFAULT_URL, EXIT_USAGE
from squidmesh.types import RunStatus

__all__ = ["STATUSES", "TERMINAL", "build_parser"]

STATUSES = tuple(s.value for s in RunStatus)
TERMINAL = ("completed", "cancelled", "failed")


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
    worker.add_argument(
        "--sweep-interval",
        type=float,
        default=30.0,
        help="seconds between looks for active runs that have no job (0: never)",
    )

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

    ui.add_parser(commands)

    commands.add_parser(
        "demo", help="run the Ring Errand end to end, keeping the run for `squidmesh ui`"
    )
    return parser
