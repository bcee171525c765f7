"""Flow control in the runtime: queued steps wait for a slot, on every store.

The store contract (tests/contract/test_flow_contract.py) proves the claim's counting;
these tests prove the runtime hands queued steps to it: a queued step's jobs carry its
queue, key and priority, are never begun eagerly, and a worker's threads never run more
of them at once than the queue allows. Real processes on PostgreSQL: tests/worker.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

import squidmesh as sm
from squidmesh.runtime.perform import FAIR_RECHECK_SECONDS, Lease
from tests.runtime.support import MeshFactory, claim_all

PAIR = sm.Queue("test-flow-pair", concurrency=2, key_concurrency=1)
STATE: dict[str, Any] = {}


def _reset() -> None:
    STATE.clear()
    STATE.update(lock=threading.Lock(), running=0, peak=0, per_key={}, key_peak=0)


@sm.step(queue=PAIR, key=lambda customer, n: customer)
def charge(customer: str, n: int) -> int:
    with STATE["lock"]:
        STATE["running"] += 1
        STATE["peak"] = max(STATE["peak"], STATE["running"])
        per_key = STATE["per_key"]
        per_key[customer] = per_key.get(customer, 0) + 1
        STATE["key_peak"] = max(STATE["key_peak"], per_key[customer])
    time.sleep(0.02)
    with STATE["lock"]:
        STATE["running"] -= 1
        per_key[customer] -= 1
    return n


@sm.workflow
def billing() -> Any:
    calls = [charge(customer=f"c{i % 3}", n=i) for i in range(9)]
    results = yield sm.join(*calls)
    return sum(results)


@sm.workflow
def one_charge() -> Any:
    return (yield charge(customer="solo", n=1))


@sm.step(queue=PAIR, key=lambda **kw: 1 / 0)
def broken_key() -> None:
    return None


@sm.step(queue=PAIR, key=lambda **kw: object())
def opaque_key() -> None:
    return None


@sm.workflow
def with_broken_key() -> Any:
    yield broken_key()


@sm.workflow
def with_opaque_key() -> Any:
    yield opaque_key()


def _wait(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_queued_jobs_carry_queue_key_and_priority(mesh_factory: MeshFactory) -> None:
    _reset()
    mesh = mesh_factory([one_charge], executor="database")
    run = mesh.start_run(one_charge)
    mesh.drain(limit=1)  # the activation: it schedules the step
    with mesh.store.transaction() as tx:
        jobs = tx.load_jobs(str(run.id))
    assert [(q.job.kind, q.job.data) for q in jobs] == [
        ("step", {"queue": PAIR.name, "flow_key": "solo", "priority": 0})
    ]
    assert mesh.drain() >= 1
    assert mesh.inspect_run(run.id).result == 1


def test_options_set_key_and_priority_per_call() -> None:
    call = charge.options(key={"tenant": 7}, priority=5)(customer="x", n=1)
    assert call.step.flow(call.arguments) == {
        "queue": PAIR.name,
        "flow_key": '{"tenant":7}',
        "priority": 5,
    }
    with pytest.raises(sm.DefinitionError, match="key= needs queue="):
        sm.step(key=lambda: "k")(lambda: None)
    with pytest.raises(sm.DefinitionError, match="priority must be an int"):
        charge.options(priority="high")


def test_a_worker_never_runs_more_than_the_queue_allows(mesh_factory: MeshFactory) -> None:
    _reset()
    mesh = mesh_factory([billing], executor="database")
    run = mesh.start_run(billing)
    worker = mesh.worker(concurrency=8, poll_interval=0.05)
    try:
        _wait(lambda: mesh.inspect_run(run.id).status == "completed", "the run to complete")
    finally:
        worker.stop()
    assert mesh.inspect_run(run.id).result == sum(range(9))
    assert STATE["peak"] <= 2
    assert STATE["key_peak"] == 1


@pytest.mark.parametrize(
    ("workflow", "message"),
    [(with_broken_key, "key function .* raised ZeroDivisionError"), (with_opaque_key, "JSON")],
)
def test_a_bad_key_function_suspends_the_run_with_what_to_fix(
    mesh_factory: MeshFactory, workflow: sm.WorkflowDefinition, message: str
) -> None:
    mesh = mesh_factory([workflow], executor="database")
    run = mesh.start_run(workflow)
    mesh.drain()
    explained = mesh.explain_run(run.id)
    assert explained.status == "suspended", explained
    assert re.search(message, str(explained.details) + str(mesh.inspect_run(run.id).error))


# --------------------------------------------------------------------------- start and end

UNDONE: list[str] = []


@sm.step
def reserve(item: str) -> str:
    return item


def _unreserve(**kw: Any) -> None:
    UNDONE.append(kw["output"])


reserve_undoable = reserve.options(compensate=_unreserve)


@sm.workflow(timeout=60)
def nightly() -> Any:
    got = yield reserve_undoable("room")
    yield sm.approval("manager")  # waits past the deadline
    return got


@sm.workflow
def quick() -> Any:
    return (yield reserve("x"))


def test_delayed_start_waits_pending_with_scheduled_start(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([quick], executor="database")
    now = mesh_factory.clock()
    run = mesh.start_run(quick, delay=30)
    assert mesh.drain() == 0  # not due yet
    why = mesh.explain_run(run.id)
    assert (why.status, why.reason) == ("pending", "scheduled_start")
    assert why.details == {"start_at": (now + timedelta(seconds=30)).isoformat()}
    mesh_factory.clock.advance(30)
    mesh.drain()
    assert mesh.inspect_run(run.id).status == "completed"
    at = mesh.start_run(quick, start_at=now + timedelta(seconds=90))
    assert mesh.explain_run(at.id).reason == "scheduled_start"


def test_a_run_started_now_is_never_called_scheduled_by_a_lagging_clock(
    mesh_factory: MeshFactory,
) -> None:
    # The explaining process's estimate of the database clock may lag the one that
    # created the run by a few milliseconds (seen in CI: a web process explaining a run
    # it had just started said "scheduled_start").
    mesh = mesh_factory([quick], executor="database")
    run = mesh.start_run(quick)
    mesh_factory.clock.now -= timedelta(milliseconds=3)
    assert mesh.explain_run(run.id).reason == "pending_dispatch"


def give_back(
    mesh_factory: MeshFactory, mesh: sm.Mesh, seconds: float, failure: str | None
) -> None:
    """Claim every due job and give it back due ``seconds`` later, as a worker whose
    performing raised does (``failure`` None: a transient error, not counted)."""
    for job in claim_all(mesh.store, mesh_factory.clock()):
        with mesh.store.transaction() as tx:
            tx.release_job(
                int(job.id or 0),
                run_at=mesh_factory.clock() + timedelta(seconds=seconds),
                failure=failure,
                park_after=10,
            )


def test_a_start_given_back_after_a_failure_is_not_called_scheduled(
    mesh_factory: MeshFactory,
) -> None:
    # A worker whose activation raised (the database went away, say) gives the job back
    # due a little later: that is a retry of the dispatch, not a start someone asked to
    # have later, and explain_run says why the run waits.
    mesh = mesh_factory([quick], executor="database")
    run = mesh.start_run(quick)
    give_back(mesh_factory, mesh, 4, "OperationalError: the connection was lost")
    why = mesh.explain_run(run.id)
    assert (why.status, why.reason) == ("pending", "pending_dispatch")
    assert why.details == {
        "retry_at": (mesh_factory.clock() + timedelta(seconds=4)).isoformat(),
        "failures": 1,
        "last_error": "OperationalError: the connection was lost",
    }
    mesh_factory.clock.advance(4)
    mesh.drain()
    assert mesh.inspect_run(run.id).status == "completed"


def test_a_start_given_back_after_a_transient_error_is_not_called_scheduled(
    mesh_factory: MeshFactory,
) -> None:
    # A transient error (a lost connection, a concurrent change) gives the activation
    # back without counting a failure, due a little later: still not a start someone
    # asked to have later (seen in CI: a web app explaining a run it had just started
    # said "scheduled_start").
    mesh = mesh_factory([quick], executor="database")
    run = mesh.start_run(quick)
    give_back(mesh_factory, mesh, 1, None)
    assert mesh.explain_run(run.id).reason == "pending_dispatch"
    # A start asked for later is scheduled until then; once due and given back the
    # same way, it waits for its dispatch.
    later = mesh.start_run(quick, delay=30)
    assert mesh.explain_run(later.id).reason == "scheduled_start"
    mesh_factory.clock.advance(30)
    give_back(mesh_factory, mesh, 1, None)
    assert mesh.explain_run(later.id).reason == "pending_dispatch"
    mesh_factory.clock.advance(1)
    mesh.drain()
    assert mesh.inspect_run(run.id).status == "completed"
    assert mesh.inspect_run(later.id).status == "completed"


def test_a_run_active_at_its_deadline_is_cancelled_with_compensation(
    mesh_factory: MeshFactory,
) -> None:
    UNDONE.clear()
    mesh = mesh_factory([nightly], executor="database")
    run = mesh.start_run(nightly)
    mesh.drain()
    assert mesh.inspect_run(run.id).status == "paused"
    mesh_factory.clock.advance(59)
    mesh.drain()
    assert mesh.inspect_run(run.id).status == "paused"
    mesh_factory.clock.advance(1)
    mesh.drain()
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status == "cancelled"
    assert UNDONE == ["room"]
    assert done.audit_events is not None
    types = [e.type for e in done.audit_events]
    assert "timed_out" in types and types.index("timed_out") < types.index("cancelled")
    why = mesh.explain_run(run.id)
    assert why.reason == "deadline_exceeded"
    assert why.details["deadline"] is not None


def test_a_run_that_ends_in_time_is_left_alone_by_its_deadline(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory([quick], executor="database")
    deadline = mesh_factory.clock() + timedelta(seconds=5)
    run = mesh.start_run(quick, deadline=deadline)
    mesh.drain()
    mesh_factory.clock.advance(10)
    mesh.drain()
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status == "completed"
    assert done.audit_events is not None
    assert "timed_out" not in [e.type for e in done.audit_events]


def test_bad_start_and_deadline_arguments_persist_nothing(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([quick], executor="database")
    now = mesh_factory.clock()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"delay": -1}, "delay must be >= 0"),
        ({"delay": 5, "start_at": now}, "not both"),
        ({"start_at": now.replace(tzinfo=None)}, "timezone-aware"),
        ({"deadline": now - timedelta(seconds=1)}, "not after the start"),
        ({"deadline": "tomorrow"}, "timezone-aware"),
    ]
    for kwargs, message in cases:
        with pytest.raises(sm.InvalidArgumentError, match=message):
            mesh.start_run(quick, **kwargs)
    assert mesh.list_runs() == []
    with pytest.raises(sm.DefinitionError, match="timeout must be > 0"):
        sm.workflow(timeout=0)(quick.fn)


SLOW_API = sm.Queue("test-flow-slow-api", rate=sm.Rate(1, per=60))


@sm.step(queue=SLOW_API)
def call_api(n: int) -> int:
    return n


@sm.workflow
def two_calls() -> Any:
    first = yield call_api(1)
    second = yield call_api(2)
    return first + second


def test_a_step_over_its_queue_s_rate_is_rate_limited(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([two_calls], executor="database")
    run = mesh.start_run(two_calls)
    mesh.drain()
    why = mesh.explain_run(run.id)
    assert (why.reason, why.step) == ("rate_limited", "call_api")
    assert why.details["started_in_window"] == 1
    assert why.details["limit"]["rate"] == {"limit": 1, "per": 60.0}
    (state,) = [q for q in mesh.queues() if q.name == SLOW_API.name]
    assert (state.running, state.waiting, state.started_in_window) == (0, 1, 1)
    mesh_factory.clock.advance(60)
    mesh.drain()
    assert mesh.inspect_run(run.id).result == 3


# A worker carries a slot from one step of a run to the next (no claim in between); it
# yields it to waiting work with a better claim (another key) once the slot was last
# judged fair FAIR_RECHECK_SECONDS ago, so a waiting key's wait stays bounded.
SINGLE = sm.Queue("test-flow-single", concurrency=1)
TURNS: dict[str, Any] = {"order": [], "tick": 0.0}


@sm.step(queue=SINGLE, key=lambda who, n: who)
def turn(who: str, n: int) -> int:
    TURNS["order"].append(f"{who}{n}")
    TURNS["clock"].advance(TURNS["tick"])  # how long the step took, on the test's clock
    return n


@sm.workflow
def three_turns() -> Any:
    total = 0
    for n in (1, 2, 3):
        total += yield turn(who="a", n=n)
    return total


@sm.workflow
def one_turn() -> Any:
    return (yield turn(who="b", n=1))


def _work_like_a_worker(mesh: sm.Mesh, clock: Any) -> None:
    """Claim one job at a time with the queue known and run it with a lease, each
    step's successor at once when the slot passes (as a worker thread does)."""
    while True:
        now = clock()
        with mesh.store.transaction() as tx:
            jobs = tx.claim_jobs(
                now=now,
                limit=1,
                worker="test-worker",
                lease_until=now + timedelta(minutes=5),
                queues={SINGLE.name: SINGLE},
            )
        if not jobs:
            return
        job: sm.Job | None = jobs[0]
        lease = Lease("test-worker", 300, claimed_at=now)
        while job is not None:
            job = mesh.runner.perform(job, lease)
            lease = Lease("test-worker", 300)


@pytest.mark.parametrize(
    ("tick", "order"),
    [
        # steps faster than the recheck: the slot passes through the run's steps
        (0.0, ["a1", "a2", "a3", "b1"]),
        # a step as long as the recheck: the next one asks, and key b goes first
        (None, ["a1", "b1", "a2", "a3"]),
    ],
)
def test_a_passed_slot_yields_to_another_key_once_judged_again(
    mesh_factory: MeshFactory, tick: float | None, order: list[str]
) -> None:
    TURNS.update(order=[], clock=mesh_factory.clock)
    TURNS["tick"] = FAIR_RECHECK_SECONDS if tick is None else tick
    mesh = mesh_factory([three_turns, one_turn], executor="database")
    a = mesh.start_run(three_turns)
    b = mesh.start_run(one_turn)
    for activation in claim_all(mesh.store, mesh_factory.clock()):  # a1 and b1 wait
        mesh.runner.perform(activation, Lease("test-worker", 300, eager=False))
    _work_like_a_worker(mesh, mesh_factory.clock)
    assert TURNS["order"] == order
    assert (mesh.inspect_run(a.id).result, mesh.inspect_run(b.id).result) == (6, 1)


# --------------------------------------------------------------------------- run queues

ONE_AT_A_TIME = sm.Queue("test-flow-runs", concurrency=2, key_concurrency=1)


@sm.workflow(queue=ONE_AT_A_TIME)
def onboarding() -> Any:
    yield sm.approval("welcome")
    return "onboarded"


def test_a_workflow_queue_admits_runs_up_to_its_limits(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([onboarding, quick], executor="database")
    a1 = mesh.start_run(onboarding, key="acme")
    a2 = mesh.start_run(onboarding, key="acme")
    b1 = mesh.start_run(onboarding, key="bolt")
    c1 = mesh.start_run(onboarding, key="cobra", priority=5)
    mesh.drain()
    status = [mesh.inspect_run(r.id).status for r in (a1, a2, b1, c1)]
    # two active at most; one per key; the higher priority first
    assert status == ["paused", "pending", "pending", "paused"]
    why = mesh.explain_run(b1.id)
    assert why.reason == "queued"
    assert why.details["queue"] == ONE_AT_A_TIME.name and why.details["key"] == "bolt"
    assert why.details["position"] == 2  # a2 was started first
    assert why.details["limit"]["concurrency"] == 2
    (state,) = [q for q in mesh.queues() if q.name == ONE_AT_A_TIME.name]
    assert (state.running, state.waiting) == (2, 2)
    mesh.approve_run(a1.id, actor="ops")
    mesh.drain()
    assert mesh.inspect_run(a1.id).status == "completed"
    # a1's slot goes to the key served least recently: bolt (acme just had one)
    assert mesh.inspect_run(b1.id).status == "paused"
    assert mesh.inspect_run(a2.id).status == "pending"
    mesh.cancel_run(c1.id)
    mesh.drain()
    assert mesh.inspect_run(a2.id).status == "paused"
    assert mesh.explain_run(c1.id).reason == "cancelled"
    with pytest.raises(sm.InvalidArgumentError, match="need a workflow declared with"):
        mesh.start_run(quick, key="k")


SINGLE = sm.Queue("test-flow-single", concurrency=1)


@sm.workflow(queue=SINGLE)
def reviewed() -> Any:
    yield sm.approval("review")
    return "reviewed"


@sm.workflow
def two_reviews() -> Any:
    return (yield sm.join(sm.child(reviewed), sm.child(reviewed)))


class Roll(BaseModel):
    n: int = 0


@sm.workflow(queue=SINGLE, triggers=[sm.manual(payload=Roll)])
def rolling(roll: Roll) -> Any:
    if roll.n < 1:
        yield sm.continue_as_new({"n": roll.n + 1})
    yield sm.approval("next")
    return roll.n


def test_child_runs_wait_for_their_workflow_s_queue_like_any_run(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory([two_reviews, reviewed], executor="database")
    parent = mesh.start_run(two_reviews)
    mesh.drain()
    children = mesh.inspect_run(parent.id, include_history=True).children or ()
    assert len(children) == 2
    status = sorted(mesh.inspect_run(c.run_id).status for c in children)
    assert status == ["paused", "pending"]  # the queue admits one run at a time
    (waiting,) = [c for c in children if mesh.inspect_run(c.run_id).status == "pending"]
    assert mesh.explain_run(waiting.run_id).reason == "queued"
    (first,) = [c for c in children if c.run_id != waiting.run_id]
    mesh.approve_run(first.run_id, actor="ops")
    mesh.drain()
    assert mesh.inspect_run(waiting.run_id).status == "paused"  # its turn now
    mesh.approve_run(waiting.run_id, actor="ops")
    mesh.drain()
    assert mesh.inspect_run(parent.id).result == ["reviewed", "reviewed"]


def test_a_run_continued_as_new_waits_for_its_queue_again(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([rolling, reviewed], executor="database")
    other = mesh.start_run(reviewed)
    mesh.drain()
    assert mesh.inspect_run(other.id).status == "paused"  # holds the queue's one slot
    first = mesh.start_run(rolling)
    mesh.drain()
    assert mesh.inspect_run(first.id).status == "pending"  # queued behind it
    mesh.approve_run(other.id, actor="ops")
    mesh.drain()
    done = mesh.inspect_run(first.id)
    assert (done.status, done.reason) == ("completed", "continued_as_new")
    nxt = mesh.inspect_run(str(done.continued_as_run_id))
    assert nxt.status == "paused"  # admitted: the slot its predecessor held went to it
    again = mesh.start_run(reviewed)
    mesh.drain()
    assert mesh.inspect_run(again.id).status == "pending"
    assert mesh.explain_run(again.id).reason == "queued"


# --------------------------------------------------------------------------- debounce


class Doc(BaseModel):
    doc: int


@sm.workflow(triggers=[sm.manual(payload=Doc)])
def reindex(payload: Doc) -> Any:
    return (yield reserve(f"doc {payload.doc}"))


def test_debounced_starts_share_one_run_with_the_latest_payload(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory([reindex, quick], executor="database")
    clock = mesh_factory.clock
    t0 = clock()
    wait = sm.Debounce("search-index", 10)
    first = mesh.start_run(reindex, {"doc": 1}, debounce=wait)
    why = mesh.explain_run(first.id)
    assert (why.status, why.reason) == ("pending", "debouncing")
    assert why.details["key"] == "search-index"
    assert why.details["start_at"] == (t0 + timedelta(seconds=10)).isoformat()
    clock.advance(5)
    again = mesh.start_run(reindex, {"doc": 2}, debounce=wait)
    assert again.id == first.id and again.payload == {"doc": 2}
    assert (
        mesh.explain_run(first.id).details["start_at"] == (t0 + timedelta(seconds=15)).isoformat()
    )
    clock.advance(9)
    assert mesh.drain() == 0
    clock.advance(1)
    mesh.drain()
    assert mesh.inspect_run(first.id).result == "doc 2"
    # the window closed with the run's start: the next start is a new run
    later = mesh.start_run(reindex, {"doc": 3}, debounce=wait)
    assert later.id != first.id
    assert len(mesh.list_runs()) == 2


def test_max_wait_bounds_how_far_a_debounced_start_moves(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([reindex], executor="database")
    clock = mesh_factory.clock
    t0 = clock()
    wait = sm.Debounce("bounded", 10, max_wait=12)
    run = mesh.start_run(reindex, {"doc": 1}, debounce=wait)
    clock.advance(5)
    mesh.start_run(reindex, {"doc": 9}, debounce=wait)
    why = mesh.explain_run(run.id)
    assert why.details["start_at"] == (t0 + timedelta(seconds=12)).isoformat()
    assert why.details["max_wait_until"] == (t0 + timedelta(seconds=12)).isoformat()
    clock.advance(7)
    mesh.drain()
    assert mesh.inspect_run(run.id).result == "doc 9"


def test_debounce_refuses_what_it_cannot_honour(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([reindex], executor="database")
    with pytest.raises(sm.InvalidArgumentError, match="does not go with"):
        mesh.start_run(reindex, {"doc": 1}, debounce=sm.Debounce("k", 5), idempotency_key="x")
    with pytest.raises(sm.InvalidArgumentError, match=r"must be sm\.Debounce"):
        mesh.start_run(reindex, {"doc": 1}, debounce="k")  # type: ignore[arg-type]
    assert mesh.list_runs() == []
