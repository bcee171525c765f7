"""Workflows the console tests drive (unit tests and the browser tests)."""

from __future__ import annotations

import datetime as dt
import threading
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


#: flow control for the queues page: 2 charges at once, 1 per customer, 30 a minute
CHARGES = sm.Queue("charges", concurrency=2, key_concurrency=1, rate=sm.Rate(30, per=60))
#: set to let the charges the browser test holds running finish
RELEASE = threading.Event()


@sm.step(queue=CHARGES, key=lambda customer, cents: customer)
def charge(customer: str, cents: int) -> int:
    RELEASE.wait(30)
    return cents


@sm.workflow
def billing():
    charged = yield sm.join(
        *[charge(customer, cents) for customer, cents in (("acme", 5), ("acme", 7), ("bolt", 3))]
    )
    return sum(charged)


#: workflows with queued steps (kept apart from ALL: their steps need the database executor)
QUEUED = [billing]
