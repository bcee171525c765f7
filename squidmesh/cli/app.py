"""What the commands work on: the ``--app`` Mesh, its database, run ids, output.

``load_mesh`` imports the Mesh named by ``--app`` (or builds a bare one on the database
URL, refusing malformed URLs and missing drivers in one line); ``Context`` hands each
command its parsed arguments, that Mesh (built on first use), its database (checked by
:mod:`squidmesh.cli.database` before first use), run ids resolved from unique prefixes,
and its output streams. Errors are :class:`~squidmesh.cli.errors.CliError`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from squidmesh.cli import database
from squidmesh.cli.errors import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    NEEDS_APP,
    CliError,
    exit_code,
)
from squidmesh.cli.render import dumps
from squidmesh.core.definition import WorkflowDefinition
from squidmesh.mesh import Mesh
from squidmesh.storage import DEFAULT_URL
from squidmesh.storage.base import run_id_prefix

__all__ = [
    "DEFAULT_URL",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "MIN_PREFIX",
    "CliError",
    "Context",
    "exit_code",
    "load_mesh",
    "workflows_in",
]

#: The shortest run id prefix accepted (as git, to keep typos from matching by luck).
MIN_PREFIX = 4
#: How many candidates an ambiguous prefix lists.
MAX_CANDIDATES = 10


# --------------------------------------------------------------------------- loading


def load_mesh(app: str | None, url: str | None) -> Mesh:
    """The Mesh named by ``--app module:attr``, or a bare one on ``--database-url``.

    ``attr`` (default ``mesh``) is a ``Mesh`` or a callable returning one; a callable
    that takes an argument is given the database URL when one was set.
    """
    if app:
        module_name, _, attr = app.partition(":")
        try:
            module = import_named(module_name, what="--app")
        except CliError as exc:
            raise CliError(
                EXIT_USAGE if exc.code == EXIT_NOT_FOUND else exc.code, exc.message
            ) from exc
        target = getattr(module, attr or "mesh", None)
        if target is None:
            found = [name for name, value in vars(module).items() if isinstance(value, Mesh)]
            raise CliError(
                EXIT_USAGE,
                f"--app {app}: module {module_name} has no {attr or 'mesh'!r}",
                hint=f"it has the Mesh {', '.join(found)}: pass --app {module_name}:{found[0]}"
                if found
                else "name the module attribute that holds your Mesh: --app module:attribute",
            )
        if callable(target) and not isinstance(target, Mesh):
            if url is not None:
                _check_url(url)
            try:
                target = _call_factory(target, url)
            except CliError:
                raise
            except Exception as exc:
                raise _url_error(url, exc) or CliError(
                    EXIT_FAILED,
                    f"--app {app}: building the Mesh failed: {type(exc).__name__}: {exc}",
                ) from exc
        if not isinstance(target, Mesh):
            raise CliError(
                EXIT_USAGE, f"--app {app} is not a squidmesh Mesh (got {type(target).__name__})"
            )
        return target
    url = url or DEFAULT_URL
    _check_url(url)
    try:
        return Mesh(url, auto_migrate=False)
    except Exception as exc:
        error = _url_error(url, exc)
        if error is None:
            raise
        raise error from None


# "user:password@" (also in a malformed URL such as "postgresql:/user:password@host").
_PASSWORD = re.compile(r"(/[^:/@]*:)[^@/]*@")
_ACCEPTED = "sqlite:///path/to/file.db, postgresql://user@host/dbname or memory://"


def _shown(url: str) -> str:
    return _PASSWORD.sub(r"\1***@", url)


def _check_url(url: str) -> None:
    """Refuse, in one line, a URL that is not a database URL squidmesh can use."""
    import sqlalchemy as sa

    if url in ("memory://", "memory:"):
        return
    try:
        backend = sa.engine.make_url(url).get_backend_name()
    except sa.exc.ArgumentError:
        raise CliError(
            EXIT_USAGE,
            f"--database-url {_shown(url)!r} is not a database URL",
            hint=f"use {_ACCEPTED}",
            kind="DatabaseURLError",
        ) from None
    if backend not in ("sqlite", "postgresql", "postgres"):
        raise CliError(
            EXIT_USAGE,
            f"--database-url {_shown(url)!r}: squidmesh stores runs in SQLite or PostgreSQL, "
            f"not {backend}",
            hint=f"use {_ACCEPTED}",
            kind="DatabaseURLError",
        )


def _url_error(url: str | None, exc: Exception) -> CliError | None:
    """The one-line error for opening ``url`` failing with ``exc`` (None: not a URL
    problem). A missing driver is an ImportError raised by SQLAlchemy's dialect."""
    import sqlalchemy as sa

    if url is None:
        return None
    if isinstance(exc, ImportError):
        return CliError(
            EXIT_USAGE,
            f"--database-url {_shown(url)!r} needs the database driver "
            f"{exc.name or str(exc)!r}, which is not installed",
            hint="squidmesh uses psycopg 3 for PostgreSQL (postgresql:// or "
            "postgresql+psycopg://) and Python's own sqlite3 for SQLite",
            kind="DatabaseURLError",
        )
    if isinstance(exc, (sa.exc.ArgumentError, sa.exc.NoSuchModuleError)):
        return CliError(
            EXIT_USAGE,
            f"--database-url {_shown(url)!r}: {exc}",
            hint=f"use {_ACCEPTED}",
            kind="DatabaseURLError",
        )
    return None


def _call_factory(factory: Callable[..., Any], url: str | None) -> Any:
    try:
        params = [
            p
            for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return factory(url) if params and url is not None else factory()


def import_named(name: str, *, what: str) -> ModuleType:
    """Import a dotted module name, or a ``.py`` file path."""
    try:
        if name.endswith(".py") or os.sep in name:
            path = Path(name).absolute()
            if not path.is_file():
                raise CliError(EXIT_NOT_FOUND, f"{what} {name}: no such file")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise CliError(EXIT_USAGE, f"{what} {name}: cannot load this file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(name)
    except CliError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise CliError(EXIT_NOT_FOUND, f"{what} {name}: no module named {exc.name!r}") from exc
        raise CliError(EXIT_FAILED, f"{what} {name}: import failed: {exc}") from exc
    except Exception as exc:
        raise CliError(
            EXIT_FAILED, f"{what} {name}: import failed: {type(exc).__name__}: {exc}"
        ) from exc


def workflows_in(module: ModuleType) -> list[WorkflowDefinition]:
    """Every ``@sm.workflow`` object bound at the top level of ``module`` (in order)."""
    found: dict[int, WorkflowDefinition] = {}
    for value in vars(module).values():
        if isinstance(value, WorkflowDefinition):
            found.setdefault(id(value), value)
    return list(found.values())


class Context:
    """The parsed arguments, a lazily built Mesh and its (checked) database."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self._mesh: Mesh | None = None
        self._checked = False
        #: the run id the command acts on, once resolved (for error hints)
        self.run_id: str | None = None

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    @property
    def mesh(self) -> Mesh:
        """The Mesh, for its workflows; use :meth:`database` before touching runs."""
        if self._mesh is None:
            self._mesh = load_mesh(self.args.app, self.args.database_url)
        return self._mesh

    def database(self) -> Mesh:
        """The Mesh, after checking that its database exists and is migrated."""
        mesh = self.mesh
        if not self._checked:
            database.check_database(mesh.store)
            self._checked = True
        return mesh

    @property
    def database_label(self) -> str | None:
        return None if self._mesh is None else database.label(self._mesh.store)

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def progress(self, text: str) -> None:
        print(f"squidmesh: {text}", file=self.err, flush=True)

    def emit(self, data: Any, human: Callable[[], str]) -> None:
        self.print(dumps(data) if self.json else human())

    def need_workflows(self, command: str) -> Mesh:
        mesh = self.database()
        if not mesh.workflows:
            raise CliError(EXIT_USAGE, f"{command} needs your workflows", hint=NEEDS_APP)
        return mesh

    def resolve_run(self, text: str) -> str:
        """The full id of the run ``text`` names: a UUID, or a unique prefix of one."""
        run_id = resolve_run_id(self.database(), text)
        self.run_id = run_id
        return run_id


def resolve_run_id(mesh: Mesh, text: str) -> str:
    """A full run id, or the only run whose id starts with the hex digits of ``text``."""
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        pass
    prefix = run_id_prefix(text)
    if prefix is None:
        raise CliError(
            EXIT_NOT_FOUND,
            f"run {text!r} not found: a run id is a UUID, or a unique prefix of one "
            "(like the first 8 characters `runs list` prints)",
            kind="RunNotFoundError",
        )
    if len(prefix.replace("-", "")) < MIN_PREFIX:
        raise CliError(
            EXIT_USAGE,
            f"run id prefix {text!r} is too short: give at least {MIN_PREFIX} characters",
            kind="UsageError",
        )
    with mesh.store.transaction() as tx:
        found = tx.run_ids_with_prefix(prefix, MAX_CANDIDATES + 1)
    if not found:
        raise CliError(
            EXIT_NOT_FOUND,
            f"no run id starts with {text!r}",
            hint=f"the database is {database.label(mesh.store)}; "
            "`squidmesh runs list` shows its runs",
            kind="RunNotFoundError",
        )
    if len(found) > 1:
        shown = found[:MAX_CANDIDATES]
        more = "" if len(found) <= MAX_CANDIDATES else f" (and more; showing {len(shown)})"
        raise CliError(
            EXIT_USAGE,
            f"run id prefix {text!r} is ambiguous: it matches {', '.join(shown)}{more}",
            hint="give more characters of the id",
            kind="AmbiguousRunId",
            extra={"candidates": shown},
        )
    return found[0]
