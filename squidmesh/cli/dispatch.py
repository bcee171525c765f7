"""``main``: parse the command line, run its command, report its errors.

Every failure ends as one :class:`~squidmesh.cli.errors.CliError`: one line on stderr,
or under ``--json`` one ``{"error": {...}}`` document on stdout, with its exit code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from squidmesh.cli import style
from squidmesh.cli.app import Context
from squidmesh.cli.bench import cmd_bench
from squidmesh.cli.complete import autocomplete
from squidmesh.cli.errors import EXIT_FAILED, CliError, from_api
from squidmesh.cli.parser import build_parser
from squidmesh.cli.render import dumps
from squidmesh.cli.runs import (
    cmd_runs_approve,
    cmd_runs_cancel,
    cmd_runs_explain,
    cmd_runs_fork,
    cmd_runs_history,
    cmd_runs_list,
    cmd_runs_reject,
    cmd_runs_replay,
    cmd_runs_resume,
    cmd_runs_send_event,
    cmd_runs_show,
    cmd_runs_start,
    cmd_runs_unblock,
)
from squidmesh.cli.tools import (
    cmd_check,
    cmd_check_deploy,
    cmd_demo,
    cmd_drain,
    cmd_graph,
    cmd_migrate,
    cmd_prune,
    cmd_queues,
    cmd_worker,
)
from squidmesh.cli.ui import cmd_ui
from squidmesh.errors import SquidmeshError

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, Callable[[Context], int]] = {
    "migrate": cmd_migrate,
    "worker": cmd_worker,
    "drain": cmd_drain,
    "queues": cmd_queues,
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
    "ui": cmd_ui,
    "bench": cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    autocomplete(parser)  # completing a command line (argcomplete) ends here
    try:
        args = parser.parse_args(argv)
    except CliError as exc:
        return _report(exc, as_json="--json" in argv, colour="auto")
    command = args.command + (f" {args.action}" if args.command == "runs" else "")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # --app myapp:mesh finds ./myapp.py, as with -m
    style.configure(sys.stdout, args.color)
    ctx = Context(args, sys.stdout, sys.stderr)
    try:
        try:
            return COMMANDS[command](ctx)
        finally:
            ctx.close()
    except CliError as exc:
        error = exc
    except (SquidmeshError, ValueError) as exc:
        error = from_api(exc, app=args.app, database=ctx.database_label, run_id=ctx.run_id)
    except KeyboardInterrupt:
        error = CliError(130, "interrupted", kind="Interrupted")
    except BrokenPipeError:
        # The reader went away (`squidmesh runs history ID | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        if not ctx.json:
            raise  # a bug (ours or the --app's code): the traceback is what helps
        # Under --json, stdout stays one JSON document even then.
        error = CliError(
            EXIT_FAILED,
            f"{type(exc).__name__}: {exc}",
            hint="an unexpected error: run the command without --json to see its traceback",
            kind=type(exc).__name__,
        )
    return _report(error, as_json=ctx.json, colour=args.color)


def _report(error: CliError, *, as_json: bool, colour: str) -> int:
    if as_json:
        print(dumps(error.to_json()), file=sys.stdout)
        return error.code
    line = error.line()
    if style.colour_wanted(sys.stderr, colour):
        head = "squidmesh: error:"
        line = f"\033[1;31m{head}\033[0m{line[len(head) :]}"
    print(line, file=sys.stderr)
    return error.code
