from __future__ import annotations

# Workflows and steps the runtime tests drive through ``sm.Mesh``.
#
# Everything is module-level so step and compensation references resolve by import in a
# "restarted" Mesh. Steps count their calls in ``CALLS``; behaviour switches live in
# ``FLAGS``; ``HOOKS`` lets a test run code from inside a step (e.g. cancel the run while
# the step is in flight). The ``reset`` autouse fixture in conftest clears all three.
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

import squidmesh as sm

CALLS: Counter[str] = Counter()
FLAGS: dict[str, Any] = {}
HOOKS: dict[str, Callable[[], object]] = {}
_lock = threading.Lock()


def reset() -> None:
    CALLS.clear()
    FLAGS.clear()
    HOOKS.clear()


def count(name: str) -> int:
    with _lock:
        CALLS[name] += 1
        return CALLS[name]


class Order(BaseModel):
    item: str
    qty: int = 1
    note: str = "none"


# --------------------------------------------------------------------------- chain / fork


@sm.step
def step_one(x: int) -> int:
    count("step_one")
    return x + 1


@sm.step
def step_two(x: int) -> int:
    count("step_two")
    return x * 10


@sm.step
def step_three(x: int) -> int:
    count("step_three")
    return x + 3


@sm.workflow(triggers=[sm.manual("place", payload=Order), sm.manual("plain")])
def chain(payload: Any):
    qty = payload.qty if payload is not None else 1
    a = yield step_one(qty)
    b = yield step_two(a)
    c = yield step_three(b)
    return {"a": a, "b": b, "c": c}


# --------------------------------------------------------------------------- reviews


@sm.step
def finish(tag: str) -> str:
    count(f"finish:{tag}")
    return f"done {tag}"


@sm.workflow
def gated():
    data = yield sm.pause("hold", reason="operator check")
    decision = yield sm.approval("vote")
    yield finish("gated")
    return {"data": data, "approved": decision.approved, "actor": decision.actor}


@sm.workflow
def approval_only():
    decision = yield sm.approval("vote")
    yield finish("approval_only")
    return decision.decision


@sm.workflow
def eventful():
    yield sm.pause("before_wait")
    data = yield sm.wait_for_event("go")
    return {"got": data}


@sm.workflow
def event_with_timeout():
    try:
        data = yield sm.wait_for_event("go", timeout=30)
    except sm.TimedOut:
        return "timed out"
    return data


@sm.workflow
def sleeper():
    yield sm.sleep(seconds=60)
    yield finish("sleeper")
    return "rested"


@sm.step
def quick() -> str:
    count("quick")
    return "quick"


@sm.workflow
def joiner():
    a, b = yield sm.join(quick(), sm.wait_for_event("other"))
    return [a, b]


# --------------------------------------------------------------------------- failures


@sm.step(retry=sm.Retry(max_attempts=3, backoff=sm.Backoff.fixed(10)))
def flaky() -> str:
    n = count("flaky")
    if n <= int(FLAGS.get("flaky_failures", 0)):
        raise RuntimeError(f"flaky failure {n}")
    return f"ok after {n}"


@sm.workflow
def flaky_flow():
    return (yield flaky())


@sm.step
def doomed_step() -> str:
    count("doomed_step")
    raise sm.NonRetryable("the bridge is out")


@sm.workflow
def doomed():
    return (yield doomed_step())


def undo_book(input: dict[str, Any], output: Any, failure: dict[str, Any] | None) -> str:
    count("undo_book")
    if FLAGS.get("undo_fails"):
        raise RuntimeError("the hotel lost the booking")
    FLAGS.setdefault("undo_failures_seen", []).append(failure)
    return f"unbooked {output}"


@sm.step(compensate=undo_book)
def book(what: str) -> str:
    count(f"book:{what}")
    return f"booking-{what}"


@sm.workflow
def failing():
    yield book("hotel")
    raise sm.Fail("the trip is off", details={"why": "weather"})


@sm.workflow
def undoable():
    yield book("car")
    yield sm.pause("wait_here")
    return "kept"


# --------------------------------------------------------------------------- replay guards


@sm.step(irreversible=True)
def launch() -> str:
    count("launch")
    return "launched"


@sm.step(compensatable=False)
def announce() -> str:
    count("announce")
    return "announced"


@sm.workflow
def irreversible_flow():
    yield launch()
    yield announce()
    return "gone"


# --------------------------------------------------------------------------- bugs


@sm.workflow
def buggy():
    first = yield finish("buggy-1")
    if FLAGS.get("bug", True):
        raise ZeroDivisionError("the workflow code has a bug")
    second = yield finish("buggy-2")
    return [first, second]


@sm.workflow(name="shifty")
def shifty_v1():
    yield step_one(1)
    yield sm.sleep(seconds=10)
    yield step_two(2)
    return "v1"


@sm.workflow(name="shifty")
def shifty_v2():
    yield step_three(1)  # changed: a different step at seq 0
    yield sm.sleep(seconds=10)
    yield step_two(2)
    return "v2"


# --------------------------------------------------------------------------- in flight


@sm.step
def slow(tag: str) -> str:
    count(f"slow:{tag}")
    hook = HOOKS.get("slow")
    if hook is not None:
        hook()
    return f"slow {tag}"


@sm.workflow
def in_flight():
    yield slow("a")
    yield sm.pause("after")
    return "never"


@sm.workflow
def other():
    yield finish("other")
    return "other"


@sm.step(retry=sm.Retry(max_attempts=3, backoff=sm.Backoff.fixed(600)))
def slow_flaky(tag: str) -> str:
    count(f"slow_flaky:{tag}")
    hook = HOOKS.get("slow")
    if hook is not None:
        hook()
    raise RuntimeError("the step failed while its run was being cancelled")


@sm.workflow
def in_flight_flaky():
    yield slow_flaky("a")
    return "never"


@sm.workflow
def early_event():
    data = yield sm.wait_for_event("go")
    return data


# --------------------------------------------------------------------------- transaction=True

HOST_TABLE = "host_rows"


@sm.step(transaction=True, retry=sm.Retry(max_attempts=3))
def insert_row(key: str) -> int:
    """Writes a host row in the runtime's transaction, then maybe fails after the write."""
    import sqlalchemy as sa

    ctx = sm.step_context()
    n = count("insert_row")
    statement = sa.text(f"INSERT INTO {HOST_TABLE} (key, attempt) VALUES (:key, :attempt)")
    params = {"key": key, "attempt": ctx.attempt}
    if FLAGS.get("via_session"):
        session = ctx.session()
        session.execute(statement, params)
        session.flush()
    else:
        ctx.connection.execute(statement, params)
    if n <= int(FLAGS.get("insert_failures", 0)):
        raise RuntimeError(f"failed after inserting (call {n})")
    if FLAGS.get("insert_fatal"):
        raise sm.NonRetryable("failed for good after inserting")
    return int(ctx.attempt)


@sm.workflow
def tx_flow():
    attempt = yield insert_row("k1")
    return attempt


class NotJson:
    """A return value that cannot be stored."""


@sm.step(transaction=True)
def insert_then_return_garbage(key: str) -> Any:
    import sqlalchemy as sa

    count("insert_then_return_garbage")
    sm.step_context().connection.execute(
        sa.text(f"INSERT INTO {HOST_TABLE} (key, attempt) VALUES (:key, 1)"), {"key": key}
    )
    return NotJson()


@sm.workflow
def tx_garbage_flow():
    yield insert_then_return_garbage("g1")
    return "unreachable"


@sm.workflow
def approval_with_timeout():
    try:
        decision = yield sm.approval("vote", timeout=60)
    except sm.TimedOut:
        return "nobody decided"
    return decision.decision
