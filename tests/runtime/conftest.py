from __future__ import annotations

# Fixtures for the durable-runtime tests: one ``mesh_factory`` across the three stores.
#
# ``mesh_factory(workflows, executor=...)`` builds a ``sm.Mesh`` on the test's database;
# calling it again builds a *new* Mesh (new store object, empty interpreter cache) on the
# SAME database, which is how the tests simulate a process restart. Every Mesh of a test
# shares one controllable ``VirtualClock`` unless told otherwise.
#
# ``support.snapshot(store)`` reads the whole database state through the Store port (runs
# with history, attempts, audit events, buffered events and queued jobs) for before/after
# comparisons: "a failed call changes nothing".
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime import flows
from tests.runtime.support import ALL_STORES, PG_ONLY, SQL_STORES, MeshFactory
from tests.support import postgres


@pytest.fixture(autouse=True)
def _reset_flows() -> Iterator[None]:
    flows.reset()
    yield
    flows.reset()


@pytest.fixture(scope="session")
def pg_template(pg_server_url: str) -> str:
    """A migrated database, created once per session and cloned by every postgres test."""

    def setup(url: str) -> None:
        from squidmesh.storage import open_store

        store = open_store(postgres.sqlalchemy_url(url))
        try:
            store.migrate()
        finally:
            store.close()

    return postgres.template_database(pg_server_url, "runtime", setup)


def _factory(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MeshFactory]:
    cloned: str | None = None
    if kind == "memory":
        url = None
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'squidmesh.db'}"
    else:
        template = request.getfixturevalue("pg_template")
        cloned = postgres.clone_database(template, request.node.name)
        url = postgres.sqlalchemy_url(cloned)
    factory = MeshFactory(kind, url)
    try:
        yield factory
    finally:
        factory.close()
        if cloned is not None:
            postgres.drop_database(cloned)


@pytest.fixture(params=ALL_STORES)
def mesh_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MeshFactory]:
    """Meshes on a fresh memory, SQLite or PostgreSQL database."""
    yield from _factory(request.param, request, tmp_path)


@pytest.fixture(params=SQL_STORES)
def sql_mesh_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MeshFactory]:
    """Meshes on a fresh SQLite or PostgreSQL database (durable, with a connection)."""
    yield from _factory(request.param, request, tmp_path)


@pytest.fixture(params=PG_ONLY)
def pg_mesh_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MeshFactory]:
    """Meshes on a fresh PostgreSQL database."""
    yield from _factory(request.param, request, tmp_path)
