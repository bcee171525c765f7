"""Crash soak: the SIGKILL campaign of tests/reliability/test_crash.py, for longer.

    python scripts/crash_soak.py --runs 2000 --minutes 10
    python scripts/crash_soak.py --runs 300 --minutes 2 --workers 4

Two fresh databases on one PostgreSQL server (``--server``, default: the test server of
tests/support/postgres.py, or a throwaway cluster when none answers) run the mixed
workload of ``tests/reliability/harness.py``: N ``squidmesh worker`` processes with short
leases on the chaos database while a random worker is SIGKILLed every 0.5-1.5 s and
restarted, one never-killed worker on the reference database. Runs are started evenly over
the chosen minutes; the campaign ends when every run is terminal (or the settle timeout
passes). It prints a summary block for docs/production_readiness.md and exits non-zero
when any run differs from its expected outcome or its crash-free twin, is stuck, or a
``transaction=True`` host row is missing or duplicated. Both databases are dropped.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.reliability.chaos import Campaign  # noqa: E402
from tests.support import postgres  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs to start (default 2000)")
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="spread the starts over this long (default 10)"
    )
    parser.add_argument("--workers", type=int, default=3, help="chaos worker processes (3)")
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker (4)")
    parser.add_argument("--lease-seconds", type=float, default=2.0, help="job lease (2 s)")
    parser.add_argument(
        "--step-seconds", type=float, default=0.1, help="how long each step works (0.1 s)"
    )
    parser.add_argument(
        "--settle", type=float, default=300.0, help="seconds allowed after the last start (300)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the crash-free twin")
    parser.add_argument("--seed", type=int, default=None, help="seed of the chaos loop")
    parser.add_argument("--server", default=None, help="PostgreSQL maintenance URL")
    parser.add_argument("--logs", default=None, help="keep worker logs in this directory")
    args = parser.parse_args(argv)

    server, cluster = postgres.start_server(args.server)
    logs = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="crash-soak-"))
    started = time.strftime("%Y-%m-%d %H:%M")
    try:
        campaign = Campaign(
            server,
            logs,
            runs=args.runs,
            workers=args.workers,
            concurrency=args.concurrency,
            lease_seconds=args.lease_seconds,
            step_seconds=args.step_seconds,
            start_over=args.minutes * 60.0,
            settle_timeout=args.settle,
            reference=not args.no_reference,
            seed=args.seed,
            progress=lambda line: print(line, flush=True),
        )
        report = campaign.run()
    finally:
        if cluster is not None:
            cluster.stop()
    print()
    print(f"(started {started}; --runs {args.runs} --minutes {args.minutes:g}; logs in {logs})")
    print(report.summary())
    if not report.ok:
        print(report.problems())
        print(report.worker_logs[-4000:])
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
