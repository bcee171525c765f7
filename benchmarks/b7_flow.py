"""B7 flow control: B2's shape (200 workflows x 10 trivial steps) with every step on a
queue of concurrency 8, against the same work with no queue.

The worker runs in this process with 16 threads, so the queue, not the thread count, is
what limits; ``GAUGE`` counts the queued steps running at once (the most it saw must
never exceed 8). The unlimited rate is the better of the plain flow at 8 and at 16
threads (the stricter comparison); target: the queued rate is >= 85% of it.

The queued flow is declared here, not in ``benchmarks.flows``: a process that declares a
queue claims through the queue-aware path, and B2 must measure the plain one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import squidmesh as sm
from benchmarks import flows
from benchmarks.common import CpuWindow, Databases, Measure, sqlalchemy_url
from benchmarks.harness import Completion

__all__ = ["GAUGE", "QUEUE", "queued_sequence", "run"]

TARGET = 0.85
LIMIT = 8
THREADS = 16


class Gauge:
    """How many queued steps run at once in this process, and the most seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def reset(self) -> None:
        with self._lock:
            self.running = self.peak = 0

    def enter(self) -> None:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)

    def leave(self) -> None:
        with self._lock:
            self.running -= 1


GAUGE = Gauge()
QUEUE = sm.Queue("b7", concurrency=LIMIT)


@sm.step(queue=QUEUE)
def queued_noop(i: int, last: bool = False) -> int:
    """``flows.noop`` on the B7 queue, counted by ``GAUGE``."""
    GAUGE.enter()
    try:
        if last:
            flows.PROBE.last()
        time.sleep(0)  # let another thread in: overlap is what the gauge must see
        return i
    finally:
        GAUGE.leave()


@sm.workflow(triggers=[sm.manual("manual", payload=flows.Steps)])
def queued_sequence(payload: flows.Steps) -> Any:
    """``flows.sequence`` with every step on the B7 queue."""
    n = payload.steps
    total = 0
    for i in range(n):
        total += yield queued_noop(i, last=i == n - 1)
    return total


def _measure(url: str, workflow: Any, workflows: int, steps: int, threads: int) -> dict[str, Any]:
    mesh = sm.Mesh(sqlalchemy_url(url), workflows=[flows.sequence, queued_sequence])
    try:
        mesh.migrate()
        with Completion(url) as done:
            mesh.worker(concurrency=threads)
            flows.PROBE.reset()
            mesh.start_run(workflow, {"steps": 5})  # warm-up
            flows.PROBE.wait_last(1, 60)
            done.wait(1, 60)
            flows.PROBE.reset()
            GAUGE.reset()
            with CpuWindow(url) as cpu:
                t0 = time.perf_counter()
                for _ in range(workflows):
                    mesh.start_run(workflow, {"steps": steps})
                if not flows.PROBE.wait_last(workflows, 600):
                    raise TimeoutError(f"B7 runs did not reach their last step: {done.not_done()}")
                t1 = done.wait(workflows + 1, 120)
    finally:
        mesh.close()
    elapsed = t1 - t0
    total = workflows * steps
    return {
        "workflow": workflow.name,
        "threads": threads,
        "seconds": round(elapsed, 4),
        "steps_per_s": round(total / elapsed, 1),
        "max_concurrency": GAUGE.peak,
        **cpu.per(total, elapsed),
    }


def run(dbs: Databases, *, quick: bool) -> tuple[Measure, dict[str, Any]]:
    workflows, steps = (50, 10) if quick else (200, 10)
    plain: list[dict[str, Any]] = []
    for threads in (LIMIT, THREADS):
        with dbs.fresh(f"b7_plain_{threads}") as url:
            plain.append(_measure(url, flows.sequence, workflows, steps, threads))
    queued: list[dict[str, Any]] = []
    for i in range(1 if quick else 2):
        with dbs.fresh(f"b7_queued_{i}") as url:
            queued.append(_measure(url, queued_sequence, workflows, steps, THREADS))
    unlimited = max(r["steps_per_s"] for r in plain)
    best = max(queued, key=lambda r: r["steps_per_s"])
    peak = max(r["max_concurrency"] for r in queued)
    ratio = best["steps_per_s"] / unlimited
    data = {
        "workflows": workflows,
        "steps": steps,
        "limit": LIMIT,
        "plain": plain,
        "queued": queued,
        "ratio": round(ratio, 3),
        "max_concurrency": peak,
    }
    verdict = "met" if ratio >= TARGET and peak <= LIMIT else "MISSED"
    return (
        Measure(
            "B7",
            f"flow control, {workflows} wf x {steps} steps on a queue of {LIMIT}",
            f"{best['steps_per_s']:,.0f} steps/s queued vs {unlimited:,.0f} unlimited; "
            f"max concurrency {peak} (limit {LIMIT})",
            target=f">= {TARGET:.0%} of unlimited, never > {LIMIT}",
            ratio=f"{ratio:.0%}",
            verdict=verdict,
            data=data,
        ),
        data,
    )
