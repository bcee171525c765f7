"""squidmesh in a Django project (``pip install "squidmesh[django]"``).

Add ``"squidmesh.contrib.django"`` to ``INSTALLED_APPS`` (its label is ``squidmesh``) and
optionally a ``SQUIDMESH = {...}`` setting (every key optional, see ``conf.py``). Then:

- ``manage.py migrate`` installs squidmesh's tables in the default database (one Django
  migration per squidmesh schema version);
- workflows are discovered from each installed app's ``workflows`` module;
- ``get_mesh()`` is the project's ``sm.Mesh``, on Django's own database connection, so a
  ``transaction=True`` step's ORM writes commit or roll back with its completion;
- ``manage.py squidmesh_worker`` runs a worker, ``manage.py squidmesh ...`` is the
  ``squidmesh`` command line on that Mesh;
- the admin has pages for runs: filters, explanation, history, approve/reject/cancel
  with the signed-in admin as the actor.

docs/host_app_integration.md#django walks through it with examples/django_project.
"""

from __future__ import annotations

from squidmesh.contrib.django.meshes import build_mesh, close_mesh, discover_workflows, get_mesh

__all__ = ["build_mesh", "close_mesh", "discover_workflows", "get_mesh"]
