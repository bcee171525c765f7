"""The database worker: claims jobs from squidmesh's jobs table and performs them.

Any number of workers may share one database. A claim leases a job to one worker
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL); a heartbeat renews the leases of jobs in
flight, so a job is redelivered only when its worker stopped renewing (it was killed).
Workers sleep until ``LISTEN/NOTIFY`` (PostgreSQL), an in-process nudge, the next due
job or the polling interval wakes them, whichever comes first.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from squidmesh.core.flow import declared_queues
from squidmesh.core.records import Job
from squidmesh.errors import InvalidArgumentError, StorageError
from squidmesh.runtime.perform import Lease
from squidmesh.runtime.runner import Runner
from squidmesh.storage.base import Wakeups
from squidmesh.storage.sql_errors import is_transient

__all__ = ["Worker"]

log = logging.getLogger("squidmesh.worker")

MAX_BACKOFF = 30.0
#: a job whose performing failed this many times (not for database reasons) is parked
PARK_AFTER = 5
#: seconds before a job whose performing failed is due again (doubling at each failure)
GIVE_BACK_FIRST = 0.25


class Worker:
    """Performs due jobs with ``concurrency`` threads until stopped.

    Use ``mesh.worker(...)`` to run one as a thread of the host process, or
    ``squidmesh worker`` to run one as a process.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        concurrency: int = 4,
        poll_interval: float = 2.0,
        lease_seconds: float = 30.0,
        name: str | None = None,
        scheduler: bool = True,
        listen: bool = True,
        sweep_interval: float = 30.0,
    ) -> None:
        if concurrency < 1:
            raise InvalidArgumentError(f"worker concurrency must be >= 1, got {concurrency}")
        if lease_seconds <= 0 or poll_interval <= 0:
            raise InvalidArgumentError("worker lease_seconds and poll_interval must be > 0")
        if sweep_interval < 0:
            raise InvalidArgumentError(
                "worker sweep_interval must be >= 0 (0 turns the sweeper off)"
            )
        #: performs the jobs this worker claims (``mesh.runner``)
        self.runner = runner
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.scheduler = scheduler
        self.listen = listen
        #: seconds between looks for active runs that have no job (0: never); only with
        #: an executor whose jobs are rows of the jobs table
        self.sweep_interval = sweep_interval
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: dict[int, Job] = {}
        #: jobs whose perform failed while the database was unreachable: given back later
        self._to_give_back: list[tuple[Job, Exception]] = []
        #: how often each job failed here (its backoff; the database counts for parking)
        self._failed_before: dict[int, int] = {}
        #: the owner id leases are taken under: this process's presence (held alive)
        self.owner = ""
        self._threads: list[threading.Thread] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.performed = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"<Worker {self.name} concurrency={self.concurrency}>"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Worker:
        """Run in background threads of this process; returns at once."""
        thread = threading.Thread(
            target=self.run, name=f"squidmesh-worker-{self.name}", daemon=True
        )
        thread.start()
        self._threads.append(thread)
        return self

    def wake(self) -> None:
        """Look for work now (new jobs were committed by this process)."""
        self._wake.set()

    def request_stop(self) -> None:
        """Ask the loop to drain and stop; returns at once (safe in a signal handler)."""
        self._stopping.set()
        self._wake.set()

    def stop(self, *, timeout: float | None = 30.0) -> None:
        """Stop claiming, let jobs in flight finish, then return (graceful drain)."""
        self.request_stop()
        self._stopped.wait(timeout)
        for thread in self._threads:
            thread.join(timeout)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def run(self) -> None:
        """The claim loop; blocks until ``stop()``."""
        self.owner = self.runner.owner()
        log.info("worker %s starting (concurrency %d)", self.name, self.concurrency)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="squidmesh-job"
        )
        helpers = [
            threading.Thread(target=self._heartbeat, name="squidmesh-heartbeat", daemon=True)
        ]
        wakeups = self.runner.store.wakeups() if self.listen else None
        if wakeups is not None:
            helpers.append(
                threading.Thread(
                    target=self._listen, args=(wakeups,), name="squidmesh-listen", daemon=True
                )
            )
        if self.scheduler:
            helpers.append(
                threading.Thread(target=self._schedule, name="squidmesh-cron", daemon=True)
            )
        if self.sweep_interval > 0 and self.runner.jobs_in_table:
            helpers.append(
                threading.Thread(target=self._sweep, name="squidmesh-sweeper", daemon=True)
            )
        for thread in helpers:
            thread.start()
        self.runner.add_waker(self.wake)
        backoff = 0.5
        try:
            while not self._stopping.is_set():
                try:
                    more = self._claim_some()
                    backoff = 0.5
                except StorageError as exc:
                    log.warning(
                        "worker %s cannot reach the database (%s); retrying in %.1fs",
                        self.name,
                        exc,
                        backoff,
                    )
                    # The LISTEN thread's reconnect (or a stop) ends the wait early: the
                    # worker resumes as soon as the database is back, not a backoff later.
                    self._wake.wait(backoff)
                    self._wake.clear()
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                if more and self.in_flight < self.concurrency:
                    continue  # there may be more due work: claim again at once
                self._wait_for_work()
        finally:
            self.runner.remove_waker(self.wake)
            log.info("worker %s draining %d job(s) in flight", self.name, self.in_flight)
            self._pool.shutdown(wait=True)
            self._stopped.set()
            log.info("worker %s stopped after %d job(s)", self.name, self.performed)

    # ------------------------------------------------------------------ claiming

    def _claim_some(self) -> bool:
        """Claim due jobs for the free slots; True when every free slot got one (so
        more may be due). Fewer than asked means none was left at the claim: jobs
        committed since wake the worker, so claiming again at once would only add a
        transaction beside the jobs just started."""
        free = self.concurrency - self.in_flight
        if free <= 0:
            return False
        now = self.runner.clock()
        # flow control: only when this process declared queues (the plain claim of
        # unqueued jobs is unchanged otherwise)
        queues = declared_queues() or None
        # The plain claim is one statement (UPDATE ... RETURNING), atomic by itself: on
        # PostgreSQL it needs no BEGIN/COMMIT around it. The queue-aware claim counts
        # and leases under a lock, in a transaction.
        with self.runner.store.transaction(autocommit=queues is None) as tx:
            jobs = tx.claim_jobs(
                now=now,
                limit=free,
                worker=self.owner,
                lease_until=now + timedelta(seconds=self.lease_seconds),
                queues=queues,
            )
        assert self._pool is not None
        for job in jobs:
            with self._lock:
                self._in_flight[int(job.id or 0)] = job
            self._pool.submit(self._perform, job, now)
        return len(jobs) >= free

    def _perform(self, job: Job, claimed_at: datetime | None = None) -> None:
        current: Job | None = job
        while current is not None:
            key = int(current.id or 0)
            # While draining, an eagerly begun step still runs (its attempt is recorded as
            # running) but begins nothing further.
            lease = Lease(
                self.owner,
                self.lease_seconds,
                eager=not self._stopping.is_set(),
                draining=self._stopping,
                # the claim chose this job fairly at that time (not the steps after it)
                claimed_at=claimed_at if current is job else None,
            )
            try:
                # The engine deletes the job row when it records the outcome, and may hand
                # back the run's next step, already begun and leased to this worker.
                nxt = self.runner.perform(current, lease)
                with self._lock:
                    self.performed += 1
            except Exception as exc:
                # Nothing the failed transaction changed was committed. The job is given
                # back (with a backoff); a job that keeps failing for reasons of its own,
                # not the database's, is parked instead of being redelivered forever.
                with self._lock:
                    self.failures += 1
                self._give_back(current, exc)
                nxt = None
            with self._lock:
                self._in_flight.pop(key, None)
                if nxt is not None:
                    self._in_flight[int(nxt.id or 0)] = nxt
            current = nxt
        self._wake.set()

    def _give_back(self, job: Job, exc: Exception) -> None:
        transient = is_transient(exc)
        key = int(job.id or 0)
        with self._lock:
            failed = self._failed_before.pop(key, 0) + 1
            if len(self._failed_before) < 10_000:
                self._failed_before[key] = failed
        delay = min(MAX_BACKOFF, GIVE_BACK_FIRST * 2 ** (failed - 1))
        summary = None if transient else f"{type(exc).__name__}: {exc}"[:2000]
        log.log(
            logging.WARNING if transient else logging.ERROR,
            "worker %s: job %s failed (%s); it is given back and tried again",
            self.name,
            job.to_json(),
            exc,
            exc_info=not transient,
        )
        try:
            with self.runner.store.transaction() as tx:
                parked = tx.release_job(
                    int(job.id or 0),
                    run_at=self.runner.clock() + timedelta(seconds=delay),
                    failure=summary,
                    park_after=PARK_AFTER,
                )
        except StorageError as error:
            # The database is unreachable: keep the lease renewed and try again later.
            log.warning("worker %s could not give job %s back: %s", self.name, job.id, error)
            with self._lock:
                self._to_give_back.append((job, exc))
            return
        if parked:
            log.error(
                "worker %s: job %s failed %d times for the same reason and is parked: %s "
                "(explain_run shows it; fix the cause, then cancel or replay the run)",
                self.name,
                job.to_json(),
                PARK_AFTER,
                summary,
            )

    def _wait_for_work(self) -> None:
        timeout = self.poll_interval
        if self.in_flight < self.concurrency:
            # Queued work held back by a rate reopens at a time the database knows: sleep
            # until then (nothing else would wake this worker: no job is written when a
            # window reopens).
            rated = {n: q for n, q in declared_queues().items() if q.rate is not None}
            try:
                with self.runner.store.transaction() as tx:
                    next_at = tx.next_job_time()
                    if rated:
                        reopens = tx.rate_reopens(rated, self.runner.clock())
                        if reopens is not None and (next_at is None or reopens < next_at):
                            next_at = reopens
            except StorageError:
                next_at = None
            if next_at is not None:
                until = (next_at - self.runner.clock()).total_seconds()
                timeout = max(0.0, min(timeout, until))
        if timeout > 0:
            self._wake.wait(timeout)
        self._wake.clear()

    # ------------------------------------------------------------------ helpers

    def _heartbeat(self) -> None:
        interval = max(self.lease_seconds / 3, 0.05)
        while not self._stopped.wait(interval):
            with self._lock:
                ids = list(self._in_flight)
                retry, self._to_give_back = self._to_give_back, []
                ids += [int(job.id or 0) for job, _ in retry]
            if ids:
                now = self.runner.clock()
                until = now + timedelta(seconds=self.lease_seconds)
                try:
                    with self.runner.store.transaction() as tx:
                        tx.renew_lease(ids, self.owner, until, now=now)
                except StorageError as error:
                    log.warning("worker %s could not renew leases: %s", self.name, error)
            for job, failure in retry:
                self._give_back(job, failure)

    def _listen(self, wakeups: Wakeups) -> None:
        """Turn the store's wake-ups (NOTIFYs on the jobs channel) into claims."""
        wakeups.listen(self._wake.set, self._stopping, name=self.name)

    def _sweep(self) -> None:
        sweeper = self.runner.sweeper(grace=max(2 * self.lease_seconds, 5.0))
        while not self._stopping.wait(self.sweep_interval):
            try:
                if sweeper.sweep():
                    self._wake.set()
            except StorageError as exc:
                log.warning("worker %s could not sweep for stuck runs: %s", self.name, exc)
            except Exception:
                log.exception("worker %s: the sweeper failed; it will look again", self.name)

    def _schedule(self) -> None:
        self.runner.schedule(self._stopping)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (for scripts and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
