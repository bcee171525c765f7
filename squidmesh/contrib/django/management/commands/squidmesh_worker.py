"""``manage.py squidmesh_worker``: a squidmesh worker on the project's Mesh.

The same as ``squidmesh --app ... worker``: it runs jobs until SIGTERM or SIGINT, then
drains gracefully (the attempts under way finish and are recorded). Its options
(``--concurrency``, ``--poll-interval``, ``--lease-seconds``, ``--sweep-interval``,
``--no-scheduler``) default to ``SQUIDMESH["WORKER"]`` and then to squidmesh's defaults.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from squidmesh.contrib.django.management.commands.squidmesh import run_cli

__all__ = ["Command", "worker_argv"]

_FLAGS = {
    "concurrency": "--concurrency",
    "poll_interval": "--poll-interval",
    "lease_seconds": "--lease-seconds",
    "sweep_interval": "--sweep-interval",
}


def worker_argv(extra: list[str]) -> list[str]:
    """``worker`` with the flags of ``SQUIDMESH["WORKER"]``, then ``extra`` (which wins)."""
    from squidmesh.contrib.django import conf

    argv = ["worker"]
    for key, value in conf.read().worker.items():
        if key == "scheduler":
            if not value:
                argv.append("--no-scheduler")
        elif key in _FLAGS:
            argv += [_FLAGS[key], str(value)]
        else:
            raise CommandError(
                f"SQUIDMESH['WORKER'] has an unknown option {key!r} "
                f"(options: {', '.join([*_FLAGS, 'scheduler'])})"
            )
    return [*argv, *extra]


class Command(BaseCommand):
    help = "Run a squidmesh worker until SIGTERM/SIGINT (manage.py squidmesh_worker --help)."

    def run_from_argv(self, argv: list[str]) -> None:
        extra = argv[2:]
        if any(a in ("-h", "--help") for a in extra):
            raise SystemExit(run_cli(["worker", "--help"]))
        raise SystemExit(run_cli(worker_argv(extra)))

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER)

    def handle(self, *args: str, **options: Any) -> None:
        code = run_cli(worker_argv(list(args)))
        if code:
            raise CommandError(f"the worker exited with {code}", returncode=code)
