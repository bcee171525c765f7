"""Order fulfilment: a saga. Reserve the inventory, charge the card, ship the parcel.

Each step has a compensation that undoes it: release the reservation, refund the charge,
cancel the shipment. When a step fails for good, squidmesh runs the compensations of the
steps that completed, newest first, records each outcome, and the run ends ``failed``.
A shipment to Mordor always fails (no carrier goes there), so this example needs no stubs
to show the rollback: the charge is refunded, then the inventory released.

``fulfil_order_or_apologise`` is the ``sm.undo()`` variant: instead of failing, it
catches the failed shipment, undoes what completed so far (same compensations, same
order), e-mails an apology and completes normally.
tests/examples/test_examples.py drives every path; examples/fastapi_app serves both.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

import squidmesh as sm


class Order(BaseModel):
    """The payload of the ``checkout`` trigger."""

    order_id: str = Field(min_length=1)
    items: list[str] = Field(min_length=1)
    amount_cents: int = Field(gt=0)
    address: str = "Bag End, Hobbiton"


class Reservation(BaseModel):
    reservation_id: str
    items: list[str]


class Charge(BaseModel):
    charge_id: str
    amount_cents: int


class Shipment(BaseModel):
    tracking: str
    address: str


def release_inventory(
    input: dict[str, Any], output: dict[str, Any], failure: dict[str, Any] | None
) -> str:
    """Compensation for ``reserve_inventory``."""
    return f"released {output['reservation_id']}"


def refund_card(
    input: dict[str, Any], output: dict[str, Any], failure: dict[str, Any] | None
) -> str:
    """Compensation for ``charge_card``: refund exactly what was charged."""
    return f"refunded {output['amount_cents']} cents of {output['charge_id']}"


def cancel_shipment(
    input: dict[str, Any], output: dict[str, Any], failure: dict[str, Any] | None
) -> str:
    """Compensation for ``ship``: recall the parcel."""
    return f"recalled {output['tracking']}"


@sm.step(compensate=release_inventory)
def reserve_inventory(order_id: str, items: list[str]) -> Reservation:
    return Reservation(reservation_id=f"res-{order_id}", items=items)


@sm.step(
    compensate=refund_card,
    retry=sm.Retry(max_attempts=3, backoff=sm.Backoff.exponential(min=1, max=30)),
)
def charge_card(order_id: str, amount_cents: int) -> Charge:
    # Call the payment provider here with sm.step_context().idempotency_key: it is the
    # same on every attempt, so a retried attempt never charges twice.
    return Charge(charge_id=f"ch-{order_id}", amount_cents=amount_cents)


@sm.step(
    compensate=cancel_shipment,
    retry=sm.Retry(max_attempts=3, backoff=sm.Backoff.exponential(min=5, max=60)),
)
def ship(order_id: str, address: str) -> Shipment:
    if "mordor" in address.lower():
        raise sm.NonRetryable(f"no carrier delivers to {address}")
    return Shipment(tracking=f"trk-{order_id}", address=address)


@sm.step
def email_apology(order_id: str, reason: str) -> str:
    return f"apologised for {order_id}: {reason}"


@sm.workflow(triggers=[sm.manual("checkout", payload=Order)])
def fulfil_order(order: Order):
    reservation = yield from reserve_inventory(order.order_id, order.items)
    charge = yield from charge_card(order.order_id, order.amount_cents)
    shipment = yield from ship(order.order_id, order.address)  # a failure here rolls back
    return {
        "reservation": reservation.reservation_id,
        "charge": charge.charge_id,
        "tracking": shipment.tracking,
    }


@sm.workflow(triggers=[sm.manual("checkout", payload=Order)])
def fulfil_order_or_apologise(order: Order):
    yield reserve_inventory(order.order_id, order.items)
    yield charge_card(order.order_id, order.amount_cents)
    try:
        shipment = yield from ship(order.order_id, order.address)
    except sm.StepFailed as failed:
        undone = yield from sm.undo()  # refund, then release: newest completion first
        yield email_apology(order.order_id, failed.error_message)
        return {"status": "cancelled", "undone": [outcome["step"] for outcome in undone]}
    return {"status": "shipped", "tracking": shipment.tracking}
