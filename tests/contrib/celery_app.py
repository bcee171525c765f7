"""The Celery app of the contrib tests, run by a real worker process::

    celery -A tests.contrib.celery_app worker -Q <queue>

The test sets the environment: the broker, the queue and squidmesh's database. The
worker finds the Mesh through the ``squidmesh_mesh`` conf key (``mesh_loader``).
"""

from __future__ import annotations

import os

import celery

import squidmesh as sm
from squidmesh.contrib.celery import CeleryExecutor
from tests.contrib import CELERY_BROKER_ENV, DATABASE_ENV, QUEUE_ENV, VISIBILITY_ENV, flows

QUEUE = os.environ.get(QUEUE_ENV, "squidmesh")

app = celery.Celery("squidmesh_contrib_tests", broker=os.environ[CELERY_BROKER_ENV])
app.conf.update(broker_connection_retry_on_startup=True, task_default_queue=QUEUE)
if os.environ.get(VISIBILITY_ENV):
    # The host's own setting (CeleryExecutor keeps it): the kill test's is seconds.
    app.conf.broker_transport_options = {
        "visibility_timeout": int(os.environ[VISIBILITY_ENV]),
        "unacked_restore_interval": 1,
    }

mesh = sm.Mesh(
    os.environ[DATABASE_ENV],
    workflows=[flows.parcel, flows.lingering],
    executor=CeleryExecutor(app, mesh_loader=f"{__name__}:mesh", queue=QUEUE),
)
