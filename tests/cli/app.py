"""``--app tests.cli.app:mesh``: the CLI tests' Mesh, on the database in SQUIDMESH_TEST_URL.

Version 1 of the application: the Ring Errand as in examples/ring_errand.py.
"""

from __future__ import annotations

import os

import squidmesh as sm
from tests.cli.workflows import WORKFLOWS

mesh = sm.Mesh(os.environ["SQUIDMESH_TEST_URL"], workflows=WORKFLOWS, executor=sm.InlineExecutor())
