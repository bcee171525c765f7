"""A workflow that uses every command with ``yield from``, for ``test_typed_results``.

The test type-checks this file with ``mypy --strict`` and no plugin, and compares each
``reveal_type`` with the type written in the ``# T:`` comment on its line; every line
marked ``# E: <code>`` must produce that mypy error (a wrong type is caught, so the
types are not ``Any``). It also runs the workflow, so the static types are checked
against the values the runtime really sends back.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from typing_extensions import reveal_type

import squidmesh as sm


class Receipt(BaseModel):
    order_id: str
    cents: int


@sm.step
def add(a: int, b: int) -> int:
    return a + b


@sm.step(retry=sm.Retry(max_attempts=2))
def charge(order_id: str, cents: int) -> Receipt:
    return Receipt(order_id=order_id, cents=cents)


@sm.step
async def fetch_rate(currency: str) -> float:
    return 1.25 if currency == "EUR" else 1.0


@sm.step(name="greeting", timeout=5)
async def greet(name: str) -> str:
    return f"hello {name}"


@sm.step
def nothing() -> None:
    return None


def describe(value: Any) -> str:
    """The runtime type of a value, spelled like mypy spells static types."""
    if isinstance(value, tuple):
        return f"tuple[{', '.join(describe(item) for item in value)}]"
    if isinstance(value, list):
        return f"list[{', '.join(describe(item) for item in value)}]"
    return type(value).__name__


@sm.workflow
def receipt_child(payload: Any) -> Generator[Any, Any, Receipt]:
    return (yield from charge("child", 7))


@sm.workflow
def typed(payload: Any) -> Generator[Any, Any, dict[str, Any]]:
    total = yield from add(1, 2)
    receipt = yield from charge("o-1", 4200)
    rate = yield from fetch_rate("EUR")
    hello = yield from greet("Frodo")
    patient = yield from charge.options(retry=sm.Retry(max_attempts=5))("o-2", 1)
    done = yield from nothing()  # E: func-returns-value
    yield from sm.sleep(seconds=1)
    yield from sm.log("typed", level="info")
    decision = yield from sm.approval("council")
    event = yield from sm.wait_for_event("ping")
    paused = yield from sm.pause("hold")
    pair = yield from sm.join(add(1, 1), charge("o-3", 3))
    trio = yield from sm.join(add(2, 2), fetch_rate("USD"), greet("Sam"))
    many = yield from sm.join(*[add(n, n) for n in range(3)])
    soft = yield from sm.join(add(5, 5), charge("o-4", 4), return_exceptions=True)
    winner = yield from sm.first(add(3, 3), greet("Pippin"))
    moment = yield from sm.now()
    token = yield from sm.uuid4()
    dice = yield from sm.random()
    new_code = yield from sm.patched("typed-v2")
    undone = yield from sm.undo()
    child = yield from sm.child(receipt_child)
    by_name = yield from sm.child("receipt_child")
    detached = yield from sm.start_child(receipt_child)
    capped = yield from sm.join(sm.child(receipt_child), add(1, 1), limit=1)
    yield from sm.publish("progress", {"done": 1})
    untyped = yield add(4, 4)
    if TYPE_CHECKING:
        reveal_type(total)  # T: int
        reveal_type(receipt)  # T: tests.typed.sample_workflow.Receipt
        reveal_type(rate)  # T: float
        reveal_type(hello)  # T: str
        reveal_type(patient)  # T: tests.typed.sample_workflow.Receipt
        reveal_type(add.fn)  # T: def (a: int, b: int) -> int
        reveal_type(add(1, 2))  # T: squidmesh.core.definition.StepCall[int]
        reveal_type(decision)  # T: squidmesh.core.commands.Decision
        reveal_type(event)  # T: Any
        reveal_type(paused)  # T: Any
        reveal_type(pair)  # T: tuple[int, tests.typed.sample_workflow.Receipt]
        reveal_type(trio)  # T: tuple[int, float, str]
        reveal_type(many)  # T: tuple[int, ...]
        reveal_type(soft[0])  # T: int | squidmesh.errors.StepFailed | squidmesh.errors.TimedOut
        reveal_type(winner)  # T: tuple[int, int | str]
        reveal_type(moment)  # T: datetime.datetime
        reveal_type(token)  # T: uuid.UUID
        reveal_type(dice)  # T: float
        reveal_type(new_code)  # T: bool
        reveal_type(undone)  # T: list[dict[str, Any]]
        # fmt: off
        reveal_type(receipt_child)  # T: squidmesh.core.definition.WorkflowDefinition[tests.typed.sample_workflow.Receipt]
        # fmt: on
        reveal_type(child)  # T: tests.typed.sample_workflow.Receipt
        reveal_type(by_name)  # T: Any
        reveal_type(detached)  # T: uuid.UUID
        reveal_type(capped)  # T: tuple[tests.typed.sample_workflow.Receipt, int]
        reveal_type(sm.continue_as_new())  # T: squidmesh.core.commands.ContinueAsNew
        # fmt: off
        reveal_type(iter(sm.continue_as_new()))  # T: typing.Generator[squidmesh.core.commands.ContinueAsNew, Any, Never]
        # fmt: on
        reveal_type(untyped)  # T: Any
        nap, note = iter(sm.sleep(1)), iter(sm.log("x"))
        reveal_type(nap)  # T: typing.Generator[squidmesh.core.commands.Sleep, Any, None]
        reveal_type(note)  # T: typing.Generator[squidmesh.core.commands.Log, Any, None]
        wrong: str = yield from add(1, 2)  # E: assignment
        yield wrong
        add("1", 2)  # E: arg-type
        fetch_rate(currency=3)  # E: call-overload
        _ = decision.approve  # E: attr-defined
    values = {
        "total": total,
        "receipt": receipt,
        "rate": rate,
        "hello": hello,
        "patient": patient,
        "done": done,
        "decision": decision,
        "event": event,
        "paused": paused,
        "pair": pair,
        "trio": trio,
        "many": many,
        "soft": soft,
        "winner": winner,
        "moment": moment,
        "token": token,
        "dice": dice,
        "new_code": new_code,
        "undone": undone,
        "child": child,
        "by_name": by_name,
        "detached": detached,
        "capped": capped,
        "untyped": untyped,
    }
    return {name: describe(value) for name, value in values.items()}
