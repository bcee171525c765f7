"""B3 replay: cold resume of runs with 100, 1,000 and 10,000 recorded steps.

Each history is synthesized through ``squidmesh.testing.WorkflowTester`` (the same
interpreter and state transitions as the runtime) for a workflow of N+1 steps; the last
entry is put back to ``pending``, which is what the database holds after step N-1
completed and the engine recorded step N in the same transaction. The run row and the
entries are written through the store. Then, per repetition: one transaction reads the
whole history (``load_entries``, one SELECT), and a fresh ``Interpreter.advance`` replays
it: N recorded results fed back into the generator, blocking at the pending step.
"""

from __future__ import annotations

import gc
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from benchmarks import flows
from benchmarks.common import Databases, Measure, median
from benchmarks.harness import open_mesh
from squidmesh.runtime.replaying import run_history, run_interpreter
from squidmesh.storage.base import RunRecord, WriteBatch
from squidmesh.testing import WorkflowTester

__all__ = ["run"]

TARGET_SECONDS = 0.25  # for 10,000 steps, load + replay (SPEC section 10)


def _store_history(mesh: Any, n: int) -> str:
    tester = WorkflowTester(flows.sequence, replay_each_command=False)
    test_run = tester.start({"steps": n + 1})
    entries = [e.copy() for e in test_run.history.entries]
    assert len(entries) == n + 1 and test_run.status == "completed"
    last = entries[-1]
    last.status, last.result, last.attempts, last.order = "pending", None, 0, None
    last.started_at = last.completed_at = None
    now = datetime.now(timezone.utc)
    run = RunRecord(
        id=str(uuid.uuid4()),
        workflow=flows.sequence.name,
        trigger="manual",
        status="running",
        payload={"steps": n + 1},
        created_at=now,
        updated_at=now,
        current_steps=[last.name],
        waiting_on=[n],
        version=n + 1,
    )
    with mesh.store.transaction() as tx:
        tx.write(WriteBatch(runs_insert=[run], entries_insert=[(run.id, e) for e in entries]))
    return run.id


def _resume_once(mesh: Any, run_id: str, n: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    with mesh.store.transaction() as tx:
        run = tx.get_run(run_id)
        entries = tx.load_entries(run_id)
    t1 = time.perf_counter()
    assert run is not None
    history = run_history(run, entries)
    interpreter = run_interpreter(run, flows.sequence)
    act = interpreter.advance(history, now=datetime.now(timezone.utc))
    t2 = time.perf_counter()
    if act.outcome != "waiting" or tuple(act.waiting_on) != (n,) or act.new_entries:
        raise AssertionError(
            f"cold resume of {n} steps: outcome {act.outcome}, waiting on {act.waiting_on}, "
            f"{len(act.new_entries)} new entries, error {act.error}"
        )
    interpreter.close()
    return t1 - t0, t2 - t1


def run(dbs: Databases, *, quick: bool) -> tuple[Measure, dict[str, Any]]:
    sizes = (100, 1000, 10000)
    repeats = 5 if quick else 9
    results: list[dict[str, Any]] = []
    with dbs.fresh("b3") as url, open_mesh(url) as mesh:
        for n in sizes:
            b0 = time.perf_counter()
            run_id = _store_history(mesh, n)
            built = time.perf_counter() - b0
            _resume_once(mesh, run_id, n)  # warm: connection, statement cache
            loads, replays, totals = [], [], []
            for _ in range(repeats):
                load, replay = _resume_once(mesh, run_id, n)
                loads.append(load)
                replays.append(replay)
                totals.append(load + replay)
            load_s, replay_s, total_s = median(loads), median(replays), median(totals)
            extra: dict[str, Any] = {}
            if n == sizes[-1]:
                # Diagnostic: the same with Python's cyclic GC off (its passes over the
                # many new objects are part of the cost above).
                gc.disable()
                try:
                    no_gc = [_resume_once(mesh, run_id, n) for _ in range(repeats)]
                finally:
                    gc.enable()
                extra["gc_disabled_load_ms"] = round(1000 * median([a for a, _ in no_gc]), 3)
                extra["gc_disabled_replay_ms"] = round(1000 * median([b for _, b in no_gc]), 3)
            results.append(
                {
                    "steps": n,
                    "build_and_store_seconds": round(built, 3),
                    "repeats": repeats,
                    "load_ms": round(1000 * load_s, 3),
                    "replay_ms": round(1000 * replay_s, 3),
                    "total_ms": round(1000 * total_s, 3),
                    "load_us_per_step": round(1e6 * load_s / n, 2),
                    "replay_us_per_step": round(1e6 * replay_s / n, 2),
                    "total_us_per_step": round(1e6 * total_s / n, 2),
                    **extra,
                }
            )
    by = {r["steps"]: r for r in results}
    big = by[10000]
    # Linear: the per-step cost does not grow with the history (1k -> 10k); 1.5 allows
    # for noise (an n log n or n^1.2 cost would exceed it).
    growth = big["total_us_per_step"] / by[1000]["total_us_per_step"]
    linear = growth <= 1.5
    met = big["total_ms"] / 1000 < TARGET_SECONDS and linear
    data = {"sizes": results, "per_step_growth_1k_to_10k": round(growth, 2), "linear": linear}
    measured = "; ".join(
        f"{r['steps']:,}: load {r['load_ms']:.1f} + replay {r['replay_ms']:.1f} ms "
        f"({r['total_us_per_step']:.0f} us/step)"
        for r in results
    )
    return (
        Measure(
            "B3",
            "cold resume (load + Interpreter.advance)",
            measured,
            target=f"linear; 10k < {TARGET_SECONDS:g} s",
            ratio=f"10k {big['total_ms'] / 1000:.3f} s; per-step x{growth:.2f} 1k->10k",
            verdict="met" if met else "MISSED",
            data=data,
        ),
        data,
    )
