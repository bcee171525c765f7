"""``squidmesh ui``: serve the operator console locally, for development.

``squidmesh [--app module:mesh] ui [--host 127.0.0.1] [--port 8400] [--actor NAME]
[--read-only] [--worker]`` serves ``squidmesh.web.console`` of the ``--app`` Mesh (or a
bare Mesh on ``--database-url``) with uvicorn. Without ``--actor`` nobody is named, so
the console is read-only: in production the host's own authentication names the actor
(docs/console.md). ``--worker`` also runs a worker thread in this process, so runs of an
``--app`` that uses the database executor move on while you watch.
"""

from __future__ import annotations

import argparse
from typing import Any

from squidmesh.cli import logs
from squidmesh.cli.app import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, Context

__all__ = ["add_parser", "cmd_ui"]


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, got {value}")
    return value


def add_parser(commands: Any, parents: list[Any]) -> None:
    """The ``ui`` subcommand, on the parser's subcommands."""
    ui = commands.add_parser(
        "ui",
        parents=parents,
        help="serve the operator console at http://127.0.0.1:8400 (needs squidmesh[web])",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ui.add_argument("--port", type=_port, default=8400, help="port to listen on")
    ui.add_argument(
        "--actor",
        metavar="NAME",
        help="who acts (recorded on every action); without it the console is read-only",
    )
    ui.add_argument("--read-only", action="store_true", help="show runs, offer no action")
    ui.add_argument("--worker", action="store_true", help="also run a worker thread (needs --app)")


def cmd_ui(ctx: Context) -> int:
    try:
        import uvicorn

        from squidmesh.web import console
    except ImportError as exc:
        raise CliError(
            EXIT_FAILED,
            f"the console needs the web extra ({exc.name} is missing): "
            "pip install 'squidmesh[web]'",
        ) from exc
    args = ctx.args
    logs.configure(args.log_level, args.log_format)
    mesh = ctx.need_workflows("ui --worker") if args.worker else ctx.mesh
    mesh.count_runs(limit=1)  # the schema is there (else: run `squidmesh migrate`)
    actor = args.actor.strip() if args.actor else None
    if args.actor is not None and not actor:
        raise CliError(EXIT_USAGE, "ui --actor needs a name")
    app = console(
        mesh,
        actor=(lambda request: actor) if actor else None,
        read_only=args.read_only,
    )
    if args.worker:
        mesh.worker()
    mode = (
        "read-only"
        if args.read_only or actor is None
        else f"acting as {actor} (recorded on every action)"
    )
    host = f"[{args.host}]" if ":" in args.host else args.host
    ctx.progress(f"operator console at http://{host}:{args.port}/ ({mode}); Ctrl-C stops it")
    if actor and not args.read_only and args.host not in ("127.0.0.1", "localhost", "::1"):
        ctx.progress(
            f"warning: {args.host} is reachable from other machines and `squidmesh ui` has "
            f"no login: anyone who reaches it acts as {actor}. Mount the console behind "
            "your application's authentication instead (docs/console.md)"
        )
    if not mesh.workflows:
        ctx.progress(
            "no --app: runs are shown, but no workflow is registered here (no graphs, "
            "no new runs); pass --app module:mesh for those"
        )
    server = uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    )
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down: done
        ctx.progress("console stopped")
    except SystemExit as exc:  # uvicorn exits when it cannot listen
        if exc.code not in (0, None):
            raise CliError(
                EXIT_FAILED,
                f"cannot serve on {args.host}:{args.port} (is the port in use?): "
                "pass another --port",
            ) from None
    return EXIT_OK
