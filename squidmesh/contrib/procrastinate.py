"""Run squidmesh's jobs on a host's Procrastinate deployment.

::

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=...))
    mesh = sm.Mesh(DATABASE_URL, workflows=[...], executor=ProcrastinateExecutor(app))
    app.open()  # in every process that starts or advances runs: the relay defers jobs

``ProcrastinateExecutor(app)`` defines the task ``squidmesh.perform`` on the host's app.
Jobs go through the outbox (``squidmesh.contrib.outbox``): stored in squidmesh's jobs
table in the transaction of the change, then deferred with Procrastinate's sync API
(delayed jobs with ``schedule_at``) and deleted once Procrastinate stored them. Start
``executor.start_relay()`` in one long-lived process so jobs left behind by an outage
always go out.

**How the worker finds the Mesh**: the Mesh given to ``set_mesh(app, mesh)``, else the
one ``ProcrastinateExecutor(app, mesh_loader="myapp.jobs:mesh")`` names (imported on the
first job), else the last Mesh built in the worker process with a
``ProcrastinateExecutor`` on this app. The worker must import the module that builds it
(the app's module, or one listed in ``App(import_paths=[...])``): that also defines the
task there.

**Retries.** Step retries belong to squidmesh (a failed step never raises out of
``perform``). A ``perform`` that raised (the database unreachable) is retried every 5 s,
as a database worker's job comes back when its lease expires. A job whose worker died
stays ``doing`` until Procrastinate retries stalled jobs (see its docs); squidmesh then
records that attempt as lost and runs the step again.
"""

from __future__ import annotations

from typing import Any

import procrastinate

from squidmesh.contrib.outbox import MeshRegistry, Outbox, due_at, payload
from squidmesh.core.records import Job
from squidmesh.mesh import Mesh
from squidmesh.runtime.executors import BoundMesh

__all__ = ["TASK_NAME", "ProcrastinateExecutor", "mesh_for", "register_task", "set_mesh"]

TASK_NAME = "squidmesh.perform"

_meshes = MeshRegistry()


class ProcrastinateExecutor(Outbox):
    """Defers jobs as ``squidmesh.perform`` jobs on ``queue``, through the outbox."""

    def __init__(
        self, app: procrastinate.App, queue: str = "squidmesh", mesh_loader: str | None = None
    ) -> None:
        super().__init__(f"procrastinate:{queue}")
        self.app = app
        self.queue = queue
        if mesh_loader is not None:
            _meshes.set_loader(app, mesh_loader)
        self.task = register_task(app, queue)

    def bind(self, mesh: BoundMesh) -> None:
        super().bind(mesh)
        _meshes.bind(self.app, mesh)

    def publish(self, job: Job) -> None:
        deferrer = self.task.configure(queue=self.queue, schedule_at=due_at(job))
        deferrer.defer(job=payload(job))


def register_task(app: procrastinate.App, queue: str = "squidmesh") -> Any:
    """Define ``squidmesh.perform`` on ``app`` (once; later calls return it)."""
    existing = app.tasks.get(TASK_NAME)
    if existing is not None:
        return existing

    def perform(job: dict[str, Any]) -> None:
        mesh_for(app).perform(job)

    return app.task(name=TASK_NAME, queue=queue, retry=procrastinate.RetryStrategy(wait=5))(perform)


def set_mesh(app: procrastinate.App, mesh: Mesh) -> None:
    """Perform the jobs of ``app``'s task on ``mesh`` in this process."""
    _meshes.set(app, mesh)


def mesh_for(app: procrastinate.App) -> Mesh:
    """The Mesh performing ``app``'s jobs in this process (see the module docstring)."""
    return _meshes.find(
        app,
        hint="call squidmesh.contrib.procrastinate.set_mesh(app, mesh), pass mesh_loader="
        '"module:mesh", or import the module that builds the Mesh',
    )
