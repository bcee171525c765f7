"""The Procrastinate app of the contrib tests, run by a real worker process::

    procrastinate --app=tests.contrib.procrastinate_app.app worker -q <queue>

The test sets the environment: the queue and the database (Procrastinate's tables and
squidmesh's share it). The worker finds the Mesh as the one built here with a
``ProcrastinateExecutor`` on ``app``.
"""

from __future__ import annotations

import os

import procrastinate

import squidmesh as sm
from squidmesh.contrib.procrastinate import ProcrastinateExecutor
from tests.contrib import DATABASE_ENV, QUEUE_ENV, flows

QUEUE = os.environ.get(QUEUE_ENV, "squidmesh")
DATABASE = os.environ[DATABASE_ENV]

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DATABASE))

mesh = sm.Mesh(
    DATABASE,
    workflows=[flows.parcel],
    executor=ProcrastinateExecutor(app, queue=QUEUE),
)
