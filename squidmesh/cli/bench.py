"""``squidmesh bench``: the performance bars of SPEC section 10, from a source checkout.

The benchmarks are not part of the installed package: they live in the repository's
``benchmarks/`` directory, beside a DBOS peer and a PostgreSQL server to measure against.
The command finds the checkout the running squidmesh was installed from (``pip install
-e``), or else the working directory's, and runs ``python -m benchmarks`` there, so the
numbers are those of the code that is running.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from squidmesh.cli.app import Context
from squidmesh.cli.errors import EXIT_USAGE, CliError

__all__ = ["checkout_root", "cmd_bench"]

#: the server the benchmarks create their databases on when none is named
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def checkout_root(candidates: Sequence[Path] | None = None) -> Path | None:
    """The first of ``candidates`` (default: the directory above the imported package,
    then the working directory) that holds squidmesh's benchmarks."""
    if candidates is None:
        # squidmesh/cli/bench.py: the package's parent is the checkout of an editable install
        candidates = (Path(__file__).resolve().parents[2], Path.cwd())
    for root in candidates:
        bench = root / "benchmarks"
        if (bench / "__main__.py").is_file() and (bench / "b1_sequential.py").is_file():
            return root
    return None


def _server(url: str | None) -> str:
    """The PostgreSQL server ``--database-url`` names, in the form libpq reads."""
    if url is None:
        return DEFAULT_SERVER
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return f"postgresql://{rest}"
    shown = scheme if sep else url
    raise CliError(
        EXIT_USAGE,
        f"squidmesh bench measures against a PostgreSQL server, and --database-url names {shown!r}",
        hint="pass --database-url postgresql://USER@HOST:PORT/DB (any database of the "
        "server: every benchmark creates its own and drops it), or leave it out for "
        f"{DEFAULT_SERVER}",
    )


def cmd_bench(ctx: Context) -> int:
    args = ctx.args
    server = _server(args.database_url)
    root = checkout_root()
    if root is None:
        raise CliError(
            EXIT_USAGE,
            "the benchmarks are not installed: they are in squidmesh's source repository "
            "(benchmarks/), not in its package",
            hint="clone the repository, `pip install -e '.[bench]'` in it, and run "
            "`squidmesh bench` there (or `python -m benchmarks`)",
        )
    command = [sys.executable, "-m", "benchmarks", "--database-url", server]
    if args.quick:
        command.append("--quick")
    if args.only:
        command += ["--only", args.only]
    if args.output:
        command += ["--json", str(Path(args.output).resolve())]
    if args.profile:
        command.append("--profile")
    if args.no_profile:
        command.append("--no-profile")
    # Progress and the table go to the terminal as the benchmarks print them (2-3
    # minutes for a full run); the exit status is theirs: 0, 1 if one raised, 130.
    ctx.err.write(f"squidmesh: running the benchmarks of {root} (python -m benchmarks)\n")
    ctx.err.flush()
    return subprocess.call(command, cwd=root)
