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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        mesh = load_mesh(args.app, args.database_url)
        try:
            if args.command == "migrate":
                mesh.migrate()
                print(f"squidmesh: schema is up to date ({mesh.store.dialect})")
        finally:
            mesh.close()
    except SquidmeshError as exc:
        print(f"squidmesh: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
