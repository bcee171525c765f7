"""Workflows the console tests drive (unit tests and the browser tests)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

import squidmesh as sm

FLAGS: dict[str, bool] = {}


class Order(BaseModel):
    item: str
    qty: int = 1
    rush: bool = False
    size: Literal["s", "m", "l"] = "m"
    due: dt.date | None = None
    tags: list[str] = Field(default_factory=list)


@sm.step
def prepare(item: str, qty: int) -> str:
    return f"{qty} x {item} prepared"


@sm.step
def ship(item: str) -> str:
    return f"{item} shipped"


@sm.workflow(triggers=[sm.manual("desk", payload=Order), sm.manual("api", payload=Order)])
def review(order: Order):
    prepared = yield prepare(order.item, order.qty)
    checked = yield sm.pause("check", reason="count the boxes")
    decision = yield sm.approval("sign_off")
    if not decision.approved:
        return {"prepared": prepared, "refused_by": decision.actor}
    shipped = yield ship(order.item)
    return {"prepared": prepared, "checked": checked, "shipped": shipped}


@sm.workflow
def waiter():
    data = yield sm.wait_for_event("go")
    return {"got": data}


@sm.step
def tally() -> int:
    return 42


@sm.workflow
def buggy():
    yield tally()
    if FLAGS.get("bug", True):
        raise ZeroDivisionError("the workflow code has a bug")
    return "fixed"


@sm.step(irreversible=True)
def launch(target: str) -> str:
    return f"launched at {target}"


@sm.workflow
def rocket():
    yield launch("moon")
    yield tally()
    return "gone"


ALL = [review, waiter, buggy, rocket]
