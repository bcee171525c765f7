"""What the commands work on: the ``--app`` Mesh, the ``Context`` and the exit codes.

``load_mesh`` imports the Mesh named by ``--app`` (or builds a bare one on the database
URL); ``Context`` hands each command its parsed arguments, that Mesh (built on first use)
and its output streams. A ``CliError`` is reported as one ``squidmesh: error: ...`` line
with its exit code; ``exit_code`` maps squidmesh's own errors to those codes.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from squidmesh.cli.render import dumps
from squidmesh.core.definition import WorkflowDefinition
from squidmesh.errors import (
    InvalidTransitionError,
    PayloadError,
    ReviewError,
    RunNotFoundError,
    UnknownTriggerError,
    UnknownWorkflowError,
    UnsafeReplayError,
)
from squidmesh.mesh import Mesh

__all__ = [
    "DEFAULT_URL",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "CliError",
    "Context",
    "exit_code",
    "load_mesh",
    "workflows_in",
]

DEFAULT_URL = "sqlite:///squidmesh.db"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4


class CliError(Exception):
    """A failure reported as one ``squidmesh: error: ...`` line with an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- loading


def load_mesh(app: str | None, url: str | None) -> Mesh:
    """The Mesh named by ``--app module:attr``, or a bare one on ``--database-url``.

    ``attr`` (default ``mesh``) is a ``Mesh`` or a callable returning one; a callable
    that takes an argument is given the database URL when one was set.
    """
    if app:
        module_name, _, attr = app.partition(":")
        try:
            module = _import(module_name, what="--app")
        except CliError as exc:
            raise CliError(
                EXIT_USAGE if exc.code == EXIT_NOT_FOUND else exc.code, exc.message
            ) from exc
        target = getattr(module, attr or "mesh", None)
        if target is None:
            raise CliError(
                EXIT_USAGE, f"--app {app}: module {module_name} has no {attr or 'mesh'!r}"
            )
        if callable(target) and not isinstance(target, Mesh):
            target = _call_factory(target, url)
        if not isinstance(target, Mesh):
            raise CliError(
                EXIT_USAGE, f"--app {app} is not a squidmesh Mesh (got {type(target).__name__})"
            )
        return target
    return Mesh(url or DEFAULT_URL, auto_migrate=False)


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


def _import(name: str, *, what: str) -> ModuleType:
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
    """The parsed arguments and a lazily built Mesh."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self._mesh: Mesh | None = None

    @property
    def mesh(self) -> Mesh:
        if self._mesh is None:
            self._mesh = load_mesh(self.args.app, self.args.database_url)
        return self._mesh

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def progress(self, text: str) -> None:
        print(f"squidmesh: {text}", file=self.err, flush=True)

    def emit(self, data: Any, human: Callable[[], str]) -> None:
        self.print(dumps(data) if self.args.json else human())

    def need_workflows(self, command: str) -> Mesh:
        mesh = self.mesh
        if not mesh.workflows:
            raise CliError(
                EXIT_USAGE,
                f"{command} needs your workflows: pass --app module:mesh (or set "
                "SQUIDMESH_APP) naming the Mesh your application builds",
            )
        return mesh


def exit_code(exc: BaseException) -> int:
    """The exit code for an API error."""
    if isinstance(exc, (RunNotFoundError, UnknownWorkflowError)):
        return EXIT_NOT_FOUND
    if isinstance(exc, (InvalidTransitionError, UnsafeReplayError, ReviewError)):
        return EXIT_REFUSED
    if isinstance(exc, (PayloadError, UnknownTriggerError, ValueError)):
        return EXIT_USAGE
    return EXIT_FAILED
