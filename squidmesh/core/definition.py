"""``@step`` and ``@workflow``: definitions, triggers and the options they carry."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar, overload

import pydantic
from typing_extensions import ParamSpec
from typing_extensions import TypeVar as DefaultTypeVar

from squidmesh.core import contracts, unyielded
from squidmesh.core.flow import Queue, flow_data, priority_value
from squidmesh.core.retry import Backoff, Retry
from squidmesh.core.yielding import Yieldable
from squidmesh.errors import (
    DefinitionError,
    PayloadError,
    UnknownTriggerError,
    UnknownWorkflowError,
)

__all__ = [
    "CronTrigger",
    "ManualTrigger",
    "StepCall",
    "StepDefinition",
    "StepPolicy",
    "Trigger",
    "WorkflowDefinition",
    "callable_ref",
    "cron",
    "manual",
    "registered_workflow",
    "step",
    "workflow",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
#: what a workflow returns (its generator's return type); ``Any`` when unannotated, and
#: for a bare ``WorkflowDefinition`` annotation (a default, PEP 696)
W = DefaultTypeVar("W", covariant=True, default=Any)

_STEP_OPTIONS = frozenset(
    {
        "name",
        "retry",
        "timeout",
        "heartbeat_timeout",
        "compensate",
        "irreversible",
        "compensatable",
        "transaction",
        "queue",
        "key",
        "priority",
    }
)


def callable_ref(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of a function: how a worker finds it again."""
    return f"{fn.__module__}:{fn.__qualname__}"


@dataclasses.dataclass(frozen=True)
class StepPolicy:
    """The options that govern a step call, recorded with it (its history entry's
    ``meta``): how a worker finds the function again (``ref``) and its compensation
    (``compensate``), the retry policy as recorded (``non_retryable`` by qualified name),
    its timeouts, and whether a replay may undo it (``irreversible``, ``compensatable``).
    """

    ref: str
    max_attempts: int = 1
    backoff: Backoff | None = None
    non_retryable: tuple[str, ...] = ()
    timeout: float | None = None
    heartbeat_timeout: float | None = None
    compensate: str | None = None
    irreversible: bool = False
    compensatable: bool = True
    transaction: bool = False

    @property
    def undoable(self) -> bool:
        """False for a step a replay must not run again without an explicit override."""
        return not self.irreversible and self.compensatable

    def to_json(self) -> dict[str, Any]:
        """The policy as recorded: its ``ref``, then only what differs from the
        defaults (``from_json`` gives the rest back). Every step entry carries it in
        its ``meta``, with each write and in each history load: the defaults spelled
        out were most of an entry's JSON, and most of what a cold resume parsed."""
        recorded: dict[str, Any] = {"ref": self.ref}
        if self.max_attempts != 1 or self.backoff is not None or self.non_retryable:
            recorded["retry"] = {
                "max_attempts": self.max_attempts,
                "backoff": self.backoff.to_json() if self.backoff else None,
                "non_retryable": list(self.non_retryable),
            }
        if self.timeout is not None:
            recorded["timeout"] = self.timeout
        if self.heartbeat_timeout is not None:
            recorded["heartbeat_timeout"] = self.heartbeat_timeout
        if self.compensate is not None:
            recorded["compensate"] = self.compensate
        if self.irreversible:
            recorded["irreversible"] = True
        if not self.compensatable:
            recorded["compensatable"] = False
        if self.transaction:
            recorded["transaction"] = True
        return recorded

    @classmethod
    def from_json(cls, meta: Mapping[str, Any]) -> StepPolicy:
        """The policy recorded in a step entry's ``meta`` (which holds other keys too).
        Keys an older version did not record take their defaults."""
        retry = meta.get("retry")
        retry = retry if isinstance(retry, Mapping) else {}
        backoff = retry.get("backoff")
        timeout, beat = meta.get("timeout"), meta.get("heartbeat_timeout")
        return cls(
            ref=str(meta.get("ref") or ""),
            max_attempts=int(retry.get("max_attempts", 1)),
            backoff=Backoff.from_json(dict(backoff)) if isinstance(backoff, Mapping) else None,
            non_retryable=tuple(str(n) for n in retry.get("non_retryable") or ()),
            timeout=float(timeout) if timeout is not None else None,
            heartbeat_timeout=float(beat) if beat is not None else None,
            compensate=str(meta["compensate"]) if meta.get("compensate") else None,
            irreversible=bool(meta.get("irreversible", False)),
            compensatable=meta.get("compensatable") is not False,
            transaction=bool(meta.get("transaction", False)),
        )


class _Arguments:
    """A step call's arguments by name, as ``inspect.Signature.bind`` gives them (those
    passed, in the order of the parameters).

    ``bind`` costs more than the rest of a step call, and a replay makes one call per
    recorded step: for a function whose parameters are all positional-or-keyword, a call
    that names each at most once and every required one is bound here directly. Any
    other function or call goes to ``bind``, for the same result or the same error."""

    __slots__ = ("_known", "_names", "_required", "_signature")

    def __init__(self, signature: inspect.Signature) -> None:
        self._signature = signature
        params = list(signature.parameters.values())
        plain = all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
        self._names: tuple[str, ...] | None = tuple(p.name for p in params) if plain else None
        self._known = frozenset(p.name for p in params)
        self._required = frozenset(p.name for p in params if p.default is p.empty)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = self._names
        if names is not None and len(args) <= len(names):
            given = dict(zip(names, args, strict=False))
            if kwargs:
                if any(key in given or key not in self._known for key in kwargs):
                    return self._bound(args, kwargs)
                given.update(kwargs)
                given = {name: given[name] for name in names if name in given}
            if self._required.issubset(given):
                return given
        return self._bound(args, kwargs)

    def _bound(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        return dict(self._signature.bind(*args, **kwargs).arguments)


class StepDefinition(Generic[P, R]):
    """A function wrapped by ``@sm.step``. Calling it returns a ``StepCall``; nothing runs.

    ``P`` and ``R`` are the wrapped function's parameters and return type, so ``.fn``
    keeps its exact signature. A call is a ``StepCall`` of what the step produces: ``R``
    for a ``def``, the awaited result for an ``async def`` (``R`` is then a coroutine).
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        compensate: Callable[..., Any] | None = None,
        irreversible: bool = False,
        compensatable: bool = True,
        transaction: bool = False,
        heartbeat_timeout: float | None = None,
        queue: Queue | None = None,
        key: Any = None,
        priority: int = 0,
    ) -> None:
        if not callable(fn):
            raise DefinitionError(f"@sm.step needs a function, got {fn!r}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise DefinitionError(
                f"step {fn.__qualname__} is a generator: steps are plain functions; "
                "use @sm.workflow for generators"
            )
        self.fn = fn
        self.name = name if name is not None else fn.__name__
        if not isinstance(self.name, str) or not self.name:
            raise DefinitionError(f"step name must be a non-empty string, got {self.name!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise DefinitionError(f"step {self.name}: retry must be sm.Retry(...), got {retry!r}")
        self.retry = retry or Retry()
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise DefinitionError(f"step {self.name}: timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = float(timeout) if timeout is not None else None
        if heartbeat_timeout is not None and (
            isinstance(heartbeat_timeout, bool)
            or not isinstance(heartbeat_timeout, (int, float))
            or heartbeat_timeout <= 0
        ):
            raise DefinitionError(
                f"step {self.name}: heartbeat_timeout must be > 0 seconds, "
                f"got {heartbeat_timeout!r}"
            )
        #: an attempt that has not called step_context().heartbeat() for this long is
        #: declared lost and retried per policy
        self.heartbeat_timeout = float(heartbeat_timeout) if heartbeat_timeout else None
        if compensate is not None and not callable(compensate):
            raise DefinitionError(f"step {self.name}: compensate must be callable")
        if compensate is not None and (irreversible or not compensatable):
            raise DefinitionError(
                f"step {self.name} declares compensate= but is irreversible/non-compensatable: "
                "drop one of the two"
            )
        self.compensate = compensate
        self.irreversible = bool(irreversible)
        self.compensatable = bool(compensatable)
        self.transaction = bool(transaction)
        if queue is not None and not isinstance(queue, Queue):
            raise DefinitionError(
                f"step {self.name}: queue must be sm.Queue(name, ...), got {queue!r}"
            )
        if key is not None and queue is None:
            raise DefinitionError(
                f"step {self.name}: key= needs queue= (a key counts against a queue's "
                "key_concurrency)"
            )
        #: the flow-control queue its attempts wait on for a slot (None: no limit)
        self.queue = queue
        #: the key of its calls: a function over the call's arguments (``@sm.step``) or a
        #: fixed value (``.options(key=...)``)
        self.key = key
        try:
            self.priority = priority_value(priority, where=f"step {self.name}")
        except ValueError as exc:
            raise DefinitionError(str(exc)) from None
        self.is_async = inspect.iscoroutinefunction(fn)
        self.ref = callable_ref(fn)
        self._signature = inspect.signature(fn)
        self._arguments = _Arguments(self._signature)
        functools.update_wrapper(self, fn)

    # An async step's call yields its awaited result: the first overload matches the
    # coroutine functions, the second everything else.
    @overload
    def __call__(
        self: StepDefinition[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> StepCall[T]: ...

    @overload
    def __call__(self: StepDefinition[P, T], *args: P.args, **kwargs: P.kwargs) -> StepCall[T]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> StepCall[Any]:
        try:
            arguments = self._arguments.bind(args, kwargs)
        except TypeError as exc:
            raise TypeError(f"step {self.name}: {exc}") from None
        # The key is taken here, in the workflow's code: a key function that raises or
        # returns what is not JSON is a bug there (the run is suspended with it).
        call: StepCall[Any] = StepCall(self, arguments, self.flow(arguments))
        unyielded.created(call)  # reported if workflow code never yields it
        return call

    def __repr__(self) -> str:
        return f"<step {self.name} ({self.ref})>"

    def options(self, **overrides: Any) -> StepDefinition[P, R]:
        """A copy with per-call overrides of the step options."""
        unknown = set(overrides) - _STEP_OPTIONS
        if unknown:
            raise DefinitionError(f"step {self.name}: unknown option(s) {sorted(unknown)}")
        current: dict[str, Any] = {
            "name": self.name,
            "retry": self.retry,
            "timeout": self.timeout,
            "heartbeat_timeout": self.heartbeat_timeout,
            "compensate": self.compensate,
            "irreversible": self.irreversible,
            "compensatable": self.compensatable,
            "transaction": self.transaction,
            "queue": self.queue,
            "key": self.key,
            "priority": self.priority,
        }
        current.update(overrides)
        return StepDefinition(self.fn, **current)

    @functools.cached_property
    def return_annotation(self) -> Any:
        """The declared return type, used to rebuild recorded results."""
        try:
            hints = typing.get_type_hints(self.fn)
        except Exception:  # unresolvable forward refs: fall back to plain JSON
            return Any
        return hints.get("return", Any)

    @functools.cached_property
    def parameter_annotations(self) -> dict[str, Any]:
        try:
            hints = typing.get_type_hints(self.fn)
        except Exception:
            hints = {}
        return {name: hints.get(name, Any) for name in self._signature.parameters}

    def decode_arguments(self, stored: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Rebuild typed call arguments from a stored input dict."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        hints = self.parameter_annotations
        for name, param in self._signature.parameters.items():
            if name not in stored:
                continue
            value = contracts.decode(stored[name], hints.get(name, Any))
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(value)
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update(value)
            elif param.kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[name] = value
        return args, kwargs

    def policy(self) -> StepPolicy:
        """The options that govern execution, recorded with each scheduled call."""
        comp = self.compensate
        return StepPolicy(
            ref=self.ref,
            max_attempts=self.retry.max_attempts,
            backoff=self.retry.backoff,
            non_retryable=self.retry.non_retryable_names,
            timeout=self.timeout,
            heartbeat_timeout=self.heartbeat_timeout,
            compensate=callable_ref(comp.fn if isinstance(comp, StepDefinition) else comp)
            if comp is not None
            else None,
            irreversible=self.irreversible,
            compensatable=self.compensatable,
            transaction=self.transaction,
        )

    def flow(self, arguments: Mapping[str, Any]) -> dict[str, Any] | None:
        """What the jobs of a call with ``arguments`` carry for flow control (its queue,
        key and priority), or None when the step has no queue."""
        key_fn = self.key if callable(self.key) else None
        return flow_data(
            self.queue,
            None if key_fn is not None else self.key,
            key_fn,
            self.priority,
            arguments,
            where=f"step {self.name}",
        )


@dataclasses.dataclass(frozen=True, eq=False)
class StepCall(Yieldable[T_co]):
    """The command a workflow yields to run a step: ``result = yield from my_step(...)``.

    ``T_co`` is the step's result (its return type; the awaited one for ``async def``).
    """

    step: StepDefinition[Any, Any]
    arguments: dict[str, Any]
    #: its flow-control queue, key and priority (``StepDefinition.flow``), or None
    flow: dict[str, Any] | None = None
    kind: typing.ClassVar[str] = "step"

    @property
    def name(self) -> str:
        return self.step.name

    def __repr__(self) -> str:
        return f"StepCall({self.step.name})"


@overload
def step(fn: Callable[P, R], /) -> StepDefinition[P, R]: ...


@overload
def step(
    *,
    name: str | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    compensate: Callable[..., Any] | None = None,
    irreversible: bool = False,
    compensatable: bool = True,
    transaction: bool = False,
    heartbeat_timeout: float | None = None,
    queue: Queue | None = None,
    key: Callable[..., Any] | None = None,
) -> Callable[[Callable[P, R]], StepDefinition[P, R]]: ...


def step(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    compensate: Callable[..., Any] | None = None,
    irreversible: bool = False,
    compensatable: bool = True,
    transaction: bool = False,
    heartbeat_timeout: float | None = None,
    queue: Queue | None = None,
    key: Callable[..., Any] | None = None,
) -> StepDefinition[P, R] | Callable[[Callable[P, R]], StepDefinition[P, R]]:
    """Declare a step: ``@sm.step`` or ``@sm.step(retry=..., timeout=...)``."""

    def wrap(f: Callable[P, R]) -> StepDefinition[P, R]:
        return StepDefinition(
            f,
            name=name,
            retry=retry,
            timeout=timeout,
            compensate=compensate,
            irreversible=irreversible,
            compensatable=compensatable,
            transaction=transaction,
            heartbeat_timeout=heartbeat_timeout,
            queue=queue,
            key=key,
        )

    if fn is not None:
        return wrap(fn)
    return wrap


# --------------------------------------------------------------------------- triggers


def _check_model(model: Any, where: str) -> type[pydantic.BaseModel] | None:
    if model is None:
        return None
    if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
        return model
    raise DefinitionError(f"{where}: payload must be a pydantic BaseModel class or None")


@dataclasses.dataclass(frozen=True)
class ManualTrigger:
    """Started by ``start_run``."""

    name: str = "manual"
    payload: type[pydantic.BaseModel] | None = None
    kind: typing.ClassVar[str] = "manual"


@dataclasses.dataclass(frozen=True)
class CronTrigger:
    """Started by the scheduler at each fire time of ``expr`` in ``timezone``."""

    expr: str
    name: str = "cron"
    timezone: str = "UTC"
    payload: type[pydantic.BaseModel] | None = None
    catchup: Literal["latest", "all", "none"] = "latest"
    kind: typing.ClassVar[str] = "cron"


Trigger = ManualTrigger | CronTrigger


def manual(name: str = "manual", payload: type[pydantic.BaseModel] | None = None) -> ManualTrigger:
    """A trigger for runs started through the API, with an optional payload model."""
    if not isinstance(name, str) or not name:
        raise DefinitionError(f"manual trigger name must be a non-empty string, got {name!r}")
    return ManualTrigger(name=name, payload=_check_model(payload, f"trigger {name}"))


def cron(
    expr: str,
    name: str | None = None,
    timezone: str = "UTC",
    payload: type[pydantic.BaseModel] | None = None,
    catchup: Literal["latest", "all", "none"] = "latest",
) -> CronTrigger:
    """A trigger fired on a cron schedule (``"0 21 * * *"``) in ``timezone``."""
    if not isinstance(expr, str) or len(expr.split()) not in (5, 6):
        raise DefinitionError(f"cron expression must have 5 or 6 fields, got {expr!r}")
    if catchup not in ("latest", "all", "none"):
        raise DefinitionError(f"cron catchup must be latest, all or none, got {catchup!r}")
    trigger_name = name or "cron"
    return CronTrigger(
        expr=expr,
        name=trigger_name,
        timezone=timezone,
        payload=_check_model(payload, f"trigger {trigger_name}"),
        catchup=catchup,
    )


# --------------------------------------------------------------------------- workflows

WorkflowFn = Callable[..., Generator[Any, Any, Any]]


class WorkflowDefinition(Generic[W]):
    """A generator function wrapped by ``@sm.workflow``.

    ``W`` is what the workflow returns (the third argument of its ``Generator[...]``
    return annotation), so ``result = yield from sm.child(wf)`` is typed ``W``.
    """

    def __init__(
        self,
        fn: Callable[..., Generator[Any, Any, W]],
        *,
        name: str | None = None,
        triggers: Sequence[Trigger] = (),
        version: str | None = None,
        on_error: Literal["suspend", "fail"] = "suspend",
        timeout: float | None = None,
        queue: Queue | None = None,
    ) -> None:
        if not inspect.isgeneratorfunction(fn):
            raise DefinitionError(
                f"workflow {getattr(fn, '__qualname__', fn)!r} must be a generator function "
                "(a def that yields commands); async generators are not supported"
            )
        self.fn = fn
        self.name = name if name is not None else fn.__name__
        if not isinstance(self.name, str) or not self.name:
            raise DefinitionError(f"workflow name must be a non-empty string, got {self.name!r}")
        trigger_list = list(triggers) or [manual()]
        seen: set[str] = set()
        for trig in trigger_list:
            if not isinstance(trig, (ManualTrigger, CronTrigger)):
                raise DefinitionError(
                    f"workflow {self.name}: triggers must be sm.manual(...) or sm.cron(...), "
                    f"got {trig!r}"
                )
            if trig.name in seen:
                raise DefinitionError(
                    f"workflow {self.name}: two triggers are named {trig.name!r}; name them apart"
                )
            seen.add(trig.name)
        self.triggers: tuple[Trigger, ...] = tuple(trigger_list)
        if on_error not in ("suspend", "fail"):
            raise DefinitionError(f"workflow {self.name}: on_error must be 'suspend' or 'fail'")
        self.on_error = on_error
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise DefinitionError(
                f"workflow {self.name}: timeout must be > 0 seconds, got {timeout!r}"
            )
        #: a run still active this many seconds after it was started is cancelled (with
        #: compensation), reason deadline_exceeded; ``start_run(deadline=)`` overrides it
        self.timeout = float(timeout) if timeout is not None else None
        if queue is not None and not isinstance(queue, Queue):
            raise DefinitionError(
                f"workflow {self.name}: queue must be sm.Queue(name, ...), got {queue!r}"
            )
        #: at most ``concurrency`` runs of the queue are active (``key_concurrency`` per
        #: ``start_run(key=)``); the others wait ``pending`` (explain reason ``queued``)
        self.queue = queue
        self.version = version
        self.ref = callable_ref(fn)
        self._takes_payload = len(inspect.signature(fn).parameters) > 0
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<workflow {self.name}>"

    def __call__(self, payload: Any = None) -> Generator[Any, Any, W]:
        return self.fn(payload) if self._takes_payload else self.fn()

    @functools.cached_property
    def result_annotation(self) -> Any:
        """The declared result type (``W`` of ``-> Generator[Y, S, W]``), used to rebuild
        a child run's recorded result in its parent; ``Any`` when not declared."""
        try:
            hints = typing.get_type_hints(self.fn)
        except Exception:  # unresolvable forward refs: fall back to plain JSON
            return Any
        returned = hints.get("return", Any)
        origin = typing.get_origin(returned)
        args = typing.get_args(returned)
        if origin in (Generator, typing.Generator) and len(args) == 3:
            return args[2]
        return Any

    @property
    def default_trigger(self) -> Trigger:
        return self.triggers[0]

    def trigger(self, name: str | None = None) -> Trigger:
        if name is None:
            return self.triggers[0]
        for trig in self.triggers:
            if trig.name == name:
                return trig
        raise UnknownTriggerError(
            workflow=self.name, trigger=name, known=[t.name for t in self.triggers]
        )

    def validate_payload(self, payload: Any, trigger: str | None = None) -> dict[str, Any]:
        """Validate a payload for a trigger and resolve its defaults, once."""
        trig = self.trigger(trigger)
        try:
            return contracts.validate_payload(trig.payload, payload)
        except PayloadError as exc:
            exc.args = (f"workflow {self.name}, trigger {trig.name}: {exc.message}",)
            exc.message = exc.args[0]
            raise

    def load_payload(self, stored: Mapping[str, Any], trigger: str | None = None) -> Any:
        return contracts.load_payload(self.trigger(trigger).payload, stored)


@overload
def workflow(fn: Callable[..., Generator[Any, Any, W]], /) -> WorkflowDefinition[W]: ...


@overload
def workflow(
    *,
    name: str | None = None,
    triggers: Sequence[Trigger] = (),
    version: str | None = None,
    on_error: Literal["suspend", "fail"] = "suspend",
    timeout: float | None = None,
    queue: Queue | None = None,
) -> Callable[[Callable[..., Generator[Any, Any, W]]], WorkflowDefinition[W]]: ...


def workflow(
    fn: Callable[..., Generator[Any, Any, W]] | None = None,
    /,
    *,
    name: str | None = None,
    triggers: Sequence[Trigger] = (),
    version: str | None = None,
    on_error: Literal["suspend", "fail"] = "suspend",
    timeout: float | None = None,
    queue: Queue | None = None,
) -> (
    WorkflowDefinition[W] | Callable[[Callable[..., Generator[Any, Any, W]]], WorkflowDefinition[W]]
):
    """Declare a workflow: a generator function that yields commands."""

    def wrap(f: Callable[..., Generator[Any, Any, W]]) -> WorkflowDefinition[W]:
        return WorkflowDefinition(
            f,
            name=name,
            triggers=triggers,
            version=version,
            on_error=on_error,
            timeout=timeout,
            queue=queue,
        )

    if fn is not None:
        return wrap(fn)
    return wrap


def registered_workflow(
    workflows: Mapping[str, WorkflowDefinition], workflow: str | WorkflowDefinition
) -> WorkflowDefinition:
    """The workflow registered under ``workflow``'s name; ``UnknownWorkflowError`` (with
    the closest registered name) when there is none."""
    name = workflow.name if isinstance(workflow, WorkflowDefinition) else workflow
    found = workflows.get(name) if isinstance(name, str) else None
    if found is None:
        raise UnknownWorkflowError(workflow=name, registered=workflows)
    return found
