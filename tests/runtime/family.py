from __future__ import annotations

# Workflows for the composition tests (child runs, capped fan-out, continue-as-new and
# published state), module-level so every Mesh of a test finds them by import. Steps
# count their calls in ``flows.CALLS`` (cleared by the autouse fixture).
from collections.abc import Generator
from typing import Any

from pydantic import BaseModel

import squidmesh as sm
from tests.runtime.flows import count


class Ask(BaseModel):
    n: int
    fail: bool = False
    review: bool = False


def undo_work(input: dict[str, Any], output: Any, failure: Any) -> str:
    count(f"undo:{input['n']}")
    return f"undid {input['n']}"


@sm.step(compensate=undo_work)
def work(n: int) -> int:
    count(f"work:{n}")
    return n * 2


@sm.workflow(triggers=[sm.manual(payload=Ask)])
def kid(ask: Ask) -> Generator[Any, Any, int]:
    """The child: doubles ``n`` (a compensated step), may wait for a review, may fail."""
    doubled = yield from work(ask.n)
    if ask.review:
        yield sm.approval("kid_review")
    if ask.fail:
        raise sm.Fail(f"kid {ask.n} refuses", details={"n": ask.n})
    return doubled


class Plan(BaseModel):
    items: list[int] = [1, 2, 3]
    limit: int | None = None
    review: bool = False
    fail: list[int] = []


@sm.workflow(triggers=[sm.manual(payload=Plan)])
def one_child(plan: Plan) -> Generator[Any, Any, int]:
    value = yield from sm.child(kid, {"n": plan.items[0], "review": plan.review})
    yield from work(100)
    return value


@sm.workflow(triggers=[sm.manual(payload=Plan)])
def fan_out(plan: Plan) -> Generator[Any, Any, list[int]]:
    calls = [
        sm.child(kid, {"n": n, "fail": n in plan.fail, "review": plan.review}) for n in plan.items
    ]
    results = yield from sm.join(*calls, limit=plan.limit)
    yield sm.publish("total", sum(results))
    return list(results)


@sm.workflow
def catching(payload: Any) -> Generator[Any, Any, dict[str, Any]]:
    try:
        yield from sm.child(kid, {"n": 4, "fail": True})
    except sm.ChildFailed as exc:
        return {
            "child_run_id": str(exc.child_run_id),
            "status": exc.child_status,
            "type": exc.error_type,
            "message": exc.error_message,
            "is_fail": exc.is_a(sm.Fail),
            "is_step_failed": isinstance(exc, sm.StepFailed),
        }
    return {}


@sm.workflow
def uncaught(payload: Any) -> Generator[Any, Any, int]:
    yield from work(1)
    return (yield from sm.child(kid, {"n": 4, "fail": True}))


@sm.workflow
def bad_payload(payload: Any) -> Generator[Any, Any, dict[str, Any]]:
    try:
        yield sm.child(kid, {"n": "not a number", "extra": 1})
    except sm.ChildFailed as exc:
        return {
            "child_run_id": exc.child_run_id,
            "status": exc.child_status,
            "type": exc.error_type,
            "message": exc.error_message,
        }
    return {}


@sm.workflow
def detaching(payload: Any) -> Generator[Any, Any, str]:
    run_id = yield from sm.start_child(kid, {"n": 7, "review": True})
    yield sm.approval("parent_review")
    return str(run_id)


@sm.workflow
def racing(payload: Any) -> Generator[Any, Any, list[Any]]:
    index, value = yield from sm.first(
        sm.child(kid, {"n": 1, "review": True}), sm.sleep(seconds=60)
    )
    return [index, value]


@sm.workflow
def keyed(payload: Any) -> Generator[Any, Any, int]:
    return (yield from sm.child(kid, {"n": 5}, key="kid-5"))


class Loop(BaseModel):
    round: int = 0
    until: int = 2


@sm.workflow(triggers=[sm.manual(payload=Loop)])
def looping(loop: Loop) -> Generator[Any, Any, int]:
    yield sm.publish("round", loop.round)
    yield from work(10 + loop.round)
    yield sm.sleep(seconds=5)
    if loop.round < loop.until:
        yield sm.continue_as_new(Loop(round=loop.round + 1, until=loop.until))
    return loop.round


@sm.workflow
def looping_parent(payload: Any) -> Generator[Any, Any, int]:
    """Waits for a child that continues as new twice: the last run's result arrives."""
    return (yield from sm.child(looping, {"until": 2}))


@sm.workflow
def publishing(payload: Any) -> Generator[Any, Any, str]:
    yield sm.publish("progress", {"done": 0, "of": 2})
    yield from work(1)
    yield sm.publish("progress", {"done": 1, "of": 2})
    yield sm.publish("status", "waiting for a person")
    yield sm.approval("go")
    yield from work(2)
    yield sm.publish("progress", {"done": 2, "of": 2})
    return "ok"


@sm.workflow
def grandparent(payload: Any) -> Generator[Any, Any, int]:
    """Three generations: cancelling it cancels its child, which cancels its own."""
    return (yield from sm.child(one_child, {"items": [9], "review": True}))


WORKFLOWS = [
    kid,
    one_child,
    fan_out,
    catching,
    uncaught,
    bad_payload,
    detaching,
    racing,
    keyed,
    looping,
    looping_parent,
    publishing,
    grandparent,
]


@sm.step(irreversible=True)
def fire() -> str:
    count("fire")
    return "fired"


@sm.workflow
def launch_child(payload: Any) -> Generator[Any, Any, str]:
    return (yield from fire())


@sm.workflow
def launcher(payload: Any) -> Generator[Any, Any, str]:
    """Its child completes an irreversible step: replaying it would fire again."""
    return (yield from sm.child(launch_child))


@sm.workflow
def keyed_review(payload: Any) -> Generator[Any, Any, Any]:
    """Waits for a keyed child that waits for a review; a second parent with the same key
    finds it running."""
    try:
        return (yield from sm.child(kid, {"n": 6, "review": True}, key="kid-6"))
    except sm.ChildFailed as exc:
        return {"status": exc.child_status, "child": str(exc.child_run_id), "why": str(exc)}


@sm.workflow
def keyed_detached(payload: Any) -> Generator[Any, Any, str]:
    return str((yield from sm.start_child(kid, {"n": 6, "review": True}, key="kid-6")))
