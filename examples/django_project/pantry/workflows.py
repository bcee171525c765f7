"""The pantry's workflow, discovered by squidmesh.contrib.django (an app's
``workflows`` module). An order above 100.00 waits for a manager's approval (in the
admin); then a ``transaction=True`` step writes the ``Invoice`` with the Django ORM, in
the very transaction that records the step's completion: one invoice per order,
whatever fails or is retried."""

from __future__ import annotations

from pydantic import BaseModel, Field

import squidmesh as sm

APPROVAL_ABOVE_CENTS = 100_00


class Order(BaseModel):
    order_ref: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(gt=0)


@sm.step
def check_stock(order_ref: str) -> bool:
    return True  # ask the warehouse here


@sm.step(transaction=True, retry=sm.Retry(max_attempts=3))
def issue_invoice(order_ref: str, amount_cents: int) -> int:
    from examples.django_project.pantry.models import Invoice  # models need Django set up

    invoice = Invoice.objects.create(
        order_ref=order_ref, amount_cents=amount_cents, run_id=sm.step_context().run_id
    )
    return invoice.pk


@sm.workflow(triggers=[sm.manual("order", payload=Order)])
def pantry_order(order: Order):
    yield from check_stock(order.order_ref)
    if order.amount_cents > APPROVAL_ABOVE_CENTS:
        decision = yield from sm.approval("manager_approval")
        if not decision.approved:
            return f"refused by {decision.actor}"
    invoice = yield from issue_invoice(order.order_ref, order.amount_cents)
    return f"invoice {invoice}"
