"""Deterministic simulation (SPEC section 11): generated programs, failures and crashes
through the REAL engine, compared with a crash-free oracle run of the same program.

Hypothesis generates a ``Program`` (steps with failure schedules, joins, ``first`` races,
try/except around failing steps, sleeps, approvals, ``sm.undo()``, a ``transaction=True``
step) and a set of crash points. One generic workflow, ``interpret``, runs the program
given in its payload. A simulated worker process drives a ``sm.Mesh`` (DatabaseExecutor,
virtual clock) by hand: it claims jobs with ``claim_jobs`` and performs them with
``mesh.runner.perform(job, Lease(...))`` (eager continuation included), answers approvals, and
jumps the clock to the next due job when idle.

Crash points are "ticks" of one counter: before each job the worker performs (so a crash
abandons a claimed job, or a step that eager continuation already BEGAN), and inside each
step execution before and after its work (so a crash lands between a step's begin and its
landing, after or before its side effect; inside a ``transaction=True`` step it also rolls
back the host write). A crash drops the Mesh object (its SQLite connections are closed, as
if the process died), builds a NEW Mesh on the same store, advances the virtual clock past
the lease, and carries on. The final outcome (status, result, error, every history entry's
outcome, compensation order) must equal the oracle's, no job may be left, and the host
row of every completed transaction step must exist exactly once.

Failure schedules count real executions (an execution cut short by a crash does not
count), and a step meant to succeed eventually gets ``max_attempts`` with room for every
crash: a lost attempt counts as an attempt (SPEC: "max_attempts counts every attempt"),
so a crash may otherwise legitimately exhaust a tight retry budget. Join branches succeed
eventually: when a branch fails, whether a sibling completed or was cancelled first is a
matter of timing, not of crash safety.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from collections.abc import Callable, Generator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import event, given, note, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import squidmesh as sm
from squidmesh.runtime.perform import Lease
from squidmesh.storage import open_store
from squidmesh.storage.base import Store
from squidmesh.storage.memory import InMemoryStore
from tests.reliability.harness import outcome
from tests.runtime.support import VirtualClock, peek_jobs

ALWAYS = 99  # a step that fails every execution
REFUSES = -1  # a step that raises sm.NonRetryable
MAX_CRASHES = 3
LEASE = 30.0
FOREVER = 10**6  # seconds: a timer that never wins a race


# --------------------------------------------------------------------------- chaos


class Crash(BaseException):
    """The simulated process dies here (a BaseException: nothing in squidmesh catches it)."""


class Chaos:
    """The simulated process's crash schedule and the host's record of executions."""

    def __init__(self) -> None:
        self.reset(frozenset())

    def reset(self, crash_at: frozenset[int]) -> None:
        self.crash_at = crash_at
        self.ticks = 0
        self.executions: Counter[str] = Counter()
        self.compensations: list[str] = []

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks in self.crash_at:
            raise Crash(self.ticks)


CHAOS = Chaos()


class Flake(Exception):
    pass


def _execute(tag: int, fail: int, prefix: str) -> str:
    CHAOS.tick()  # dies before the work
    key = sm.step_context().idempotency_key
    CHAOS.executions[key] += 1
    count = CHAOS.executions[key]
    CHAOS.tick()  # dies after the work, before its outcome is recorded
    if fail == REFUSES:
        raise sm.NonRetryable(f"refused {tag}")
    if count <= fail:
        raise Flake(f"boom {tag}")
    return f"{prefix}{tag}"


@sm.step
def work(tag: int, fail: int) -> str:
    return _execute(tag, fail, "w")


def _undo(*, input: Any, output: Any, failure: Any) -> str:
    CHAOS.tick()
    CHAOS.compensations.append(str(output))
    CHAOS.tick()  # dies after compensating, before it is recorded: compensated again
    return f"undid {output}"


@sm.step(compensate=_undo)
def undoable(tag: int, fail: int) -> str:
    return _execute(tag, fail, "u")


@sm.step(transaction=True)
def book(tag: int) -> str:
    ctx = sm.step_context()
    if ctx.connection is not None:
        ctx.connection.execute(
            sa.text("INSERT INTO sim_rows (key) VALUES (:k)"), {"k": ctx.idempotency_key}
        )
    CHAOS.tick()  # dies after the host write: it must roll back with the step
    return f"b{tag}"


# --------------------------------------------------------------------------- programs


def _retry(attempts: int) -> sm.Retry:
    return sm.Retry(max_attempts=attempts, backoff=sm.Backoff.fixed(1))


@dataclasses.dataclass(frozen=True)
class Step:
    tag: int
    fail: int = 0
    attempts: int = 1
    undo: bool = False

    def __repr__(self) -> str:
        what = "undoable" if self.undo else "step"
        if self.fail == REFUSES:
            how = " refuses"
        elif self.fail >= ALWAYS:
            how = " always fails"
        elif self.fail:
            how = f" fails {self.fail}x"
        else:
            how = ""
        return f"{what}#{self.tag}{how} (max {self.attempts})"

    def to_json(self) -> dict[str, Any]:
        return {"op": "step", **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class Join:
    branches: tuple[Step, ...]

    def __repr__(self) -> str:
        return f"join({', '.join(map(repr, self.branches))})"

    def to_json(self) -> dict[str, Any]:
        return {"op": "join", "branches": [b.to_json() for b in self.branches]}


@dataclasses.dataclass(frozen=True)
class First:
    step: Step

    def __repr__(self) -> str:
        return f"first({self.step!r}, sleep forever)"

    def to_json(self) -> dict[str, Any]:
        return {"op": "first", "step": self.step.to_json()}


@dataclasses.dataclass(frozen=True)
class Race:
    seconds: int

    def __repr__(self) -> str:
        return f"first(sleep {self.seconds}s, event never sent)"

    def to_json(self) -> dict[str, Any]:
        return {"op": "race", "seconds": self.seconds}


@dataclasses.dataclass(frozen=True)
class Sleep:
    seconds: int

    def __repr__(self) -> str:
        return f"sleep {self.seconds}s"

    def to_json(self) -> dict[str, Any]:
        return {"op": "sleep", "seconds": self.seconds}


@dataclasses.dataclass(frozen=True)
class Approval:
    tag: int
    approve: bool

    def __repr__(self) -> str:
        return f"approval#{self.tag} -> {'approve' if self.approve else 'reject'}"

    def to_json(self) -> dict[str, Any]:
        return {"op": "approval", "tag": self.tag, "approve": self.approve}


@dataclasses.dataclass(frozen=True)
class Undo:
    def __repr__(self) -> str:
        return "undo"

    def to_json(self) -> dict[str, Any]:
        return {"op": "undo"}


@dataclasses.dataclass(frozen=True)
class Book:
    tag: int

    def __repr__(self) -> str:
        return f"book#{self.tag} (transaction=True)"

    def to_json(self) -> dict[str, Any]:
        return {"op": "book", "tag": self.tag}


@dataclasses.dataclass(frozen=True)
class Try:
    body: tuple[Any, ...]

    def __repr__(self) -> str:
        return f"try {{ {'; '.join(map(repr, self.body))} }} except StepFailed"

    def to_json(self) -> dict[str, Any]:
        return {"op": "try", "body": [op.to_json() for op in self.body]}


@dataclasses.dataclass(frozen=True)
class Program:
    ops: tuple[Any, ...]

    def __repr__(self) -> str:
        if not self.ops:
            return "Program(<empty>)"
        return "Program(\n" + "".join(f"    {op!r}\n" for op in self.ops) + ")"

    def to_json(self) -> dict[str, Any]:
        return {"ops": [op.to_json() for op in self.ops]}


def numbered(ops: list[Any]) -> Program:
    """The program with every step, approval and booking tagged 1, 2, 3... in order."""
    counter = iter(range(1, 10_000))

    def tag(op: Any) -> Any:
        if isinstance(op, (Step, Approval, Book)):
            return dataclasses.replace(op, tag=next(counter))
        if isinstance(op, Join):
            return Join(tuple(tag(b) for b in op.branches))
        if isinstance(op, First):
            return First(tag(op.step))
        if isinstance(op, Try):
            return Try(tuple(tag(o) for o in op.body))
        return op

    return Program(tuple(tag(op) for op in ops))


def _eventually_ok(fail: int, undo: bool) -> Step:
    """Fails ``fail`` executions, then succeeds; its budget leaves room for every crash."""
    return Step(0, fail, fail + 1 + MAX_CRASHES, undo)


def _never_ok(fail: int, attempts: int) -> Step:
    return Step(0, fail, attempts)


def _succeeding(undo: bool) -> st.SearchStrategy[Step]:
    return st.builds(_eventually_ok, st.integers(0, 2), st.booleans() if undo else st.just(False))


def _failing() -> st.SearchStrategy[Step]:
    return st.builds(_never_ok, st.sampled_from([ALWAYS, REFUSES]), st.integers(1, 3))


step_ops = st.one_of(_succeeding(undo=True), _succeeding(undo=True), _failing())
joins = st.lists(_succeeding(undo=False), min_size=1, max_size=3).map(tuple).map(Join)
simple_ops = st.one_of(
    step_ops,
    joins,
    step_ops.map(First),
    st.integers(1, 20).map(Race),
    st.integers(1, 50).map(Sleep),
    st.just(Book(0)),
)
operations = st.one_of(
    simple_ops,
    st.builds(Approval, st.just(0), st.booleans()),
    st.just(Undo()),
    st.lists(simple_ops, min_size=1, max_size=3).map(tuple).map(Try),
)
programs = st.lists(operations, max_size=6).map(numbered)
#: where to crash, as positions spread over the ticks of the crash-free run (see the test)
crash_points = st.lists(st.integers(0, 10**6), min_size=1, max_size=MAX_CRASHES)


# --------------------------------------------------------------------------- the workflow


def _call(op: dict[str, Any]) -> Any:
    fn = undoable if op["undo"] else work
    return fn.options(retry=_retry(op["attempts"]))(op["tag"], op["fail"])


def _run_op(op: dict[str, Any], out: list[Any]) -> Generator[Any, Any, None]:
    kind = op["op"]
    if kind == "step":
        out.append((yield _call(op)))
    elif kind == "join":
        out.append(list((yield sm.join(*(_call(b) for b in op["branches"])))))
    elif kind == "first":
        out.append(list((yield sm.first(_call(op["step"]), sm.sleep(seconds=FOREVER)))))
    elif kind == "race":
        raced = yield sm.first(sm.sleep(seconds=op["seconds"]), sm.wait_for_event("never"))
        out.append(list(raced))
    elif kind == "sleep":
        yield sm.sleep(seconds=op["seconds"])
    elif kind == "approval":
        verb = "approve" if op["approve"] else "reject"
        decision = yield sm.approval(f"{verb}{op['tag']}")
        out.append(decision.approved)
    elif kind == "undo":
        outcomes = yield sm.undo()
        out.append([o["output"] for o in outcomes])
    elif kind == "book":
        out.append((yield book(op["tag"])))
    elif kind == "try":
        try:
            for inner in op["body"]:
                yield from _run_op(inner, out)
        except sm.StepFailed as exc:
            out.append(f"caught {exc.error_message}")
    else:  # pragma: no cover - the strategies build known operations only
        raise AssertionError(kind)


class Payload(BaseModel):
    ops: list[dict[str, Any]]


@sm.workflow(name="simulated", triggers=[sm.manual(payload=Payload)])
def interpret(payload: Payload) -> Any:
    out: list[Any] = []
    for op in payload.ops:
        yield from _run_op(op, out)
    return out


# --------------------------------------------------------------------------- the simulated worker


class Simulation:
    """One simulated worker process at a time on a store; a crash replaces it."""

    def __init__(self, open_store: Callable[[], Store], *, durable: bool) -> None:
        self.open_store = open_store
        self.durable = durable
        self.clock = VirtualClock()
        self.crashes = 0
        self.jobs = 0
        self.mesh = self._boot()

    def _boot(self) -> sm.Mesh:
        return sm.Mesh(
            store=self.open_store(),
            workflows=[interpret],
            executor=sm.DatabaseExecutor(),
            clock=self.clock,
        )

    def crash(self) -> None:
        dead, self.mesh = self.mesh, None  # type: ignore[assignment]
        if self.durable:
            dead.store.close()  # its connections die with the process
        del dead
        self.crashes += 1
        self.clock.advance(LEASE + 1)  # the dead worker's leases run out
        self.mesh = self._boot()

    def lease(self) -> Lease:
        return Lease(f"sim-{self.crashes}", LEASE)

    def run(self, program: Program) -> str:
        run_id = str(self.mesh.start_run(interpret, program.to_json()).id)
        for _ in range(2000):
            try:
                if not self._step(run_id):
                    return run_id
            except Crash:
                self.crash()
        raise AssertionError(f"the simulation did not settle: {self.mesh.explain_run(run_id)}")

    def _step(self, run_id: str) -> bool:
        now = self.clock()
        with self.mesh.store.transaction() as tx:
            claimed = tx.claim_jobs(
                now=now,
                limit=1,
                worker=self.lease().worker,
                lease_until=now + timedelta(seconds=LEASE),
            )
        if claimed:
            current: sm.Job | None = claimed[0]
            while current is not None:
                CHAOS.tick()  # dies with a claimed (or eagerly begun) job in hand
                self.jobs += 1
                current = self.mesh.runner.perform(current, self.lease())
            return True
        if self._answer(run_id):
            return True
        with self.mesh.store.transaction() as tx:
            due = tx.next_job_time()
        if due is None:
            if peek_jobs(self.mesh.store):  # only leased jobs left: wait for their leases
                self.clock.advance(LEASE + 1)
                return True
            return False
        self.clock.now = max(self.clock.now, due)
        return True

    def _answer(self, run_id: str) -> bool:
        run = self.mesh.inspect_run(run_id)
        if run.status != "paused":
            return False
        for name in run.current_steps:
            if name.startswith("approve"):
                self.mesh.approve_run(run_id, actor="sim")
                return True
            if name.startswith("reject"):
                self.mesh.reject_run(run_id, actor="sim")
                return True
        return False


def _first_occurrences(items: list[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def simulate(
    program: Program, crash_at: frozenset[int], store: Store | None, sqlite_url: str | None
):
    """Run ``program`` to its end; returns (outcome, compensations, simulation, run id)."""
    CHAOS.reset(crash_at)
    if sqlite_url is not None:
        sim = Simulation(lambda: open_store(sqlite_url), durable=True)
    else:
        assert store is not None
        sim = Simulation(lambda: store, durable=False)
    run_id = sim.run(program)
    final = sim.mesh.inspect_run(run_id, include_history=True)
    return outcome(final), _first_occurrences(CHAOS.compensations), sim, run_id


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@settings(max_examples=40, deadline=None, database=None)
@given(program=programs, points=crash_points)
def test_crashes_do_not_change_the_outcome(kind: str, program: Program, points: list[int]) -> None:
    expected, expected_comp, oracle, _ = simulate(program, frozenset(), InMemoryStore(), None)
    oracle.mesh.close()
    ticks = CHAOS.ticks  # of the crash-free run: every crash point falls inside the run
    crash_at = frozenset(1 + p % ticks for p in points)
    note(f"{program!r} with crashes at ticks {sorted(crash_at)} of {ticks}")
    assert expected["status"] in ("completed", "failed"), expected

    with tempfile.TemporaryDirectory() as tmp:
        url = None
        if kind == "sqlite":
            url = f"sqlite:///{Path(tmp) / 'sim.db'}"
            engine = sa.create_engine(url)
            with engine.begin() as conn:
                conn.execute(sa.text("CREATE TABLE sim_rows (key TEXT NOT NULL)"))
            engine.dispose()
        got, got_comp, sim, run_id = simulate(program, crash_at, InMemoryStore(), url)
        event(f"crashes: {sim.crashes}")
        event(f"outcome: {expected['status']}")
        try:
            assert got == expected, f"{program!r}: {sim.crashes} crash(es) at {sorted(crash_at)}"
            assert got_comp == expected_comp
            assert peek_jobs(sim.mesh.store) == []
            if url is not None:
                with sim.mesh.store.engine.connect() as conn:
                    rows = Counter(k for (k,) in conn.execute(sa.text("SELECT key FROM sim_rows")))
                booked = {
                    f"{run_id}:{seq}"
                    for (seq, kind_, name, status, *_rest) in got["steps"]
                    if name == "book" and status == "completed"
                }
                assert rows == Counter({key: 1 for key in booked})
        finally:
            sim.mesh.close()
