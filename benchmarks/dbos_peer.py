"""The peer: DBOS Transact on the same server, run in a child process per measurement.

``python -m benchmarks.dbos_peer --url URL --mode throughput|sequential ...`` prints
one JSON object. Default DBOS configuration except a fixed application version and
executor ID (reference/dbos.md section 8): ``DBOS.start_workflow`` for each workflow,
then ``get_result`` on every handle; the clock runs from the first start to the last
result. The child process keeps DBOS's process-wide singleton and its threads away from
squidmesh's measurements.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

__all__ = ["main"]


def _configure(url: str) -> Any:
    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {
        "name": "sqm-bench-peer",
        "system_database_url": url,
        "application_version": "sqm-bench-1",
        "executor_id": "sqm-bench",
        "log_level": "WARNING",
    }
    return DBOS(config=config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dbos_peer")
    parser.add_argument("--url", required=True, help="libpq URL of a fresh database")
    parser.add_argument("--mode", choices=("throughput", "sequential"), required=True)
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from dbos import DBOS

    from benchmarks.common import CpuWindow

    url = "postgresql+psycopg://" + args.url.split("://", 1)[1]

    @DBOS.step()
    def noop(i: int) -> int:
        return i

    @DBOS.workflow()
    def sequence(n: int) -> int:
        total = 0
        for i in range(n):
            total += noop(i)
        return total

    _configure(url)
    DBOS.launch()
    try:
        DBOS.start_workflow(sequence, 5).get_result()  # warm-up
        count = args.workflows if args.mode == "throughput" else 1
        steps = args.steps
        with CpuWindow(args.url) as cpu:
            t0 = time.perf_counter()
            handles = [DBOS.start_workflow(sequence, steps) for _ in range(count)]
            for handle in handles:
                handle.get_result()
            elapsed = time.perf_counter() - t0
    finally:
        DBOS.destroy(destroy_registry=True)
    total = count * steps
    json.dump(
        {
            "mode": args.mode,
            "workflows": count,
            "steps": steps,
            "seconds": round(elapsed, 4),
            "steps_per_s": round(total / elapsed, 1),
            "workflows_per_s": round(count / elapsed, 2),
            **cpu.per(total, elapsed),
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
