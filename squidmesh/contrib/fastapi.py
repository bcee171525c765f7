"""A FastAPI (or Starlette) lifespan that runs a ``Mesh`` for the application's lifetime.

```
mesh = sm.Mesh(DATABASE_URL, workflows=[...])
app = FastAPI(lifespan=lifespan(mesh, migrate=True))
```

At startup it migrates (when asked) and starts a worker thread (``worker=True``); at
shutdown it closes the Mesh, which stops the worker gracefully (the attempts under way
finish and are recorded) and releases the connections. Every call goes through the
Mesh's ``_async`` twins, so a slow database delays the startup, never the event loop of
an application already serving.

The object ``lifespan(...)`` returns is both what FastAPI's ``lifespan=`` wants (a
callable taking the app and returning an async context manager) and an async context
manager itself, so a host that has a lifespan of its own nests it:

```
@asynccontextmanager
async def app_lifespan(app):
    async with lifespan(mesh), other_resource():
        yield
```

Nothing here imports FastAPI or Starlette: the protocol is plain ``async with``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from squidmesh.mesh import Mesh

__all__ = ["MeshLifespan", "lifespan"]

log = logging.getLogger("squidmesh")


def lifespan(
    mesh: Mesh,
    *,
    worker: bool = True,
    migrate: bool = False,
    worker_options: Mapping[str, Any] | None = None,
) -> MeshLifespan:
    """The lifespan of an app that runs ``mesh``: ``FastAPI(lifespan=lifespan(mesh))``.

    :param mesh: the application's Mesh; it is closed when the app shuts down.
    :param worker: start a worker thread in the app's process (``mesh.worker()``). Turn
        it off when workers run elsewhere (``squidmesh worker`` processes).
    :param migrate: run ``mesh.migrate()`` at startup (idempotent, safe with several
        replicas starting at once); larger deployments run ``squidmesh migrate`` as a
        deploy step instead.
    :param worker_options: keyword arguments for ``mesh.worker()`` (``concurrency``,
        ``poll_interval``, ...).
    """
    return MeshLifespan(mesh, worker=worker, migrate=migrate, worker_options=worker_options)


class MeshLifespan(contextlib.AbstractAsyncContextManager[None]):
    """See :func:`lifespan`. Usable for one lifetime of one app (the Mesh is closed at
    its end)."""

    def __init__(
        self,
        mesh: Mesh,
        *,
        worker: bool = True,
        migrate: bool = False,
        worker_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.mesh = mesh
        self.worker = worker
        self.migrate = migrate
        self.worker_options = dict(worker_options or {})

    def __call__(self, app: object) -> MeshLifespan:
        """What FastAPI and Starlette call with the app at startup."""
        return self

    async def __aenter__(self) -> None:
        try:
            if self.migrate:
                applied = await self.mesh.migrate_async()
                if applied:
                    log.info("squidmesh: applied migrations %s", ", ".join(applied))
            if self.worker:
                await self.mesh.worker_async(**self.worker_options)
        except BaseException:
            # The app will not start: do not leave a worker thread or connections behind.
            await self.mesh.close_async()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.mesh.close_async()
