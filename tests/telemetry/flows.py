from __future__ import annotations

# The workflow the telemetry process tests run, in this process (to start runs) and in a
# `squidmesh worker` / `squidmesh drain` subprocess (tests.telemetry.otel_app).
from opentelemetry import trace

import squidmesh as sm


@sm.step
def charge(amount: int) -> str:
    with trace.get_tracer("host").start_as_current_span("POST /payments"):
        return f"receipt for {amount}"


@sm.step
def ship() -> str:
    return "shipped"


@sm.workflow
def order():
    receipt = yield charge(3)
    yield sm.log("charged", amount=3, receipt=receipt)
    return (yield ship())
