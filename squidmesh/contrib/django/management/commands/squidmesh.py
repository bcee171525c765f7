"""``manage.py squidmesh ...``: the ``squidmesh`` command line on the project's Mesh.

Everything after ``squidmesh`` goes to squidmesh's own parser, unchanged (``manage.py
squidmesh runs list --status paused --json``, ``manage.py squidmesh --help``): its
output, ``--json`` documents and exit codes are the CLI's. ``migrate`` runs Django's
``migrate`` for the squidmesh app.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import connections

__all__ = ["APP", "Command", "run_cli"]

#: the ``--app`` squidmesh's CLI loads: the project's Mesh, built from Django's settings
APP = "squidmesh.contrib.django:get_mesh"


def run_cli(argv: list[str]) -> int:
    from squidmesh.cli import main

    try:
        return main(["--app", APP, *argv])
    finally:
        connections.close_all()


class Command(BaseCommand):
    help = "The squidmesh command line on this project's Mesh (manage.py squidmesh --help)."

    def run_from_argv(self, argv: list[str]) -> None:
        # Not Django's parser: squidmesh's own sees the arguments, as `squidmesh` would.
        raise SystemExit(run_cli(argv[2:]))

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER)

    def handle(self, *args: str, **options: Any) -> None:
        code = run_cli(list(args))
        if code:
            raise CommandError(f"squidmesh {' '.join(args)} exited with {code}", returncode=code)
