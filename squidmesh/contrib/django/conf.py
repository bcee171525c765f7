"""The ``SQUIDMESH = {...}`` setting: every key optional, ``SQUIDMESH = {}`` works.

- ``DATABASE`` (``"default"``): the alias in ``DATABASES`` squidmesh keeps its tables in;
- ``SCHEMA`` (``"squidmesh"``): the PostgreSQL schema of those tables (ignored on SQLite);
- ``WORKFLOW_MODULES`` (``["workflows"]``): the module of each installed app imported to
  discover workflows;
- ``WORKFLOWS`` (``[]``): more workflows, as ``"package.module.name"`` paths;
- ``MESH_OPTIONS`` (``{}``): more keyword arguments for ``sm.Mesh(...)``
  (``async_threads``, ``max_value_bytes``, ``executor``, ...);
- ``WORKER`` (``{}``): default options of ``manage.py squidmesh_worker``
  (``concurrency``, ``poll_interval``, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["KEYS", "Config", "read"]

KEYS = ("DATABASE", "SCHEMA", "WORKFLOW_MODULES", "WORKFLOWS", "MESH_OPTIONS", "WORKER")


@dataclasses.dataclass(frozen=True)
class Config:
    database: str = "default"
    schema: str = "squidmesh"
    workflow_modules: tuple[str, ...] = ("workflows",)
    workflows: tuple[str, ...] = ()
    mesh_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    worker: dict[str, Any] = dataclasses.field(default_factory=dict)


def read() -> Config:
    """``settings.SQUIDMESH`` checked and with its defaults; ``ImproperlyConfigured``
    names the key that is wrong."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    raw = getattr(settings, "SQUIDMESH", {})
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(f"SQUIDMESH must be a dict, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ImproperlyConfigured(
            f"SQUIDMESH has unknown keys {', '.join(map(repr, unknown))}; "
            f"the keys are {', '.join(KEYS)}"
        )

    def text(key: str, default: str) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value:
            raise ImproperlyConfigured(f"SQUIDMESH[{key!r}] must be a non-empty string")
        return value

    def texts(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = raw.get(key, default)
        if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
            raise ImproperlyConfigured(f"SQUIDMESH[{key!r}] must be a list of strings")
        return tuple(value)

    def options(key: str) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise ImproperlyConfigured(f"SQUIDMESH[{key!r}] must be a dict of keyword arguments")
        return dict(value)

    config = Config(
        database=text("DATABASE", "default"),
        schema=text("SCHEMA", "squidmesh"),
        workflow_modules=texts("WORKFLOW_MODULES", ("workflows",)),
        workflows=texts("WORKFLOWS", ()),
        mesh_options=options("MESH_OPTIONS"),
        worker=options("WORKER"),
    )
    if config.database not in settings.DATABASES:
        raise ImproperlyConfigured(
            f"SQUIDMESH['DATABASE'] is {config.database!r}, which DATABASES does not define"
        )
    for reserved in ("store", "url", "engine", "schema", "workflows", "auto_migrate"):
        if reserved in config.mesh_options:
            raise ImproperlyConfigured(
                f"SQUIDMESH['MESH_OPTIONS'] may not set {reserved!r}: the Django integration "
                "sets it from DATABASES and the other SQUIDMESH keys"
            )
    return config
