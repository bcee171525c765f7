"""``main``: parse the command line, run its command, turn errors into exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from squidmesh.cli.app import EXIT_FAILED, CliError, Context, exit_code
from squidmesh.cli.parser import build_parser
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
    cmd_worker,
)
from squidmesh.cli.ui import cmd_ui
from squidmesh.errors import SchemaOutOfDateError, SquidmeshError

__all__ = ["COMMANDS", "main"]

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
    "ui": cmd_ui,
}


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
