"""A small FastAPI host application running squidmesh workflows on PostgreSQL, async.

    from examples.fastapi_app import create_app
    app = create_app("postgresql://app@localhost/app", users={"ana": "secret"})

or, with the URL in ``SQUIDMESH_DATABASE_URL`` and the users in
``SQUIDMESH_EXAMPLE_USERS`` (``ana:secret,bo:other``)::

    uvicorn --factory examples.fastapi_app:app_from_env

See ``examples/fastapi_app/README.md`` and ``examples/fastapi_app/app.py``.
"""

from __future__ import annotations

from examples.fastapi_app.app import WORKFLOWS, app_from_env, build_mesh, create_app, public

__all__ = ["WORKFLOWS", "app_from_env", "build_mesh", "create_app", "public"]
