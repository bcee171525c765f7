"""The Django app: ``INSTALLED_APPS = [..., "squidmesh.contrib.django"]``."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks

__all__ = ["SquidmeshConfig"]


class SquidmeshConfig(AppConfig):
    name = "squidmesh.contrib.django"
    label = "squidmesh"
    verbose_name = "squidmesh"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Nothing touches the database here (Django advises against it): the Mesh is
        # built by the first get_mesh(). The checks run with `manage.py check`, migrate,
        # runserver and the test runner.
        checks.register(check_settings, "squidmesh")


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``SQUIDMESH`` is valid, the database is one squidmesh supports, and on SQLite the
    transactions that may write take the write lock at once (squidmesh.W001)."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    from squidmesh.contrib.django import conf
    from squidmesh.contrib.django.store import database_url
    from squidmesh.errors import StorageError

    try:
        config = conf.read()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="squidmesh.E001")]
    database = settings.DATABASES[config.database]
    try:
        url = database_url(database)
    except StorageError as exc:
        return [checks.Error(str(exc), id="squidmesh.E002")]
    found: list[checks.CheckMessage] = []
    options = database.get("OPTIONS") or {}
    if url.get_backend_name() == "sqlite" and options.get("transaction_mode") != "IMMEDIATE":
        found.append(
            checks.Warning(
                f"DATABASES[{config.database!r}] is SQLite without "
                "OPTIONS['transaction_mode'] = 'IMMEDIATE'",
                hint="squidmesh's worker and your requests write concurrently: with deferred "
                "transactions SQLite answers 'database is locked' instead of waiting. Set "
                '"OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 30}.',
                id="squidmesh.W001",
            )
        )
    return found
