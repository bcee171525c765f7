"""The crash campaign behind ``test_crash.py`` and ``scripts/crash_soak.py``.

Two fresh databases on one PostgreSQL server run the same mixed workload
(``tests/reliability/harness.py``):

- the **chaos** database, served by N ``squidmesh worker`` processes with short leases,
  while a chaos loop SIGKILLs a random worker every 0.5-1.5 s and starts a new one;
- the **reference** database, served by one worker that is never killed.

Once every run is terminal (bounded wait) the campaign compares every chaos run with the
definition's expected outcome (``harness.expected``) and with its crash-free reference
twin, counts the host rows of the ``transaction=True`` step (exactly one per run), checks
that every completed step ran at least once, that nothing is stuck and that the jobs
table is empty. ``Campaign.run()`` returns a ``Report``; nothing is asserted here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

import squidmesh as sm
from tests.reliability import harness
from tests.support import postgres

REPO_ROOT = Path(__file__).resolve().parents[2]
SQUIDMESH = Path(sys.executable).with_name("squidmesh")
RUNS = "squidmesh.squidmesh_runs"
JOBS = "squidmesh.squidmesh_jobs"
ATTEMPTS = "squidmesh.squidmesh_attempts"
TERMINAL = ("completed", "failed", "cancelled")


class WorkerProcess:
    """One ``squidmesh worker`` process serving the harness on one database."""

    def __init__(self, url: str, log_path: Path, args: list[str], step_seconds: float) -> None:
        env = dict(os.environ)
        env[harness.URL_ENV] = url
        env[harness.STEP_SECONDS_ENV] = str(step_seconds)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT dumps every thread (stuck diagnostics)
        env.pop("SQUIDMESH_APP", None)
        env.pop("SQUIDMESH_DATABASE_URL", None)
        argv = [str(SQUIDMESH), "--app", "tests.reliability.harness:app", "worker", *args]
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int | None:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclasses.dataclass
class Side:
    """One database of the campaign, its client Mesh and its workers."""

    name: str
    libpq_url: str
    mesh: sm.Mesh
    workers: list[WorkerProcess] = dataclasses.field(default_factory=list)
    run_ids: dict[tuple[str, int], str] = dataclasses.field(default_factory=dict)

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.libpq_url, autocommit=True) as conn:
            return [tuple(row) for row in conn.execute(sql, params).fetchall()]

    def status_counts(self) -> Counter[str]:
        return Counter(
            {
                str(s): int(n)
                for s, n in self.query(f"SELECT status, count(*) FROM {RUNS} GROUP BY 1")
            }
        )


@dataclasses.dataclass
class Report:
    runs: int
    workers: int
    concurrency: int
    lease_seconds: float
    kills: int = 0
    duration: float = 0.0
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    lost_attempts: int = 0
    re_executions: int = 0
    tx_rows: int = 0
    tx_steps: int = 0
    duplicate_tx_rows: list[str] = dataclasses.field(default_factory=list)
    missing_tx_rows: list[str] = dataclasses.field(default_factory=list)
    stray_tx_rows: int = 0
    never_executed: list[str] = dataclasses.field(default_factory=list)
    stuck: list[str] = dataclasses.field(default_factory=list)
    jobs_left: int = 0
    mismatches: list[str] = dataclasses.field(default_factory=list)
    reference_mismatches: list[str] = dataclasses.field(default_factory=list)
    reference: bool = True
    errors: list[str] = dataclasses.field(default_factory=list)
    diagnostics: list[str] = dataclasses.field(default_factory=list)
    worker_logs: str = ""

    @property
    def ok(self) -> bool:
        return not (
            self.mismatches
            or self.reference_mismatches
            or self.duplicate_tx_rows
            or self.missing_tx_rows
            or self.stray_tx_rows
            or self.never_executed
            or self.stuck
            or self.jobs_left
            or self.errors
            or self.diagnostics
        )

    def summary(self) -> str:
        compared = "the definition" + (" and the crash-free reference" if self.reference else "")
        equal = self.runs - len(self.mismatches) - len(self.reference_mismatches)
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        lines = [
            "squidmesh crash campaign (SIGKILL chaos, tests/reliability/harness.py workload)",
            f"  runs               {self.runs} ({', '.join(harness.KINDS)})",
            f"  final statuses     {statuses}",
            f"  workers            {self.workers} processes x {self.concurrency} threads, "
            f"lease {self.lease_seconds:g} s",
            f"  SIGKILLs           {self.kills} (a random worker every 0.5-1.5 s, restarted)",
            f"  duration           {self.duration:.1f} s (first start to last run terminal)",
            f"  lost attempts      {self.lost_attempts} recorded as squidmesh.errors.WorkerLost, retried",
            f"  step re-executions {self.re_executions} (at-least-once; every completed step "
            f"ran, {len(self.never_executed)} never did)",
            f"  outcomes           {equal}/{self.runs} equal to {compared}",
            f"  transaction steps  {self.tx_steps} completed, {self.tx_rows} host rows "
            f"({len(self.duplicate_tx_rows)} duplicated, {len(self.missing_tx_rows)} missing)",
            f"  stuck runs         {len(self.stuck)}; jobs left {self.jobs_left}",
            f"  verdict            {'PASS' if self.ok else 'FAIL'}",
        ]
        return "\n".join(lines)

    def problems(self) -> str:
        parts = []
        for label in (
            "mismatches",
            "reference_mismatches",
            "duplicate_tx_rows",
            "missing_tx_rows",
            "never_executed",
            "stuck",
            "errors",
        ):
            items = getattr(self, label)
            if items:
                parts.append(f"{label} ({len(items)}):\n  " + "\n  ".join(items[:10]))
        if self.stray_tx_rows:
            parts.append(f"stray tx rows: {self.stray_tx_rows}")
        if self.jobs_left:
            parts.append(f"jobs left: {self.jobs_left}")
        parts.extend(self.diagnostics)
        return "\n".join(parts)


@dataclasses.dataclass
class Campaign:
    server_url: str
    log_dir: Path
    runs: int = 63
    workers: int = 3
    concurrency: int = 4
    lease_seconds: float = 2.0
    step_seconds: float = 0.1
    kill_min: float = 0.5
    kill_max: float = 1.5
    #: runs are started evenly over this many seconds, so the chaos overlaps the work
    start_over: float = 12.0
    #: how long, after the last start, every run gets to become terminal
    settle_timeout: float = 120.0
    reference: bool = True
    seed: int | None = None
    progress: Any = None

    def _worker_args(self) -> list[str]:
        return [
            "--concurrency",
            str(self.concurrency),
            "--lease-seconds",
            str(self.lease_seconds),
            "--poll-interval",
            "0.5",
            "--no-scheduler",
        ]

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def _side(self, name: str, created: list[str]) -> Side:
        libpq_url = postgres.create_database(self.server_url, f"rel_{name}")
        created.append(libpq_url)
        url = postgres.sqlalchemy_url(libpq_url)
        mesh = harness.build_mesh(url)
        mesh.migrate()
        harness.create_host_tables(libpq_url)
        return Side(name, libpq_url, mesh)

    def _spawn(self, side: Side) -> WorkerProcess:
        index = len(side.workers)
        worker = WorkerProcess(
            postgres.sqlalchemy_url(side.libpq_url),
            self.log_dir / f"{side.name}-worker-{index}.log",
            self._worker_args(),
            self.step_seconds,
        )
        side.workers.append(worker)
        return worker

    def run(self) -> Report:
        rng = random.Random(self.seed)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        report = Report(self.runs, self.workers, self.concurrency, self.lease_seconds)
        report.reference = self.reference
        created: list[str] = []
        sides: list[Side] = []
        stop = threading.Event()
        threads: list[threading.Thread] = []
        try:
            chaos = self._side("chaos", created)
            sides.append(chaos)
            reference = self._side("reference", created) if self.reference else None
            if reference is not None:
                sides.append(reference)
            live = [self._spawn(chaos) for _ in range(self.workers)]
            if reference is not None:
                self._spawn(reference)

            work = harness.plan(self.runs)
            started = time.monotonic()

            def starter() -> None:
                gap = self.start_over / max(len(work), 1)
                try:
                    for kind, n in work:
                        if stop.is_set():
                            return
                        for side in sides:
                            run = side.mesh.start_run(kind, {"n": n})
                            side.run_ids[(kind, n)] = str(run.id)
                        time.sleep(gap)
                except Exception as exc:
                    report.errors.append(f"starting runs failed: {exc!r}")
                    raise

            def driver() -> None:
                while not stop.is_set():
                    try:
                        harness.answer_approvals(side.mesh for side in sides)
                    except Exception as exc:
                        report.errors.append(f"answering approvals failed: {exc!r}")
                    stop.wait(0.1)

            threads = [
                threading.Thread(target=starter, name="starter", daemon=True),
                threading.Thread(target=driver, name="approvals", daemon=True),
            ]
            for thread in threads:
                thread.start()

            def all_terminal(side: Side) -> bool:
                counts = side.status_counts()
                return sum(counts.values()) == len(work) and set(counts) <= set(TERMINAL)

            deadline = started + self.start_over + self.settle_timeout
            last_note = 0.0
            while time.monotonic() < deadline:
                time.sleep(rng.uniform(self.kill_min, self.kill_max))
                if all_terminal(chaos):
                    break
                victim = rng.randrange(len(live))
                live[victim].kill()
                report.kills += 1
                live[victim] = self._spawn(chaos)
                if time.monotonic() - last_note > 10:
                    last_note = time.monotonic()
                    self._say(
                        f"{time.monotonic() - started:6.1f}s  kills {report.kills:4d}  "
                        f"chaos {dict(chaos.status_counts())}"
                    )
            report.duration = time.monotonic() - started
            # The chaos is over: let the survivors finish what is left (the reference too).
            for side in sides:
                settle = time.monotonic() + 3 * self.lease_seconds + 30
                while time.monotonic() < settle and not all_terminal(side):
                    time.sleep(0.2)
            if all_terminal(chaos):
                # Jobs leased to killed workers come back after their lease and are
                # discarded by the survivors (their runs are terminal).
                settle = time.monotonic() + 3 * self.lease_seconds + 10
                while (
                    time.monotonic() < settle and chaos.query(f"SELECT count(*) FROM {JOBS}")[0][0]
                ):
                    time.sleep(0.2)
            stop.set()
            for thread in threads:
                thread.join(30)
            for side in sides:
                if not all_terminal(side):
                    report.diagnostics.append(self._diagnose(side))
            for side in sides:
                for worker in side.workers:
                    if worker.alive:
                        worker.terminate()
            self._verify(report, chaos, reference, work)
            report.worker_logs = "\n".join(
                f"--- {w.log_path.name} (exit {w.proc.poll()}):\n{w.output()[-2000:]}"
                for w in chaos.workers[-self.workers :]
            )
        finally:
            stop.set()
            for side in sides:
                for worker in side.workers:
                    worker.kill()
                side.mesh.close()
            for url in created:
                postgres.drop_database(url)
        return report

    def _diagnose(self, side: Side) -> str:
        """What a stuck run looks like: its entries, attempts and jobs, and a thread dump
        of every live worker (SIGABRT + faulthandler, written to the worker's log)."""
        lines = [f"{side.name}: runs not terminal"]
        stuck = side.query(
            f"SELECT id, workflow, status, version FROM {RUNS} "
            "WHERE status NOT IN ('completed', 'failed', 'cancelled')"
        )
        for rid, workflow, status, version in stuck[:5]:
            lines.append(f"  run {rid} {workflow} {status} v{version}")
            for row in side.query(
                "SELECT seq, kind, name, status, attempts, parent FROM squidmesh.squidmesh_entries "
                "WHERE run_id = %s ORDER BY seq",
                (rid,),
            ):
                lines.append(f"    entry {row}")
            for row in side.query(
                f"SELECT seq, number, status, error->>'type' FROM {ATTEMPTS} "
                "WHERE run_id = %s ORDER BY seq, number",
                (rid,),
            ):
                lines.append(f"    attempt {row}")
            for row in side.query(
                f"SELECT id, kind, seq, attempt, worker, lease_until, run_at FROM {JOBS} "
                "WHERE run_id = %s",
                (rid,),
            ):
                lines.append(f"    job {row}")
        for worker in side.workers:
            if worker.alive:
                worker.proc.send_signal(signal.SIGABRT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(10)
                lines.append(f"  --- {worker.log_path.name}:\n{worker.output()[-6000:]}")
        return "\n".join(lines)

    def _verify(
        self, report: Report, chaos: Side, reference: Side | None, work: list[tuple[str, int]]
    ) -> None:
        report.statuses = dict(chaos.status_counts())
        report.jobs_left = int(chaos.query(f"SELECT count(*) FROM {JOBS}")[0][0])
        ledger_keys: set[str] = set()
        executed = Counter(
            {
                str(k): int(c)
                for k, c in chaos.query(
                    "SELECT key, count(*) FROM rel_exec WHERE phase = 'done' GROUP BY 1"
                )
            }
        )
        starts = chaos.query(
            "SELECT key, name, count(*) FROM rel_exec WHERE phase = 'start' GROUP BY 1, 2"
        )
        for kind, n in work:
            rid = chaos.run_ids.get((kind, n))
            if rid is None:
                report.stuck.append(f"{kind}/{n}: never started")
                continue
            run = chaos.mesh.inspect_run(rid, include_history=True)
            if run.status not in TERMINAL:
                why = chaos.mesh.explain_run(rid)
                report.stuck.append(f"{kind}/{n} {rid}: {run.status} ({why.reason}, {why.step})")
                continue
            got = harness.outcome(run)
            want = harness.expected(kind, n)
            if got != want:
                report.mismatches.append(f"{kind}/{n} {rid}: got {got}, expected {want}")
            if reference is not None:
                twin = reference.mesh.inspect_run(
                    reference.run_ids[(kind, n)], include_history=True
                )
                if harness.outcome(twin) != got:
                    report.reference_mismatches.append(
                        f"{kind}/{n}: chaos {got} != reference {harness.outcome(twin)}"
                    )
            for step in run.step_runs or ():
                if step.kind != "step" or step.status != "completed":
                    continue
                key = f"{rid}:{step.seq}"
                if step.name == "book":
                    ledger_keys.add(key)
                    report.tx_steps += 1
                elif executed[key] < 1:
                    report.never_executed.append(f"{kind}/{n} step {step.name} ({key})")
        # first_try_fails runs twice by design (its first execution fails).
        report.re_executions = sum(
            max(0, int(c) - (2 if name == "first_try_fails" else 1)) for _, name, c in starts
        )
        report.lost_attempts = int(
            chaos.query(
                f"SELECT count(*) FROM {ATTEMPTS} WHERE error->>'type' = 'squidmesh.errors.WorkerLost'"
            )[0][0]
        )
        rows = Counter(
            {
                str(k): int(c)
                for k, c in chaos.query("SELECT key, count(*) FROM rel_tx_rows GROUP BY 1")
            }
        )
        report.tx_rows = sum(rows.values())
        report.duplicate_tx_rows = [f"{k}: {c} rows" for k, c in rows.items() if c > 1]
        report.missing_tx_rows = sorted(k for k in ledger_keys if rows[k] == 0)
        report.stray_tx_rows = sum(c for k, c in rows.items() if k not in ledger_keys)
