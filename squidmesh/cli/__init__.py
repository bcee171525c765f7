"""The ``squidmesh`` command line (``squidmesh.cli:main``, or ``python -m squidmesh.cli``).

Usage and exit codes: see :mod:`squidmesh.cli.parser`, whose docstring ``--help`` prints.

- ``app``: loading the ``--app`` Mesh, the ``Context`` commands receive, exit codes;
- ``parser``: the argument parser;
- ``render``: JSON encoding, tables and run views (``squidmesh.demo`` prints with them);
- ``runs``: the ``runs ...`` commands; ``tools``: every other command;
- ``dispatch``: ``main``, which runs a command and reports its errors.
"""

from __future__ import annotations

from squidmesh.cli.app import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from squidmesh.cli.dispatch import main

# Imported from here by squidmesh.demo (re-exported, not part of ``__all__``).
from squidmesh.cli.render import explanation_text as explanation_text
from squidmesh.cli.render import run_facts as run_facts
from squidmesh.cli.render import step_runs_table as step_runs_table

__all__ = ["EXIT_FAILED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "main"]
