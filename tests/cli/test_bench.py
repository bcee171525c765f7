"""``squidmesh bench``: SPEC section 10's benchmarks, run from the CLI on a checkout."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from squidmesh.cli import bench
from tests.cli.test_cli import REPO, cli, one_error_line


@pytest.mark.postgres
def test_bench_runs_the_checkouts_benchmarks_on_the_named_server(
    pg_server_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "numbers.json"
    before = _bench_databases(pg_server_url)
    # From a directory that is no checkout: the one squidmesh was installed from is used.
    result = cli(
        None,
        "--database-url",
        pg_server_url,
        "bench",
        "--quick",
        "--only",
        "baseline",
        "--output",
        str(out),
        "--no-profile",
        app=None,
        cwd=tmp_path,
        timeout=180,
    )

    assert result.code == 0, result.err
    assert f"running the benchmarks of {REPO}" in result.err
    numbers = json.loads(out.read_text())
    assert numbers["mode"] == "quick" and list(numbers["benchmarks"]) == ["baseline"]
    assert numbers["benchmarks"]["baseline"]["rate_per_s"] > 0
    # Every database the run created on that server is gone again.
    assert numbers["databases_not_dropped"] == []
    assert _bench_databases(pg_server_url) <= before


def _bench_databases(server_url: str) -> set[str]:
    with psycopg.connect(server_url, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'sqm_bench_%'")
        return {str(row[0]) for row in rows}


def test_bench_refuses_a_database_that_is_not_postgresql(tmp_path: Path) -> None:
    result = cli(None, "--database-url", f"sqlite:///{tmp_path / 'app.db'}", "bench", app=None)

    assert result.code == 2
    line = one_error_line(result)
    assert "PostgreSQL server" in line and "'sqlite'" in line
    assert "--database-url postgresql://" in line
    assert not (tmp_path / "app.db").exists()


def test_the_benchmarks_are_found_in_a_checkout_only(tmp_path: Path) -> None:
    assert bench.checkout_root([tmp_path, REPO]) == REPO
    # A directory named benchmarks that is not squidmesh's does not count.
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "__main__.py").write_text("")
    assert bench.checkout_root([tmp_path]) is None


def test_without_a_checkout_bench_says_where_the_benchmarks_are(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from squidmesh.cli.dispatch import main

    monkeypatch.setattr(bench, "checkout_root", lambda: None)

    code = main(["bench", "--quick"])

    assert code == 2
    err = capsys.readouterr().err
    assert "the benchmarks are not installed" in err
    assert "pip install -e '.[bench]'" in err
