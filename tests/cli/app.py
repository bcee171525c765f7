"""``--app tests.cli.app:mesh``: the CLI tests' Mesh, on the database of --database-url.

Version 1 of the application: the Ring Errand as in examples/ring_errand.py, and the
workflows of tests/cli/workflows.py. ``mesh`` is a factory: the CLI calls it with the
``--database-url`` (or ``SQUIDMESH_DATABASE_URL``) value.
"""

from __future__ import annotations

import squidmesh as sm
from tests.cli.workflows import WORKFLOWS


def mesh(url: str | None = None) -> sm.Mesh:
    return sm.Mesh(
        url or "sqlite:///squidmesh.db", workflows=WORKFLOWS, executor=sm.InlineExecutor()
    )
