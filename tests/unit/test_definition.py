"""``@sm.step`` and ``@sm.workflow``: what a definition accepts, refuses and carries."""

from __future__ import annotations

import inspect
from typing import Any

import pydantic
import pytest

import squidmesh as sm


class Provisions(pydantic.BaseModel):
    lembas: int
    rope: bool = False


class Errand(pydantic.BaseModel):
    ring_id: str


def _undo(**_: Any) -> None:
    return None


# --------------------------------------------------------------------------- steps


def test_bare_step_uses_function_name_and_default_options() -> None:
    @sm.step
    def pack_lembas(count: int) -> int:
        return count * 2

    assert isinstance(pack_lembas, sm.StepDefinition)
    assert pack_lembas.name == "pack_lembas"
    assert pack_lembas.retry == sm.Retry()
    assert pack_lembas.timeout is None
    assert pack_lembas.compensate is None
    assert (pack_lembas.irreversible, pack_lembas.compensatable, pack_lembas.transaction) == (
        False,
        True,
        False,
    )
    assert pack_lembas.is_async is False


def test_step_with_options_keeps_them() -> None:
    policy = sm.Retry(max_attempts=3, backoff=sm.Backoff.exponential(min=1, max=10))

    @sm.step(name="cross", retry=policy, timeout=30, compensate=_undo, transaction=True)
    def cross_moria(bearer: str) -> str:
        return bearer

    assert cross_moria.name == "cross"
    assert cross_moria.retry is policy
    assert cross_moria.timeout == 30.0
    assert cross_moria.compensate is _undo
    assert cross_moria.transaction is True


def test_fn_is_the_original_function_and_callable_directly() -> None:
    def pack_lembas(count: int) -> int:
        return count * 2

    wrapped = sm.step(pack_lembas)
    assert wrapped.fn is pack_lembas
    assert wrapped.fn(21) == 42


def test_calling_a_step_returns_a_step_call_and_runs_nothing() -> None:
    calls: list[int] = []

    @sm.step
    def count_me(n: int) -> int:
        calls.append(n)
        return n

    command = count_me(7)

    assert isinstance(command, sm.StepCall)
    assert command.step is count_me
    assert command.name == "count_me"
    assert command.arguments == {"n": 7}
    assert calls == []


def test_step_call_binds_positional_and_keyword_arguments_by_name() -> None:
    @sm.step
    def move(bearer: str, miles: int = 1) -> None:
        return None

    assert move("Frodo").arguments == {"bearer": "Frodo"}
    assert move("Sam", miles=3).arguments == {"bearer": "Sam", "miles": 3}


def test_wrong_arguments_raise_type_error_naming_the_step() -> None:
    @sm.step
    def pack_lembas(count: int) -> int:
        return count

    with pytest.raises(TypeError, match="pack_lembas"):
        pack_lembas(1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="pack_lembas"):
        pack_lembas()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="pack_lembas"):
        pack_lembas(count=1, extra=2)  # type: ignore[call-arg]


def _plain(a: int, b: int = 2, c: int = 3) -> None:
    return None


def _star(a: int, *rest: int, key: str = "k", **more: int) -> None:
    return None


def _positional_only(a: int, /, b: int = 2) -> None:
    return None


def _keyword_only(a: int, *, b: int) -> None:
    return None


_CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}),
    ((1,), {}),
    ((1, 2), {}),
    ((1, 2, 3), {}),
    ((1, 2, 3, 4), {}),
    ((1,), {"c": 9}),
    ((), {"c": 9, "a": 1}),
    ((), {"b": 5}),
    ((1,), {"a": 1}),
    ((1,), {"zz": 1}),
    ((1,), {"b": 2, "key": "x", "more": 4}),
]


@pytest.mark.parametrize("fn", [_plain, _star, _positional_only, _keyword_only])
def test_a_step_call_binds_its_arguments_as_signature_bind_does(fn: Any) -> None:
    # Step calls bind plain signatures without inspect's bind (a replay makes one call
    # per recorded step): the same arguments in the same order, or the same error.
    step = sm.step(fn)
    signature = inspect.signature(fn)
    for args, kwargs in _CALLS:
        try:
            expected = dict(signature.bind(*args, **kwargs).arguments)
        except TypeError as exc:
            with pytest.raises(TypeError) as caught:
                step(*args, **kwargs)
            assert str(caught.value) == f"step {step.name}: {exc}"
            continue
        arguments = step(*args, **kwargs).arguments
        assert list(arguments.items()) == list(expected.items()), (args, kwargs)


def test_options_returns_a_copy_and_leaves_the_original_untouched() -> None:
    @sm.step(timeout=5)
    def pack_lembas(count: int) -> int:
        return count

    retry = sm.Retry(max_attempts=4)
    faster = pack_lembas.options(timeout=1, retry=retry)

    assert faster is not pack_lembas
    assert faster.fn is pack_lembas.fn
    assert faster.name == "pack_lembas"
    assert (faster.timeout, faster.retry) == (1.0, retry)
    assert (pack_lembas.timeout, pack_lembas.retry) == (5.0, sm.Retry())
    assert faster(3).step is faster


def test_options_rejects_unknown_options() -> None:
    @sm.step
    def pack_lembas(count: int) -> int:
        return count

    with pytest.raises(sm.DefinitionError, match="retries"):
        pack_lembas.options(retries=3)


def test_options_revalidates_the_combined_options() -> None:
    @sm.step(irreversible=True)
    def burn_bridge() -> None:
        return None

    with pytest.raises(sm.DefinitionError):
        burn_bridge.options(compensate=_undo)
    with pytest.raises(sm.DefinitionError, match="timeout"):
        burn_bridge.options(timeout=0)


@pytest.mark.parametrize("timeout", [0, -1, -0.5])
def test_non_positive_timeout_is_refused(timeout: float) -> None:
    with pytest.raises(sm.DefinitionError, match=r"timeout must be > 0"):

        @sm.step(timeout=timeout)
        def slow() -> None:
            return None


def test_retry_must_be_a_retry_instance() -> None:
    not_a_policy: Any = 3
    with pytest.raises(sm.DefinitionError, match=r"sm\.Retry"):

        @sm.step(retry=not_a_policy)
        def flaky() -> None:
            return None


@pytest.mark.parametrize("flags", [{"irreversible": True}, {"compensatable": False}])
def test_compensate_conflicts_with_irreversible_or_non_compensatable(flags: dict[str, Any]) -> None:
    def launch() -> None:
        return None

    with pytest.raises(sm.DefinitionError, match="compensate"):
        sm.StepDefinition(launch, compensate=_undo, **flags)


def test_compensate_must_be_callable() -> None:
    not_callable: Any = "undo"
    with pytest.raises(sm.DefinitionError, match="compensate must be callable"):

        @sm.step(compensate=not_callable)
        def launch() -> None:
            return None


def test_irreversible_without_compensate_is_fine() -> None:
    @sm.step(irreversible=True)
    def send_email() -> None:
        return None

    assert send_email.irreversible is True


def test_generator_function_is_not_a_step() -> None:
    def lines():
        yield "a"

    with pytest.raises(sm.DefinitionError, match=r"generator.*@sm\.workflow"):
        sm.step(lines)


def test_async_generator_function_is_not_a_step() -> None:
    async def lines():
        yield "a"

    with pytest.raises(sm.DefinitionError, match="generator"):
        sm.step(lines)


def test_async_steps_are_accepted() -> None:
    @sm.step
    async def fetch(url: str) -> str:
        return url

    assert fetch.is_async is True
    assert inspect.iscoroutinefunction(fetch.fn)
    assert fetch("https://example.invalid").arguments == {"url": "https://example.invalid"}


def test_decode_arguments_rebuilds_pydantic_models() -> None:
    @sm.step
    def cross(bearer: str, provisions: Provisions) -> None:
        return None

    args, kwargs = cross.decode_arguments(
        {"bearer": "Frodo", "provisions": {"lembas": 11, "rope": True}}
    )

    assert args == []
    assert kwargs == {"bearer": "Frodo", "provisions": Provisions(lembas=11, rope=True)}
    assert isinstance(kwargs["provisions"], Provisions)


def test_decode_arguments_handles_positional_only_and_omitted_defaults() -> None:
    @sm.step
    def pack(provisions: Provisions, /, extra: int = 0) -> None:
        return None

    args, kwargs = pack.decode_arguments({"provisions": {"lembas": 2}})

    assert args == [Provisions(lembas=2)]
    assert kwargs == {}


# --------------------------------------------------------------------------- workflows


def test_bare_workflow_defaults() -> None:
    @sm.workflow
    def ring_errand(payload: None):
        yield sm.log("hi")

    assert isinstance(ring_errand, sm.WorkflowDefinition)
    assert ring_errand.name == "ring_errand"
    assert ring_errand.on_error == "suspend"
    assert ring_errand.version is None
    assert len(ring_errand.triggers) == 1
    default = ring_errand.default_trigger
    assert isinstance(default, sm.ManualTrigger)
    assert (default.name, default.payload) == ("manual", None)
    assert ring_errand.trigger() is default


def test_workflow_with_options() -> None:
    nightly = sm.cron("0 21 * * *", name="nightly", timezone="Etc/UTC")
    leave = sm.manual("leave_shire", payload=Errand)

    @sm.workflow(name="errand", triggers=[leave, nightly], version="2", on_error="fail")
    def ring_errand(payload: Errand):
        yield sm.log("hi")

    assert ring_errand.name == "errand"
    assert ring_errand.version == "2"
    assert ring_errand.on_error == "fail"
    assert ring_errand.triggers == (leave, nightly)
    assert ring_errand.default_trigger is leave
    assert ring_errand.trigger("nightly") is nightly
    assert ring_errand.trigger("leave_shire") is leave


def test_non_generator_function_is_not_a_workflow() -> None:
    def plain(payload: None) -> str:
        return "done"

    with pytest.raises(sm.DefinitionError, match="generator function"):
        sm.workflow(plain)  # type: ignore[arg-type]


def test_duplicate_trigger_names_are_refused() -> None:
    with pytest.raises(sm.DefinitionError, match="'go'"):

        @sm.workflow(triggers=[sm.manual("go"), sm.cron("* * * * *", name="go")])
        def twice(payload: None):
            yield sm.log("hi")


def test_triggers_must_be_trigger_objects() -> None:
    with pytest.raises(sm.DefinitionError, match="triggers"):

        @sm.workflow(triggers=["manual"])  # type: ignore[list-item]
        def wrong(payload: None):
            yield sm.log("hi")


def test_on_error_must_be_suspend_or_fail() -> None:
    bad_mode: Any = "ignore"
    with pytest.raises(sm.DefinitionError, match="on_error"):

        @sm.workflow(on_error=bad_mode)
        def wrong(payload: None):
            yield sm.log("hi")


def test_unknown_trigger_names_the_known_triggers() -> None:
    @sm.workflow(triggers=[sm.manual("leave_shire"), sm.cron("0 21 * * *", name="nightly")])
    def ring_errand(payload: None):
        yield sm.log("hi")

    with pytest.raises(sm.UnknownTriggerError) as info:
        ring_errand.trigger("weekly")

    assert isinstance(info.value, sm.SquidmeshError)
    message = str(info.value)
    assert "weekly" in message
    assert "leave_shire" in message
    assert "nightly" in message


# --------------------------------------------------------------------------- triggers


@pytest.mark.parametrize("expr", ["0 21 * * *", "0 0 21 * * *"])
def test_cron_accepts_five_or_six_fields(expr: str) -> None:
    trigger = sm.cron(expr)
    assert isinstance(trigger, sm.CronTrigger)
    assert (trigger.expr, trigger.name, trigger.timezone, trigger.catchup) == (
        expr,
        "cron",
        "UTC",
        "latest",
    )


@pytest.mark.parametrize("expr", ["", "* * * *", "0 0 0 21 * * *"])
def test_cron_refuses_wrong_field_count(expr: str) -> None:
    with pytest.raises(sm.DefinitionError, match="5 or 6 fields"):
        sm.cron(expr)


def test_cron_catchup_values() -> None:
    modes: list[Any] = ["latest", "all", "none"]
    for mode in modes:
        assert sm.cron("* * * * *", catchup=mode).catchup == mode
    bad_mode: Any = "some"
    with pytest.raises(sm.DefinitionError, match="catchup"):
        sm.cron("* * * * *", catchup=bad_mode)


@pytest.mark.parametrize("payload", [dict, Errand(ring_id="one"), "Errand"])
def test_trigger_payload_must_be_a_model_class(payload: Any) -> None:
    with pytest.raises(sm.DefinitionError, match="BaseModel"):
        sm.manual(payload=payload)
    with pytest.raises(sm.DefinitionError, match="BaseModel"):
        sm.cron("* * * * *", payload=payload)


def test_manual_trigger_needs_a_name() -> None:
    with pytest.raises(sm.DefinitionError):
        sm.manual("")
    assert sm.manual("go", payload=Errand).payload is Errand
