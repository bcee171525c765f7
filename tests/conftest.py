"""Shared fixtures.

PostgreSQL fixtures resolve the server lazily (only when a test asks for one) and never
skip: see ``tests/support/postgres.py``.  ``tests/support/skips.py`` turns every skip into
a failure when ``SQUIDMESH_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import postgres

pytest_plugins = ["pytester", "tests.support.skips"]

_POSTGRES_FIXTURES = frozenset({"pg_server_url", "pg_database_url", "django_project"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Anything using a PostgreSQL fixture is `postgres`-marked, so `-m "not postgres"` works.
    for item in items:
        if _POSTGRES_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """libpq URL of a reachable PostgreSQL server (maintenance database)."""
    try:
        url, cluster = postgres.start_server()
    except postgres.PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield url
    finally:
        postgres.drop_all_created(url)
        if cluster is not None:
            cluster.stop()


@pytest.fixture
def pg_database_url(pg_server_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """libpq URL of a fresh, empty database, dropped after the test."""
    url = postgres.create_database(pg_server_url, request.node.name)
    try:
        yield url
    finally:
        postgres.drop_database(url)


@pytest.fixture(scope="session")
def django_project(pg_server_url: str) -> Iterator[str]:
    """The example Django project, set up in this process on a fresh, migrated
    PostgreSQL database (one per session: Django's settings are global); its libpq URL."""
    pytest.importorskip("django")
    from tests.support import django_project

    url = postgres.create_database(pg_server_url, "django")
    try:
        django_project.configure(url)
        yield url
    finally:
        from django.db import connections

        from squidmesh.contrib.django import close_mesh

        close_mesh()
        connections.close_all()
        postgres.drop_database(url)
