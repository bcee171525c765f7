"""Run squidmesh's jobs on a host's Celery deployment.

::

    app = celery.Celery("shop", broker="redis://localhost:6379/0")
    mesh = sm.Mesh(DATABASE_URL, workflows=[...], executor=CeleryExecutor(app))

``CeleryExecutor(app)`` registers the task ``squidmesh.perform`` on the host's app. Jobs
go through the outbox (``squidmesh.contrib.outbox``): stored in squidmesh's jobs table in
the transaction of the change, then published with ``send_task`` (delayed jobs with
``eta``) and deleted once the broker accepted them. Start ``executor.start_relay()`` in
one long-lived process so jobs a broker outage left behind always go out.

**How the worker finds the Mesh.** The task performs each job on the Mesh of its app in
the worker process, looked up in this order:

1. the Mesh given to ``set_mesh(app, mesh)`` (call it in a ``worker_process_init``
   handler to build the Mesh in each prefork child),
2. the Mesh the app's conf names, ``app.conf.squidmesh_mesh = "myapp.jobs:mesh"``
   (``CeleryExecutor(app, mesh_loader="myapp.jobs:mesh")`` sets it), imported on the
   first job,
3. the last Mesh built in this process with a ``CeleryExecutor`` on this app: enough
   when the module that builds the Mesh is the app's module (``celery -A myapp.jobs``)
   or one of its ``include=``/``imports``.

**Retries and acknowledgement.** Step retries belong to squidmesh (a failed step never
raises out of ``perform``). The task acknowledges late and rejects on a lost worker, so
a job whose worker died is delivered again (squidmesh records that attempt as lost). A
``perform`` that raised (the database unreachable) is sent again after a short delay,
as a database worker's job comes back when its lease expires.
"""

from __future__ import annotations

from typing import Any

from squidmesh.contrib.outbox import MeshRegistry, Outbox, due_at, payload
from squidmesh.core.records import Job
from squidmesh.mesh import Mesh
from squidmesh.runtime.executors import BoundMesh

__all__ = [
    "CONF_KEY",
    "REDELIVER_AFTER",
    "TASK_NAME",
    "CeleryExecutor",
    "mesh_for",
    "register_task",
    "set_mesh",
]

TASK_NAME = "squidmesh.perform"
#: the Celery conf key naming the Mesh as "module:attribute"
CONF_KEY = "squidmesh_mesh"
#: seconds before Redis or SQS hand an unacknowledged message to another worker, unless
#: the host configured ``broker_transport_options["visibility_timeout"]`` itself
REDELIVER_AFTER = 300

_meshes = MeshRegistry()


class CeleryExecutor(Outbox):
    """Hands jobs to ``app``'s broker, on ``queue``, through the outbox."""

    def __init__(self, app: Any, mesh_loader: str | None = None, queue: str = "squidmesh") -> None:
        super().__init__(f"celery:{queue}")
        self.app = app
        self.queue = queue
        if mesh_loader is not None:
            app.conf[CONF_KEY] = mesh_loader
        # With Redis or SQS, a message whose worker was killed comes back only after the
        # visibility timeout (an hour by default): a dead worker's runs would wait that
        # long. squidmesh makes early redeliveries safe (a step job arriving while its
        # attempt runs in a live process is only looked at again later), so a short one
        # is harmless. Kept if the host set its own; RabbitMQ ignores it.
        options = dict(app.conf.broker_transport_options or {})
        options.setdefault("visibility_timeout", REDELIVER_AFTER)
        # Kombu's Redis transport looks for such messages every interval x throttle
        # seconds (10 x 10 by default): look every 10 s instead (one cheap index read).
        options.setdefault("unacked_restore_throttle", 1)
        app.conf.broker_transport_options = options
        register_task(app)

    def bind(self, mesh: BoundMesh) -> None:
        super().bind(mesh)
        _meshes.bind(self.app, mesh)

    def publish(self, job: Job) -> None:
        # retry=False: a broker that is down fails the relay at once (the job waits in the
        # outbox) instead of blocking in Celery's publish retries.
        self.app.send_task(
            TASK_NAME, args=[payload(job)], queue=self.queue, eta=due_at(job), retry=False
        )


def register_task(app: Any) -> Any:
    """Register ``squidmesh.perform`` on ``app`` (once; later calls return it)."""
    return app.task(
        name=TASK_NAME,
        bind=True,
        shared=False,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        max_retries=None,
    )(_perform)


def _perform(task: Any, job: dict[str, Any]) -> None:
    try:
        mesh_for(task.app).perform(job)
    except Exception as exc:
        raise task.retry(exc=exc, countdown=min(2**task.request.retries, 60)) from exc


def set_mesh(app: Any, mesh: Mesh) -> None:
    """Perform the jobs of ``app``'s task on ``mesh`` in this process."""
    _meshes.set(app, mesh)


def mesh_for(app: Any) -> Mesh:
    """The Mesh performing ``app``'s jobs in this process (see the module docstring)."""
    return _meshes.find(
        app,
        loader=app.conf.get(CONF_KEY),
        hint=f'set app.conf.{CONF_KEY} = "module:mesh", call squidmesh.contrib.celery.'
        "set_mesh(app, mesh), or import the module that builds Mesh(executor=CeleryExecutor(app))",
    )
