"""A small FastAPI host application running squidmesh workflows on PostgreSQL.

    from examples.fastapi_app import create_app
    app = create_app("postgresql://app@localhost/app")

or, with the URL in ``SQUIDMESH_DATABASE_URL``::

    uvicorn --factory examples.fastapi_app:app_from_env

See ``examples/fastapi_app/app.py``.
"""

from __future__ import annotations

from examples.fastapi_app.app import WORKFLOWS, app_from_env, build_mesh, create_app

__all__ = ["WORKFLOWS", "app_from_env", "build_mesh", "create_app"]
