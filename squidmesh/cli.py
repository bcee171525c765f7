"""The ``squidmesh`` command line.

``squidmesh [--app module:mesh] [--database-url URL] <command>``; the URL also comes
from ``SQUIDMESH_DATABASE_URL`` and defaults to ``sqlite:///squidmesh.db``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from squidmesh.errors import SquidmeshError
from squidmesh.mesh import Mesh

__all__ = ["main"]

DEFAULT_URL = "sqlite:///squidmesh.db"


def load_mesh(app: str | None, url: str | None) -> Mesh:
    """The Mesh named by ``--app module:attr``, or a bare one on ``--database-url``."""
    if app:
        module_name, _, attr = app.partition(":")
        module = importlib.import_module(module_name)
        mesh = getattr(module, attr or "mesh")
        if callable(mesh) and not isinstance(mesh, Mesh):
            mesh = mesh()
        if not isinstance(mesh, Mesh):
            raise SquidmeshError(f"--app {app} is not a squidmesh Mesh (got {type(mesh).__name__})")
        return mesh
    return Mesh(url or DEFAULT_URL, auto_migrate=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="squidmesh", description=__doc__)
    parser.add_argument("--app", default=os.environ.get("SQUIDMESH_APP"))
    parser.add_argument("--database-url", default=os.environ.get("SQUIDMESH_DATABASE_URL"))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="create or upgrade squidmesh's tables")
    worker = commands.add_parser("worker", help="run jobs until SIGTERM/SIGINT (needs --app)")
    worker.add_argument("--concurrency", type=int, default=4)
    worker.add_argument("--poll-interval", type=float, default=2.0)
    worker.add_argument("--lease-seconds", type=float, default=30.0)
    worker.add_argument("--no-scheduler", action="store_true", help="never run cron triggers")
    return parser


def run_worker(mesh: Mesh, args: argparse.Namespace) -> None:
    """Run a worker in this process; SIGTERM and SIGINT drain it gracefully."""
    import signal

    from squidmesh.runtime.worker import Worker

    if not mesh.workflows:
        raise SquidmeshError(
            "the worker has no workflows to run: pass --app module:mesh (or set SQUIDMESH_APP) "
            "naming the Mesh your application builds"
        )
    mesh._ready()
    worker = Worker(
        mesh,
        concurrency=args.concurrency,
        poll_interval=args.poll_interval,
        lease_seconds=args.lease_seconds,
        scheduler=not args.no_scheduler,
    )

    def drain(signum: int, _frame: object) -> None:
        print(f"squidmesh: {signal.Signals(signum).name} received, draining", file=sys.stderr)
        worker.request_stop()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    print(f"squidmesh: worker {worker.name} running {sorted(mesh.workflows)}", file=sys.stderr)
    worker.run()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        mesh = load_mesh(args.app, args.database_url)
        try:
            if args.command == "migrate":
                mesh.migrate()
                print(f"squidmesh: schema is up to date ({mesh.store.dialect})")
            elif args.command == "worker":
                run_worker(mesh, args)
        finally:
            mesh.close()
    except SquidmeshError as exc:
        print(f"squidmesh: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
