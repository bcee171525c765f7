"""The Mesh of a Django project: built from Django's settings on first use, one per
process (like a Celery app), with the workflows of every installed app."""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING

from squidmesh.core.definition import WorkflowDefinition
from squidmesh.errors import DefinitionError

if TYPE_CHECKING:
    from squidmesh.mesh import Mesh

__all__ = ["build_mesh", "close_mesh", "discover_workflows", "get_mesh"]

_lock = threading.Lock()
_mesh: Mesh | None = None


def get_mesh() -> Mesh:
    """The project's Mesh (built on the first call, then shared by every thread)."""
    global _mesh
    with _lock:
        if _mesh is None:
            _mesh = build_mesh()
        return _mesh


def close_mesh() -> None:
    """Close the project's Mesh (its workers stop); the next ``get_mesh()`` builds anew."""
    global _mesh
    with _lock:
        mesh, _mesh = _mesh, None
    if mesh is not None:
        mesh.close()


def build_mesh() -> Mesh:
    """A new Mesh on Django's database with the discovered workflows (the caller closes
    it). ``get_mesh()`` is the shared one; this is for tests and scripts."""
    from squidmesh.contrib.django import conf
    from squidmesh.contrib.django.store import DjangoStore
    from squidmesh.mesh import Mesh

    config = conf.read()
    store = DjangoStore(alias=config.database, schema=config.schema)
    try:
        return Mesh(
            store=store,
            workflows=discover_workflows(),
            auto_migrate=False,  # `manage.py migrate` owns the schema
            **config.mesh_options,
        )
    except BaseException:
        store.close()
        raise


def discover_workflows() -> list[WorkflowDefinition]:
    """Every ``@sm.workflow`` defined or imported at the top level of each installed
    app's ``workflows`` module (``SQUIDMESH["WORKFLOW_MODULES"]``), in ``INSTALLED_APPS``
    order, then those named by ``SQUIDMESH["WORKFLOWS"]``. A module that is missing is
    skipped; one that fails to import raises, as a broken ``models`` module would."""
    from django.apps import apps
    from django.utils.module_loading import import_string, module_has_submodule

    from squidmesh.contrib.django import conf

    config = conf.read()
    found: dict[str, WorkflowDefinition] = {}

    def add(workflow: WorkflowDefinition, where: str) -> None:
        existing = found.get(workflow.name)
        if existing is not None and existing is not workflow:
            raise DefinitionError(
                f"two different workflows are named {workflow.name!r} (the second in {where})"
            )
        found[workflow.name] = workflow

    for app in apps.get_app_configs():
        for name in config.workflow_modules:
            if not module_has_submodule(app.module, name):
                continue
            module = importlib.import_module(f"{app.name}.{name}")
            for value in vars(module).values():
                if isinstance(value, WorkflowDefinition):
                    add(value, module.__name__)
    for path in config.workflows:
        value = import_string(path)
        if not isinstance(value, WorkflowDefinition):
            raise DefinitionError(
                f"SQUIDMESH['WORKFLOWS']: {path} is not a workflow (@sm.workflow), "
                f"it is a {type(value).__name__}"
            )
        add(value, path)
    return list(found.values())
