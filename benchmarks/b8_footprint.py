"""B8 footprint: what a worker's memory does over many runs, and what a live run costs.

1. RSS growth: a ``mesh.worker(concurrency=4)`` in this process completes N runs of a
   3-step workflow on PostgreSQL (started in batches, so the backlog stays small). The
   resident set size (``/proc/self/statm``) is read after a warm-up of 500 runs and after
   the N; the difference is the growth a long-lived worker shows. Target: < 50 MiB over
   10,000 runs.
2. A live cached run: M runs are brought to an approval, each leaving its live
   interpreter in the engine's cache (``Mesh(cache_size=...)`` large enough to keep all
   of them). ``tracemalloc`` measures the Python memory allocated while they were
   created and still held afterwards; divided by M, that is what one cached run costs
   (its interpreter, history and the cache slot, plus a share of whatever else stayed).
   Target: < 20 KiB.
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from typing import Any

from benchmarks import flows
from benchmarks.common import Databases, Measure
from benchmarks.harness import Completion, open_mesh

__all__ = ["run"]

RSS_TARGET_MIB = 50.0
LIVE_TARGET_KIB = 20.0
BATCH = 500


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        resident_pages = int(fh.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _complete(mesh: Any, done: Completion, total: int, count: int) -> int:
    """Start ``count`` 3-step runs in batches; wait for each batch. Returns the new total."""
    remaining = count
    while remaining:
        batch = min(BATCH, remaining)
        for _ in range(batch):
            mesh.start_run(flows.sequence, {"steps": 3})
        total += batch
        done.wait(total, 600)
        remaining -= batch
    return total


def rss_growth(url: str, runs: int) -> dict[str, Any]:
    with open_mesh(url) as mesh, Completion(url) as done:
        mesh.worker(concurrency=4)
        total = _complete(mesh, done, 0, BATCH)  # warm-up: pools, caches, imports
        gc.collect()
        before = _rss_bytes()
        t0 = time.perf_counter()
        total = _complete(mesh, done, total, runs)
        elapsed = time.perf_counter() - t0
        gc.collect()
        after = _rss_bytes()
    return {
        "runs": runs,
        "seconds": round(elapsed, 1),
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "growth_mib": round((after - before) / 2**20, 2),
    }


def live_run_cost(url: str, runs: int) -> dict[str, Any]:
    with open_mesh(url, cache_size=runs * 2) as mesh, Completion(url) as done:
        mesh.worker(concurrency=2)
        mesh.start_run(flows.approval_flow, {})  # warm-up
        _wait_paused(done, 1)
        gc.collect()
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            for _ in range(runs):
                mesh.start_run(flows.approval_flow, {})
            _wait_paused(done, runs + 1)
            gc.collect()
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        cached = mesh.runner.engine.cached_runs()
    return {
        "runs": runs,
        "cached_live_runs": cached,
        "held_kib": round((held - base) / 1024, 1),
        "peak_kib": round((peak - base) / 1024, 1),
        "per_run_kib": round((held - base) / 1024 / runs, 2),
    }


def _wait_paused(done: Completion, expected: int) -> None:
    deadline = time.perf_counter() + 600
    while done.count("paused") < expected:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{expected} runs not paused: {done.not_done()}")
        time.sleep(0.01)


def run(dbs: Databases, *, quick: bool) -> tuple[Measure, dict[str, Any]]:
    runs = 1_000 if quick else 10_000
    live = 200 if quick else 1_000
    with dbs.fresh("b8_rss") as url:
        growth = rss_growth(url, runs)
    with dbs.fresh("b8_live") as url:
        cost = live_run_cost(url, live)
    met = growth["growth_mib"] < RSS_TARGET_MIB and cost["per_run_kib"] < LIVE_TARGET_KIB
    data = {"rss": growth, "live_run": cost}
    measure = Measure(
        "B8",
        f"worker RSS over {runs:,} runs; {live:,} live cached runs",
        f"RSS +{growth['growth_mib']:.1f} MiB ({growth['rss_before_mib']:.0f} -> "
        f"{growth['rss_after_mib']:.0f} MiB); {cost['per_run_kib']:.1f} KiB per live run "
        f"({cost['cached_live_runs']} cached)",
        target=f"< {RSS_TARGET_MIB:.0f} MiB; < {LIVE_TARGET_KIB:.0f} KiB/run",
        ratio="",
        verdict="met" if met else "MISSED",
        data=data,
    )
    return measure, data
