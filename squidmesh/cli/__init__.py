"""The ``squidmesh`` command line (``squidmesh.cli:main``, or ``python -m squidmesh.cli``).

Usage and exit codes: ``squidmesh --help`` (built in :mod:`squidmesh.cli.parser`).

- ``app``: loading the ``--app`` Mesh, the ``Context`` commands receive, run-id prefixes;
- ``database``: which database a command works on; refusing to create one by accident;
- ``errors``: exit codes, ``CliError`` and the CLI's advice for API errors;
- ``parser``: the argument parser; ``complete``: shell completion (argcomplete);
- ``logs``: logging for ``worker``, ``drain`` and ``ui`` (``--log-level``, ``--log-format``);
- ``render``: JSON encoding, tables and run views (``squidmesh.demo`` prints with them);
- ``style``: colour and terminal width;
- ``runs``: the ``runs ...`` commands; ``tools``: every other command;
- ``dispatch``: ``main``, which runs a command and reports its errors.
"""

from __future__ import annotations

from squidmesh.cli.dispatch import main
from squidmesh.cli.errors import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_REFUSED, EXIT_USAGE

# Imported from here by squidmesh.demo (re-exported, not part of ``__all__``).
from squidmesh.cli.render import explanation_text as explanation_text
from squidmesh.cli.render import run_facts as run_facts
from squidmesh.cli.render import step_runs_table as step_runs_table

__all__ = ["EXIT_FAILED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "main"]
