"""Pins the public API surface.

Changing either list below is a deliberate API change: update it together with the
docs and the changelog, never just to make this test pass.
"""

from __future__ import annotations

import squidmesh
import squidmesh.testing

PUBLIC_API = [
    "Attempt",
    "AuditEvent",
    "Backoff",
    "ChildFailed",
    "ChildRun",
    "CompensationFailed",
    "ConcurrentChangeError",
    "ConflictError",
    "CronTrigger",
    "CurrentRun",
    "DatabaseExecutor",
    "Debounce",
    "Decision",
    "DeclaredStep",
    "DefinitionError",
    "DispatchError",
    "Entry",
    "Executor",
    "ExecutorCapabilities",
    "Explanation",
    "Fail",
    "HeartbeatTimeout",
    "History",
    "InlineExecutor",
    "InvalidArgumentError",
    "InvalidTransitionError",
    "Job",
    "LifecycleEvent",
    "ManualTrigger",
    "Mesh",
    "NonRetryable",
    "NondeterminismError",
    "PayloadError",
    "Queue",
    "Rate",
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
    "UnstorableValueError",
    "ValueTooLargeError",
    "WorkerLost",
    "WorkflowDefinition",
    "WorkflowSignal",
    "__version__",
    "approval",
    "child",
    "continue_as_new",
    "cron",
    "current_run",
    "first",
    "join",
    "log",
    "manual",
    "now",
    "patched",
    "pause",
    "publish",
    "random",
    "sleep",
    "sleep_until",
    "start_child",
    "step",
    "step_context",
    "undo",
    "uuid4",
    "wait_for_event",
    "workflow",
]

TESTING_API = [
    "TestRun",
    "Wait",
    "WorkflowTester",
    "assert_golden_histories",
    "raises",
    "replay",
]


def test_public_api_is_pinned() -> None:
    assert sorted(squidmesh.__all__) == sorted(PUBLIC_API)
    assert len(set(squidmesh.__all__)) == len(squidmesh.__all__)


def test_every_public_name_exists() -> None:
    missing = [name for name in squidmesh.__all__ if not hasattr(squidmesh, name)]
    assert missing == []


def test_testing_api_is_pinned() -> None:
    assert sorted(squidmesh.testing.__all__) == sorted(TESTING_API)
    missing = [name for name in squidmesh.testing.__all__ if not hasattr(squidmesh.testing, name)]
    assert missing == []


# The public methods of ``sm.Mesh`` (SPEC section 4, plus count_runs for the console).
MESH_METHODS = [
    "approve_run",
    "cancel_run",
    "close",
    "count_runs",
    "drain",
    "explain_run",
    "export_history",
    "fire_cron",
    "fork_run",
    "get_published",
    "inspect_run",
    "list_runs",
    "migrate",
    "perform",
    "prune",
    "queues",
    "register",
    "reject_run",
    "replay_run",
    "resume_run",
    "send_event",
    "start_run",
    "subscribe",
    "unblock_run",
    "worker",
]

# Every method has an ``_async`` twin (SPEC section 17, declared in squidmesh/mesh.py).
MESH_ASYNC_METHODS = [f"{name}_async" for name in MESH_METHODS]


def test_mesh_methods_are_pinned() -> None:
    public = sorted(name for name in dir(squidmesh.Mesh) if not name.startswith("_"))
    assert public == sorted(MESH_METHODS + MESH_ASYNC_METHODS)
