"""Errors as the command line reports them: an exit code, one line, and CLI advice.

A ``CliError`` prints as one ``squidmesh: error: MESSAGE; HINT`` line on stderr or,
under ``--json``, as one JSON document on stdout::

    {"error": {"type": "RunNotFoundError", "message": "...", "hint": "..." | null,
               "exit_code": 3, ...}}

``type`` is the squidmesh exception's class name (``RunNotFoundError``,
``PayloadError``, ...) or one of the command line's own: ``UsageError``,
``DatabaseNotFound``, ``DatabaseURLError``, ``AmbiguousRunId``, ``RunSuspended``,
``RunFailed``. Some errors add keys (``candidates``: the run ids an ambiguous prefix
matches; ``run``: the run an action left suspended or failed).

:func:`from_api` turns the errors the ``Mesh`` API raises into CLI errors. The API's
messages give Python advice ("pass it in Mesh(workflows=[...])"); on the command line
the fix is an option (``--app module:mesh``), so errors that carry the facts (the
workflow asked for, the ones registered) are re-phrased here.
"""

from __future__ import annotations

from typing import Any

from squidmesh.errors import (
    InvalidTransitionError,
    PayloadError,
    ReviewError,
    RunNotFoundError,
    SchemaOutOfDateError,
    StorageError,
    UnknownTriggerError,
    UnknownWorkflowError,
    UnsafeReplayError,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "NEEDS_APP",
    "CliError",
    "exit_code",
    "from_api",
    "one_line",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4

#: The advice when a command needs the application's workflows and has none.
NEEDS_APP = "pass --app module:mesh (or set SQUIDMESH_APP) naming the Mesh your application builds"


def one_line(text: str) -> str:
    return " ".join(text.split())


class CliError(Exception):
    """A failure reported as one line (or one JSON document) with an exit code."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        hint: str | None = None,
        kind: str = "CliError",
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.kind = kind
        self.extra = dict(extra or {})

    def line(self) -> str:
        """The human form: ``squidmesh: error: MESSAGE; HINT``."""
        text = one_line(self.message)
        if self.hint:
            text = text.rstrip(".") + f"; {one_line(self.hint)}"
        return f"squidmesh: error: {text}"

    def to_json(self) -> dict[str, Any]:
        error = {
            "type": self.kind,
            "message": one_line(self.message),
            "hint": one_line(self.hint) if self.hint else None,
            "exit_code": self.code,
        }
        extra = dict(self.extra)
        run = extra.pop("run", None)
        error.update(extra)
        document: dict[str, Any] = {"error": error}
        if run is not None:
            document["run"] = run
        return document


def exit_code(exc: BaseException) -> int:
    """The exit code for an API error."""
    if isinstance(exc, (RunNotFoundError, UnknownWorkflowError)):
        return EXIT_NOT_FOUND
    if isinstance(exc, (InvalidTransitionError, UnsafeReplayError, ReviewError)):
        return EXIT_REFUSED
    if isinstance(exc, (PayloadError, UnknownTriggerError, ValueError)):
        return EXIT_USAGE
    return EXIT_FAILED


def from_api(
    exc: Exception,
    *,
    app: str | None = None,
    database: str | None = None,
    run_id: str | None = None,
) -> CliError:
    """The CLI error for an exception raised by the ``Mesh`` API (or a ``ValueError``)."""
    code, kind = exit_code(exc), type(exc).__name__
    message, hint = str(exc), None
    if isinstance(exc, UnknownWorkflowError) and exc.workflow is not None:
        message, hint = _unknown_workflow(exc, app)
    elif isinstance(exc, SchemaOutOfDateError):
        message = str(exc).replace(" or `mesh.migrate()`", "")
        if database:
            message = f"{database}: {message}"
    elif isinstance(exc, StorageError):
        hint = "check --database-url (or SQUIDMESH_DATABASE_URL, or your --app's Mesh) and that "
        hint += "the database is reachable"
    elif isinstance(exc, RunNotFoundError) and database:
        hint = f"the database is {database}; `squidmesh runs list` shows its runs"
    elif isinstance(exc, InvalidTransitionError) and run_id:
        hint = f"`squidmesh runs explain {run_id}` says what the run can do next"
    return CliError(code, message, hint=hint, kind=kind)


def _unknown_workflow(exc: UnknownWorkflowError, app: str | None) -> tuple[str, str | None]:
    where = f"the Mesh of --app {app}" if app else "this bare Mesh (no --app)"
    registered = f" (registered: {', '.join(exc.registered) or 'none'})" if app else ""
    if exc.run_id is not None:
        message = (
            f"run {exc.run_id} belongs to workflow {exc.workflow!r}, which {where} does not "
            f"register{registered}"
        )
        hint = f"register it on the Mesh that --app {app} names" if app else NEEDS_APP
        return message, hint
    message = f"workflow {exc.workflow!r} is not registered on {where}{registered}"
    if exc.suggestion:
        return f"{message}; did you mean {exc.suggestion!r}?", None
    return message, (f"register it on the Mesh that --app {app} names" if app else NEEDS_APP)
