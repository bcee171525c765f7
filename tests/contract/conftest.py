"""Fixtures of the ``Store`` contract suite: one store of each kind per test.

``store`` is parametrized over memory, SQLite (a file in ``tmp_path``) and PostgreSQL (a
fresh database cloned from a session-wide template that is already migrated, so a test
costs one ``CREATE DATABASE ... TEMPLATE``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from squidmesh.storage.base import Store
from squidmesh.storage.memory import InMemoryStore
from squidmesh.storage.sql import SqlStore, create_engine
from tests.support import postgres

STORE_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]
SQL_KINDS = STORE_KINDS[1:]


def pg_engine(url: str) -> sa.Engine:
    """A SQLAlchemy engine on a (libpq) test database URL."""
    return create_engine(postgres.sqlalchemy_url(url))


def _migrate_template(url: str) -> None:
    store = SqlStore(pg_engine(url), owns_engine=True)
    try:
        store.migrate()
    finally:
        store.close()


@pytest.fixture(scope="session")
def pg_template_url(pg_server_url: str) -> str:
    """A migrated PostgreSQL database (default schema) to clone per test."""
    return postgres.template_database(pg_server_url, "store_contract", _migrate_template)


@pytest.fixture
def pg_migrated_url(pg_template_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, dropped after the test."""
    url = postgres.clone_database(pg_template_url, request.node.name)
    try:
        yield url
    finally:
        postgres.drop_database(url)


def open_kind(
    kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Store:
    if kind == "memory":
        return InMemoryStore()
    if kind == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "squidmesh.db"
        store = SqlStore(create_engine(f"sqlite:///{path}"), owns_engine=True)
        store.migrate()
        return store
    url = request.getfixturevalue("pg_migrated_url")
    return SqlStore(pg_engine(url), owns_engine=True)


@pytest.fixture(params=STORE_KINDS)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """A migrated, empty store of each kind."""
    opened = open_kind(request.param, request, tmp_path_factory)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(params=SQL_KINDS)
def sql_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SqlStore]:
    """A migrated, empty SQLite or PostgreSQL store."""
    opened = open_kind(request.param, request, tmp_path_factory)
    assert isinstance(opened, SqlStore)
    try:
        yield opened
    finally:
        opened.close()
