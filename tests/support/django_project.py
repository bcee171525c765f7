"""The example Django project (examples/django_project) in the test process.

Django's settings are global to a process, so it is configured once per session, on a
fresh PostgreSQL database made by tests/support/postgres.py, with the test app
``tests.contrib.djangoapp`` added, and migrated with ``manage.py migrate``'s command.
``env(url)`` is the environment a ``manage.py`` subprocess (a worker) needs to run on
the same database.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "examples" / "django_project"
MANAGE = PROJECT / "manage.py"
SETTINGS = "examples.django_project.project.settings"
EXTRA_APPS = "tests.contrib.djangoapp"

_configured: str | None = None


def env(database: str) -> dict[str, str]:
    """The environment of ``manage.py`` on ``database`` (a libpq URL or sqlite:///...)."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "SQUIDMESH_EXAMPLE_DATABASE": database,
        "SQUIDMESH_EXAMPLE_EXTRA_APPS": EXTRA_APPS,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


def manage(*args: str) -> list[str]:
    return [sys.executable, str(MANAGE), *args]


def configure(database: str) -> None:
    """Set Django up in this process on ``database`` and migrate it (once per session)."""
    global _configured
    if _configured is not None:
        if _configured != database:
            raise RuntimeError("Django is already configured on another database")
        return
    for key, value in env(database).items():
        if key != "PYTHONPATH":
            os.environ[key] = value
    import django
    from django.core.management import call_command

    # The settings module reads the environment when it is imported: another test may
    # have imported it already (the example walkers of tests/analysis do).
    sys.modules.pop(SETTINGS, None)
    django.setup()
    call_command("migrate", verbosity=0)
    _configured = database
