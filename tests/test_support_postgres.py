"""Tests of the test infrastructure itself: databases, templates, skip policy."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from tests.support import postgres

REPO_ROOT = Path(__file__).resolve().parents[1]


def _database_exists(server_url: str, name: str) -> bool:
    with psycopg.connect(server_url, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def _create_items_table(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id integer PRIMARY KEY, label text NOT NULL)")
        conn.execute("INSERT INTO items VALUES (1, 'from-template')")


def _labels(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT label FROM items ORDER BY id").fetchall()]


@pytest.mark.postgres
def test_fresh_database_is_usable_and_gone_after_drop(pg_server_url: str) -> None:
    url = postgres.create_database(pg_server_url, "fresh")
    name = postgres.database_name(url)
    try:
        assert name.startswith("sqm_test_fresh_")
        assert name in postgres.created_databases()
        assert _database_exists(pg_server_url, name)
        with psycopg.connect(url) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchone()
            assert tables == (0,)
            conn.execute("CREATE TABLE t (id serial PRIMARY KEY, v text)")
            conn.execute("INSERT INTO t (v) VALUES ('a'), ('b')")
            conn.commit()
            assert conn.execute("SELECT v FROM t ORDER BY id").fetchall() == [("a",), ("b",)]
        # A connection left open does not prevent the drop (WITH (FORCE)).
        lingering = psycopg.connect(url)
        try:
            postgres.drop_database(url)
        finally:
            with contextlib.suppress(psycopg.Error):
                lingering.close()
    finally:
        if name in postgres.created_databases():
            postgres.drop_database(url)
    assert not _database_exists(pg_server_url, name)
    assert name not in postgres.created_databases()


@pytest.mark.postgres
def test_pg_database_url_fixture_is_sqlalchemy_usable(pg_database_url: str) -> None:
    sa_url = postgres.sqlalchemy_url(pg_database_url)
    assert sa_url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(sa_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x int)"))
            conn.execute(sa.text("INSERT INTO t VALUES (42)"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT x FROM t")).scalar_one() == 42
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_template_clones_are_populated_and_independent(pg_server_url: str) -> None:
    calls: list[str] = []

    def setup(url: str) -> None:
        calls.append(url)
        _create_items_table(url)

    template = postgres.template_database(pg_server_url, "support_selftest", setup)
    assert postgres.template_database(pg_server_url, "support_selftest", setup) == template
    assert calls == [template]  # set up once per session

    first = postgres.clone_database(template, "clone_a")
    second = postgres.clone_database(template, "clone_b")
    try:
        assert len({template, first, second}) == 3
        assert _labels(first) == ["from-template"]
        assert _labels(second) == ["from-template"]
        with psycopg.connect(first, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (2, 'only-in-first')")
        with psycopg.connect(second, autocommit=True) as conn:
            conn.execute("DELETE FROM items")
        assert _labels(first) == ["from-template", "only-in-first"]
        assert _labels(second) == []
        assert _labels(template) == ["from-template"]
    finally:
        postgres.drop_database(first)
        postgres.drop_database(second)
    assert not _database_exists(pg_server_url, postgres.database_name(first))
    assert not _database_exists(pg_server_url, postgres.database_name(second))
    # The template itself is dropped at the end of the session by `pg_server_url`.


@pytest.mark.postgres
def test_refuses_to_drop_foreign_databases(pg_server_url: str) -> None:
    with pytest.raises(ValueError, match="not created by the tests"):
        postgres.drop_database(postgres.with_database(pg_server_url, "postgres"))
    with pytest.raises(ValueError, match="not a template created by the tests"):
        postgres.clone_database(postgres.with_database(pg_server_url, "template1"))
    assert _database_exists(pg_server_url, "postgres")


def test_url_helpers() -> None:
    url = "postgresql://u:secret@db.example:5433/app?sslmode=disable"
    assert postgres.sqlalchemy_url(url) == (
        "postgresql+psycopg://u:secret@db.example:5433/app?sslmode=disable"
    )
    assert postgres.libpq_url(postgres.sqlalchemy_url(url)) == url
    assert postgres.with_database(url, "other") == (
        "postgresql://u:secret@db.example:5433/other?sslmode=disable"
    )
    assert postgres.database_name(url) == "app"
    assert "secret" not in postgres.redact(url)
    with pytest.raises(ValueError):
        postgres.libpq_url("sqlite:///x.db")


INNER_TESTS = """
import pytest


def test_skips():
    pytest.skip("redis not reachable at 127.0.0.1:1")

@pytest.mark.skip(reason="marker skip")
def test_marked():
    pass

@pytest.mark.xfail(reason="expected", strict=True)
def test_xfail():
    assert False

def test_passes():
    pass
"""


def _inner_can_import_support(monkeypatch: pytest.MonkeyPatch) -> None:
    existing = os.environ.get("PYTHONPATH")
    paths = [str(REPO_ROOT), *([existing] if existing else [])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


@pytest.mark.parametrize("required", [False, True])
def test_skips_become_failures_only_when_services_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, required: bool
) -> None:
    _inner_can_import_support(monkeypatch)
    if required:
        monkeypatch.setenv("SQUIDMESH_REQUIRE_SERVICES", "1")
    else:
        monkeypatch.delenv("SQUIDMESH_REQUIRE_SERVICES", raising=False)
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "tests.support.skips", "-p", "no:cacheprovider")
    if required:
        # A skip in the call phase fails the test; a skip marker (setup phase) errors it.
        result.assert_outcomes(failed=1, errors=1, passed=1, xfailed=1)
        assert result.ret != 0
        result.stdout.fnmatch_lines(  # in report order: ERRORS section, then FAILURES
            [
                "*SQUIDMESH_REQUIRE_SERVICES=1 turns skips into failures*marker skip*",
                "*SQUIDMESH_REQUIRE_SERVICES=1 turns skips into failures*redis not reachable*",
            ]
        )
    else:
        result.assert_outcomes(skipped=2, passed=1, xfailed=1)
        assert result.ret == 0


def test_module_level_skip_becomes_failure_when_services_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _inner_can_import_support(monkeypatch)
    monkeypatch.setenv("SQUIDMESH_REQUIRE_SERVICES", "1")
    pytester.makepyfile(
        test_mod="""
import pytest
pytest.importorskip("a_module_that_does_not_exist_anywhere")

def test_never_runs():
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "tests.support.skips", "-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*turns skips into failures*a_module_that_does_not_exist*"])


def test_require_service_skips_for_closed_port() -> None:
    from tests.support.services import require_service, service_reachable

    # Port 1 on loopback is essentially never open.
    assert not service_reachable("127.0.0.1", 1, timeout=0.5)
    with pytest.raises(pytest.skip.Exception, match=r"Redis not reachable at 127\.0\.0\.1:1"):
        require_service("Redis", "127.0.0.1", 1, timeout=0.5)
