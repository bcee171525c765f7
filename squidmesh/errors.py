"""Every exception squidmesh raises, in one tree.

::

    SquidmeshError(Exception)
    ├── PayloadError              payload failed its trigger's contract; nothing persisted
    ├── DefinitionError           bad @workflow/@step, or a workflow yielded a non-command
    ├── UnknownWorkflowError
    ├── UnknownTriggerError
    ├── RunNotFoundError          also for ids that are not UUIDs
    ├── InvalidTransitionError    .status, .action
    ├── UnsafeReplayError         .steps
    ├── ReviewError               approve/reject without a valid actor
    ├── DispatchError             the executor refused the jobs; the change was rolled back
    ├── InvalidArgumentError      an API call's argument is wrong (also Value/TypeError)
    ├── UnstorableValueError      a value cannot be stored: not JSON, NUL characters, lone
    │   │                         surrogates, NaN/Infinity, huge integers (also a ValueError)
    │   └── ValueTooLargeError    a value is over the Mesh's max_value_bytes
    ├── NondeterminismError       .run_id, .seq, .expected, .recorded
    ├── WorkerLost                recorded for an attempt whose process died (lease lost)
    │   └── HeartbeatTimeout      recorded for an attempt silent past heartbeat_timeout
    ├── CompensationFailed        recorded when compensations fail during cancel/failure
    ├── StorageError              driver error kept as __cause__
    │   ├── SchemaOutOfDateError
    │   └── ConcurrentChangeError another process changed the run first; nothing applied
    └── WorkflowSignal            exceptions thrown *into* workflow code
        ├── StepFailed            a step failed after its retries (carries the original error)
        │   └── ChildFailed       a child workflow run failed or was cancelled (.child_run_id)
        ├── TimedOut              an approval or event wait passed its timeout
        └── Fail                  raised by workflow code to fail the run on purpose

    Step-side signals (raised by step functions):
        RetryLater(Exception)     retry after a given delay
        NonRetryable(Exception)   stop retrying now

    RunCancelled(BaseException)   delivered into a cancelled workflow; ``except Exception``
                                  in user code cannot swallow it

Each class's docstring is its default message. Errors about a name that does not exist
(a workflow, a trigger, a payload field) carry the names that do and a "did you mean"
suggestion (:func:`did_you_mean`), so each front end (Python, the CLI) can phrase its own
advice from the same facts.
"""

from __future__ import annotations

import difflib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "ChildFailed",
    "CompensationFailed",
    "ConcurrentChangeError",
    "DefinitionError",
    "DispatchError",
    "Fail",
    "HeartbeatTimeout",
    "InvalidArgumentError",
    "InvalidTransitionError",
    "NonRetryable",
    "NondeterminismError",
    "PayloadError",
    "RetryLater",
    "ReviewError",
    "RunCancelled",
    "RunNotFoundError",
    "SchemaOutOfDateError",
    "SquidmeshError",
    "StepFailed",
    "StorageError",
    "TimedOut",
    "UnknownTriggerError",
    "UnknownWorkflowError",
    "UnsafeReplayError",
    "UnstorableValueError",
    "ValueTooLargeError",
    "WorkerLost",
    "WorkflowSignal",
    "did_you_mean",
    "shown",
]


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message: never raises (an integer of 5000 digits has
    no repr) and never runs on for pages (cut to ``limit`` characters)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} that cannot be shown>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to a mistyped ``name`` (case-insensitive), or None.

    ``did_you_mean("ring_erand", ["ring_errand", "doomed"]) == "ring_errand"``.
    """
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None


class SquidmeshError(Exception):
    """A squidmesh operation failed."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (type(self).__doc__ or "").strip()
        super().__init__(self.message)


class PayloadError(SquidmeshError):
    """The payload does not match the trigger's contract; nothing was persisted.

    ``missing_fields``, ``unknown_fields`` and ``invalid_types`` (field -> expected
    type) name what is wrong; ``reasons`` keeps the validator's own words per invalid
    field (``"String should have at least 3 characters"``) and ``suggestions`` maps an
    unknown field to the declared field it probably meant.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        missing_fields: list[str] | None = None,
        unknown_fields: list[str] | None = None,
        invalid_types: dict[str, str] | None = None,
        reasons: Mapping[str, str] | None = None,
        suggestions: Mapping[str, str] | None = None,
    ) -> None:
        self.missing_fields = list(missing_fields or [])
        self.unknown_fields = sorted(unknown_fields or [])
        self.invalid_types = dict(invalid_types or {})
        #: field -> why its value was refused, in the validator's words
        self.reasons = dict(reasons or {})
        #: unknown field -> the declared field it probably meant
        self.suggestions = dict(suggestions or {})
        if message is None:
            parts = []
            if self.missing_fields:
                parts.append("missing " + ", ".join(self.missing_fields))
            if self.unknown_fields:
                parts.append(
                    "unknown "
                    + ", ".join(
                        f"{name} (did you mean {self.suggestions[name]}?)"
                        if name in self.suggestions
                        else name
                        for name in self.unknown_fields
                    )
                )
            invalid = [
                *self.invalid_types,
                *(k for k in self.reasons if k not in self.invalid_types),
            ]
            if invalid:
                parts.append("invalid " + ", ".join(self._invalid(name) for name in invalid))
            message = "invalid payload: " + ("; ".join(parts) or "rejected")
        super().__init__(message)

    def _invalid(self, name: str) -> str:
        expected, reason = self.invalid_types.get(name), self.reasons.get(name)
        if expected and reason and expected != reason:
            return f"{name} (expected {expected}: {reason})"
        if expected or reason:
            return f"{name} ({reason if reason else 'expected ' + str(expected)})"
        return name


class DefinitionError(SquidmeshError):
    """A workflow or step definition is invalid."""


class UnknownWorkflowError(SquidmeshError):
    """No workflow with that name is registered.

    ``workflow`` is the name asked for (whatever the caller passed), ``registered`` the
    names the Mesh has, ``suggestion`` the closest of them (or None) and ``run_id`` the
    run that needs the workflow, when the error is about an existing run.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        workflow: Any = None,
        registered: Iterable[str] = (),
        run_id: str | None = None,
    ) -> None:
        self.workflow = workflow
        self.registered: tuple[str, ...] = tuple(sorted(registered))
        self.run_id = run_id
        self.suggestion = (
            did_you_mean(workflow, self.registered)
            if isinstance(workflow, str) and workflow and run_id is None
            else None
        )
        if message is None and workflow is not None:
            message = (
                f"workflow {shown(workflow)} is not registered with this Mesh (registered: "
                f"{', '.join(self.registered) or 'none'})"
                + (
                    f"; did you mean {self.suggestion!r}? If not, pass it in Mesh(workflows=[...])"
                    if self.suggestion
                    else "; pass it in Mesh(workflows=[...])"
                )
            )
        super().__init__(message)


class UnknownTriggerError(SquidmeshError):
    """The workflow has no trigger with that name.

    ``workflow`` and ``trigger`` name what was asked for, ``known`` the workflow's
    triggers and ``suggestion`` the closest of them (or None).
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        workflow: str | None = None,
        trigger: Any = None,
        known: Sequence[str] = (),
    ) -> None:
        self.workflow = workflow
        self.trigger = trigger
        self.known: tuple[str, ...] = tuple(known)
        self.suggestion = (
            did_you_mean(trigger, self.known) if isinstance(trigger, str) and trigger else None
        )
        if message is None and trigger is not None:
            message = (
                f"workflow {workflow} has no trigger {shown(trigger)} (known: "
                f"{', '.join(self.known) or 'none'})"
                + (f"; did you mean {self.suggestion!r}?" if self.suggestion else "")
            )
        super().__init__(message)


class RunNotFoundError(SquidmeshError):
    """No run with that id exists."""


class InvalidTransitionError(SquidmeshError):
    """The run's status does not allow this action."""

    def __init__(self, message: str | None = None, *, status: str, action: str) -> None:
        self.status = status
        self.action = action
        super().__init__(message or f"cannot {action} a run that is {status}")


class UnsafeReplayError(SquidmeshError):
    """Replay needs allow_irreversible=True after irreversible or non-compensatable steps."""

    def __init__(self, message: str | None = None, *, steps: list[str]) -> None:
        self.steps = list(steps)
        super().__init__(
            message
            or (
                "replay requires allow_irreversible=True: the run completed irreversible "
                "or non-compensatable steps " + ", ".join(self.steps)
            )
        )


class ReviewError(SquidmeshError):
    """A review decision needs a non-empty actor."""


class DispatchError(SquidmeshError):
    """The executor could not accept the jobs; nothing was changed."""


class InvalidArgumentError(SquidmeshError, ValueError, TypeError):
    """An argument of the call is not valid; nothing was changed.

    Also a ``ValueError`` and a ``TypeError``, so code that caught those before keeps
    working."""


class UnstorableValueError(SquidmeshError, ValueError):
    """A value cannot be stored: it is not JSON, or holds what a database refuses (NUL
    characters, lone surrogates, NaN or Infinity, integers of thousands of digits)."""

    def __init__(self, message: str | None = None, *, path: str | None = None) -> None:
        #: where in the value the problem is, as a JSON path (``$.items[3].name``)
        self.path = path
        super().__init__(message)


class ValueTooLargeError(UnstorableValueError):
    """A value's JSON is larger than this Mesh accepts (``Mesh(max_value_bytes=...)``)."""


class NondeterminismError(SquidmeshError):
    """The workflow code no longer matches the run's recorded history."""

    def __init__(
        self,
        message: str | None = None,
        *,
        run_id: str | None = None,
        seq: int,
        expected: str,
        recorded: str,
    ) -> None:
        self.run_id = run_id
        self.seq = seq
        self.expected = expected
        self.recorded = recorded
        where = f"run {run_id} " if run_id else ""
        super().__init__(
            message
            or (
                f"{where}diverged from its history at seq {seq}: the code now yields "
                f"{expected}, but the history recorded {recorded}. Restore the old code "
                "path or guard the change with sm.patched(...), then resume the run."
            )
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_nde, (self.message, self.run_id, self.seq, self.expected, self.recorded))


def _rebuild_nde(
    message: str, run_id: str | None, seq: int, expected: str, recorded: str
) -> NondeterminismError:
    return NondeterminismError(
        message, run_id=run_id, seq=seq, expected=expected, recorded=recorded
    )


class WorkerLost(SquidmeshError):
    """The process running a step attempt stopped before recording its outcome."""

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        self.details = details
        super().__init__(message)


class HeartbeatTimeout(WorkerLost):
    """A step attempt sent no heartbeat for longer than its ``heartbeat_timeout``."""


class CompensationFailed(SquidmeshError):
    """A compensation failed while the run was being cancelled or failed."""


class StorageError(SquidmeshError):
    """The database operation failed; the driver's error is the __cause__."""


class SchemaOutOfDateError(StorageError):
    """The database schema is older than this code expects: run `squidmesh migrate`."""


class ConcurrentChangeError(StorageError):
    """Another process changed the run at the same time; this change was not applied."""


class ConflictError(StorageError):
    """A row with the same unique key exists (a run id, an idempotency key, a history
    position, a cron tick): someone recorded it first; nothing was written."""


class WorkflowSignal(SquidmeshError):
    """An outcome delivered into workflow code."""


class StepFailed(WorkflowSignal):
    """A step failed after exhausting its retries."""

    def __init__(
        self,
        message: str | None = None,
        *,
        step: str = "",
        seq: int = -1,
        error_type: str = "Exception",
        error_types: tuple[str, ...] = (),
        error_message: str = "",
        details: Any = None,
        attempts: int = 0,
        traceback: str | None = None,
        retryable: bool = True,
    ) -> None:
        self.step = step
        self.seq = seq
        #: qualified name of the original exception class, e.g. "builtins.ValueError"
        self.error_type = error_type
        #: qualified names of the original class and its bases (for ``is_a``)
        self.error_types = error_types or (error_type,)
        self.error_message = error_message
        self.details = details
        self.attempts = attempts
        self.traceback = traceback
        self.retryable = retryable
        short = error_type.rsplit(".", 1)[-1]
        super().__init__(
            message
            or f"step {step!r} (seq {seq}) failed after {attempts} attempt(s): "
            f"{short}: {error_message}"
        )

    @property
    def type_name(self) -> str:
        """The original exception's class name without its module."""
        return self.error_type.rsplit(".", 1)[-1]

    def is_a(self, exc_type: type[BaseException]) -> bool:
        """True when the original error was an instance of ``exc_type``.

        Works on replay without importing the original class: the class's MRO
        was recorded when the step failed.
        """
        qual = f"{exc_type.__module__}.{exc_type.__qualname__}"
        return qual in self.error_types


class ChildFailed(StepFailed):
    """A child workflow run (``sm.child``) failed or was cancelled.

    A ``StepFailed`` whose ``step`` is the child's workflow name: ``except sm.StepFailed``
    catches it too. ``child_run_id`` is the child run (None when no run could be started:
    its payload did not fit the child's trigger, say), ``child_status`` how it ended
    (``failed``, ``cancelled``, or ``not_started``), ``child_error`` the child's own error
    record; ``error_type``/``error_message``/``is_a`` describe that error, so
    ``exc.is_a(MyError)`` asks whether the child failed with ``MyError``.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        child_run_id: Any = None,
        workflow: str = "",
        seq: int = -1,
        child_status: str = "failed",
        child_error: dict[str, Any] | None = None,
    ) -> None:
        self.child_run_id: uuid.UUID | None = (
            uuid.UUID(str(child_run_id)) if child_run_id is not None else None
        )
        self.child_status = child_status
        self.child_error: dict[str, Any] = dict(child_error or {})
        error = self.child_error
        error_type = str(error.get("type") or "squidmesh.errors.ChildFailed")
        who = f"child run {self.child_run_id}" if self.child_run_id else "a child run"
        ended = (
            "was cancelled"
            if child_status == "cancelled"
            else ("could not be started" if child_status == "not_started" else "failed")
        )
        detail = f": {error_type.rsplit('.', 1)[-1]}: {error.get('message', '')}" if error else ""
        super().__init__(
            message or f"{who} of workflow {workflow!r} (seq {seq}) {ended}{detail}",
            step=workflow,
            seq=seq,
            error_type=error_type,
            error_types=tuple(error.get("types") or (error_type,)),
            error_message=str(error.get("message", "")),
            details=error.get("details"),
            attempts=0,
            traceback=error.get("traceback"),
            retryable=False,
        )

    @property
    def workflow(self) -> str:
        """The child's workflow name (also ``step``)."""
        return self.step


class TimedOut(WorkflowSignal):
    """An approval or event wait passed its timeout."""

    def __init__(self, message: str | None = None, *, name: str = "", seq: int = -1) -> None:
        self.name = name
        self.seq = seq
        super().__init__(message or f"{name!r} (seq {seq}) timed out")


class Fail(WorkflowSignal):
    """The workflow failed the run on purpose."""

    def __init__(self, message: str = "workflow failed", details: Any = None) -> None:
        self.details = details
        super().__init__(message)


class RetryLater(Exception):
    """Raised by a step: retry this attempt after ``after`` seconds."""

    def __init__(self, after: float, message: str = "") -> None:
        self.after = float(after)
        super().__init__(message or f"retry requested in {after}s")


class NonRetryable(Exception):
    """Raised by a step: fail now and do not retry."""

    def __init__(self, message: str = "", details: Any = None) -> None:
        self.details = details
        super().__init__(message)


class RunCancelled(BaseException):
    """The run was cancelled; delivered into workflow code so ``finally`` blocks run."""
