"""squidmesh: durable workflows for Python applications, written as generators.

``import squidmesh as sm``; see docs/workflow_authoring.md.
"""

from __future__ import annotations

from squidmesh.core.commands import (
    Decision,
    approval,
    first,
    join,
    log,
    now,
    patched,
    pause,
    random,
    sleep,
    sleep_until,
    undo,
    uuid4,
    wait_for_event,
)
from squidmesh.core.context import CurrentRun, StepContext, current_run, step_context
from squidmesh.core.definition import (
    CronTrigger,
    ManualTrigger,
    StepCall,
    StepDefinition,
    WorkflowDefinition,
    cron,
    manual,
    step,
    workflow,
)
from squidmesh.core.history import Entry, History
from squidmesh.core.records import Attempt, AuditEvent, Job
from squidmesh.core.retry import Backoff, Retry
from squidmesh.errors import (
    DefinitionError,
    DispatchError,
    Fail,
    InvalidTransitionError,
    NondeterminismError,
    NonRetryable,
    PayloadError,
    RetryLater,
    ReviewError,
    RunCancelled,
    RunNotFoundError,
    SchemaOutOfDateError,
    SquidmeshError,
    StepFailed,
    StorageError,
    TimedOut,
    UnknownTriggerError,
    UnknownWorkflowError,
    UnsafeReplayError,
    ValueTooLargeError,
)
from squidmesh.mesh import Mesh
from squidmesh.runtime.executors import DatabaseExecutor, Executor, InlineExecutor
from squidmesh.runtime.views import DeclaredStep, Explanation, Run, StepRun
from squidmesh.types import RunStatus

__version__ = "0.1.0"

__all__ = [
    "Attempt",
    "AuditEvent",
    "Backoff",
    "CronTrigger",
    "CurrentRun",
    "DatabaseExecutor",
    "Decision",
    "DeclaredStep",
    "DefinitionError",
    "DispatchError",
    "Entry",
    "Executor",
    "Explanation",
    "Fail",
    "History",
    "InlineExecutor",
    "InvalidTransitionError",
    "Job",
    "ManualTrigger",
    "Mesh",
    "NonRetryable",
    "NondeterminismError",
    "PayloadError",
    "Retry",
    "RetryLater",
    "ReviewError",
    "Run",
    "RunCancelled",
    "RunNotFoundError",
    "RunStatus",
    "SchemaOutOfDateError",
    "SquidmeshError",
    "StepCall",
    "StepContext",
    "StepDefinition",
    "StepFailed",
    "StepRun",
    "StorageError",
    "TimedOut",
    "UnknownTriggerError",
    "UnknownWorkflowError",
    "UnsafeReplayError",
    "ValueTooLargeError",
    "WorkflowDefinition",
    "__version__",
    "approval",
    "cron",
    "current_run",
    "first",
    "join",
    "log",
    "manual",
    "now",
    "patched",
    "pause",
    "random",
    "sleep",
    "sleep_until",
    "step",
    "step_context",
    "undo",
    "uuid4",
    "wait_for_event",
    "workflow",
]
