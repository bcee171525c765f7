"""``squidmesh demo``: the Ring Errand, end to end, on SQLite.

Also runnable as ``python -m squidmesh.demo``. Everything happens in this process: the
CLI's database (``./squidmesh.db`` by default, kept so ``squidmesh ui`` shows the run;
``python -m squidmesh.demo`` uses a temporary file), ``InlineExecutor`` (jobs run
right after each commit) and a virtual clock the demo moves by hand, so the 5-second
sleep and the retry's backoff take no time.

The story: the errand sleeps, hides until an operator unblocks it and waits for the
council's approval. Then Moria goes wrong, on purpose: the demo makes the first attempt
of ``cross_moria`` fail with a ``ConnectionError`` (retried after the step's 1-second
backoff) and the second with ``sm.NonRetryable`` (a Balrog). The workflow catches the
``StepFailed``, ``sm.undo()`` compensates ``pack_lembas`` (the lembas go back to the
pantry) and the hobbit walks home: a retry and a compensation, recorded and shown.
The faults are the demo's alone (``_TROUBLE``, keyed by run id): every other run of this
workflow behaves exactly like the example.

The workflow below is a compact copy of ``examples/ring_errand.py`` (same steps, same
semantics; tests/cli/test_demo.py checks that both yield the same commands), because an
installed package cannot import the repository's ``examples/`` folder.

``app`` builds a ``Mesh`` with this workflow for the command line, so the demo's
workflow can be operated by hand too (the demo's closing lines, ``_NEXT``, give the
whole sequence)::

    export SQUIDMESH_APP=squidmesh.demo:app SQUIDMESH_DATABASE_URL=sqlite:///errands.db
    squidmesh migrate
    squidmesh runs start ring_errand --payload '{"ring_id": "one-ring"}'
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Generator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, Field

from squidmesh.cli import explanation_text, run_facts, step_runs_table
from squidmesh.core import commands as c
from squidmesh.core.context import step_context
from squidmesh.core.definition import cron, manual, step, workflow
from squidmesh.core.retry import Backoff, Retry
from squidmesh.errors import NonRetryable, StepFailed
from squidmesh.mesh import Mesh
from squidmesh.runtime.executors import InlineExecutor
from squidmesh.runtime.views import Run

__all__ = ["T0", "VirtualClock", "app", "main", "ring_errand", "run_demo"]

T0 = datetime(2030, 1, 1, 9, 0, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- the workflow


class Errand(BaseModel):
    ring_id: str
    bearer: str = "Frodo"
    snack_count: int = 11
    fellowship: list[str] = Field(default_factory=lambda: ["Sam"])
    started_on: date = Field(default_factory=date.today)


class Provisions(BaseModel):
    lembas: int
    packed_by: str


class MoriaReport(BaseModel):
    bearer: str
    summary: str


class Ride(BaseModel):
    reservation: str
    eagle: str


def unpack_lembas(input: dict[str, Any], output: dict[str, Any], failure: Any) -> str:
    return f"returned {output['lembas']} lembas"


@step(compensate=unpack_lembas)
def pack_lembas(bearer: str, snack_count: int) -> Provisions:
    return Provisions(lembas=snack_count, packed_by=bearer)


#: run id -> the errors the demo makes ``cross_moria``'s next attempts raise, in order.
#: Only :func:`run_demo` fills it, for its own run; empty, the step is the example's.
_TROUBLE: dict[str, list[Exception]] = {}


@step(retry=Retry(max_attempts=3, backoff=Backoff.exponential(min=1, max=10)))
def cross_moria(bearer: str, provisions: Provisions) -> MoriaReport:
    trouble = _TROUBLE.get(step_context().run_id)
    if trouble:
        raise trouble.pop(0)
    if provisions.lembas < 1:
        raise NonRetryable("nobody crosses Moria without lembas")
    return MoriaReport(
        bearer=bearer, summary=f"{bearer} crossed Moria on {provisions.lembas} lembas"
    )


def cancel_ride(input: dict[str, Any], output: dict[str, Any], failure: Any) -> str:
    return f"cancelled {output['reservation']}"


@step(compensate=cancel_ride)
def reserve_eagle(ring_id: str) -> Ride:
    return Ride(reservation=f"eagle-for-{ring_id}", eagle="Gwaihir")


@step(compensatable=False)
def insult_sauron(bearer: str) -> str:
    return f"{bearer} made a rude gesture at the Eye"


@step
def march_to_gate(army: int) -> str:
    return f"{army} soldiers at the Black Gate"


@step
def look_brave() -> str:
    return "looking very brave"


@step(irreversible=True)
def toss_ring(ring_id: str) -> str:
    return f"{ring_id} destroyed"


@step
def walk_home(bearer: str) -> str:
    return f"{bearer} walked home awkwardly"


@workflow(
    triggers=[
        manual("leave_shire", payload=Errand),
        cron("0 21 * * *", name="nightly", timezone="Etc/UTC", payload=Errand),
    ]
)
def ring_errand(payload: Errand) -> Generator[Any, Any, str]:
    provisions = yield from pack_lembas(payload.bearer, snack_count=payload.snack_count)
    yield c.log("Leaving the Shire", bearer=payload.bearer, lembas=provisions.lembas)
    yield c.sleep(seconds=5)  # wait for Gandalf
    yield c.pause("hide_at_prancing_pony", reason="wait for Strider")
    council = yield from c.approval("council_vote")
    if not council.approved:
        yield walk_home(payload.bearer)
        return "went home"
    try:
        report = yield from cross_moria(payload.bearer, provisions)
    except StepFailed:
        yield c.undo()  # compensate what completed so far, then go on
        yield walk_home(payload.bearer)
        return "retreated"
    ride = yield from reserve_eagle(payload.ring_id)
    yield insult_sauron(payload.bearer)
    march, brave = yield from c.join(
        march_to_gate(army=len(payload.fellowship) * 1000), look_brave()
    )
    yield c.log("Distraction in place", march=march, brave=brave, eagle=ride.eagle)
    yield toss_ring(payload.ring_id)
    return report.summary


def app(url: str | None = None) -> Mesh:
    """A Mesh running the demo's Ring Errand inline (``--app squidmesh.demo:app``)."""
    return Mesh(url or "sqlite:///squidmesh.db", workflows=[ring_errand], executor=InlineExecutor())


# --------------------------------------------------------------------------- the demo


class VirtualClock:
    """A clock that moves only when told to (``Mesh(clock=...)``)."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class _Narrator:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.step = 0

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def chapter(self, title: str) -> None:
        self.step += 1
        self.say()
        self.say(f"{self.step}. {title}")

    def block(self, text: str) -> None:
        for line in text.splitlines():
            self.say(f"   {line}".rstrip())

    def status(self, mesh: Mesh, run: Run) -> None:
        why = mesh.explain_run(run.id)
        where = f" at {why.step}" if why.step else ""
        self.block(f"-> run is {why.status.value}: {why.reason}{where}")
        details = ", ".join(
            f"{k}={_short(v)}" for k, v in sorted(why.details.items()) if k != "replay"
        )
        if details:
            self.block(f"   {details}")
        self.block(f"   next actions: {', '.join(why.next_actions) or '(none)'}")


def _short(value: Any) -> Any:
    """A stored error as ``Type: message`` (its traceback is in the history)."""
    if isinstance(value, dict) and "type" in value and "message" in value:
        return f"{str(value['type']).rsplit('.', 1)[-1]}: {value['message']}"
    return value


def run_demo(out: TextIO | None = None, database: str | None = None) -> int:
    """Run the narrated demo, writing to ``out`` (stdout); returns the exit code (0).

    ``database`` (a URL; ``squidmesh demo`` passes the CLI's, ``sqlite:///squidmesh.db``
    by default) keeps the run there for ``squidmesh ui``; without it a throwaway file."""
    say = _Narrator(out or sys.stdout)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="squidmesh-demo-") as tmp:
        url = database or f"sqlite:///{Path(tmp) / 'demo.db'}"
        clock = VirtualClock()
        say.say("squidmesh demo: the Ring Errand, end to end")
        say.block(f"database: {_kept(database) if database else url + ' (deleted at the end)'}")
        say.block("executor: InlineExecutor (each job runs in this process after its commit)")
        say.block(f"clock:    virtual, starting at {T0.isoformat()} (moved by hand)")
        with Mesh(
            url, workflows=[ring_errand], executor=InlineExecutor(), clock=clock, auto_migrate=True
        ) as mesh:
            payload = {"ring_id": "one-ring", "started_on": T0.date().isoformat()}
            say.chapter(f"start_run('ring_errand', {payload})")
            run = mesh.start_run("ring_errand", payload)
            say.block(f"run {run.id}")
            say.block("pack_lembas ran, 'Leaving the Shire' was logged; now it sleeps 5 s")
            say.status(mesh, run)

            say.chapter("advance the clock 5 s and drain(): the timer fires")
            clock.advance(5)
            ran = mesh.drain()
            say.block(f"drain() ran {ran} job(s); the errand hides at the Prancing Pony")
            say.status(mesh, run)

            say.chapter("unblock_run(actor='strider', comment='Strider is here')")
            mesh.unblock_run(run.id, actor="strider", comment="Strider is here")
            say.block("the errand now waits for the council's approval; explain_run says:")
            say.block(explanation_text(str(run.id), mesh.explain_run(run.id)))

            clock.advance(60)
            _TROUBLE[str(run.id)] = [
                ConnectionError("the Watcher in the Water grabbed the bearer"),
                NonRetryable("a Balrog holds the bridge of Khazad-dum"),
            ]
            say.chapter("approve_run(actor='elrond', comment='the council agrees')")
            say.block("the demo now makes Moria fail (injected faults): cross_moria's first")
            say.block("attempt raises ConnectionError, its second sm.NonRetryable")
            mesh.approve_run(run.id, actor="elrond", comment="the council agrees")
            say.block("attempt 1 failed; the step's retry policy waits 1 s before attempt 2:")
            say.status(mesh, run)

            say.chapter("advance the clock 1 s and drain(): attempt 2 runs")
            clock.advance(1)
            mesh.drain()
            done = mesh.inspect_run(run.id)
            say.block("attempt 2 failed for good: the workflow caught sm.StepFailed, and")
            say.block("sm.undo() compensated pack_lembas (unpack_lembas); then walk_home ran")
            say.block(f"the run is {done.status.value}; result: {done.result!r}")

            say.chapter("the history: inspect_run(include_history=True)")
            full = mesh.inspect_run(run.id, include_history=True)
            say.block(run_facts(full))
            say.say()
            say.block("step runs (attempts, errors and compensations under each row)")
            say.block(step_runs_table(full))

            say.chapter("the final explanation: explain_run")
            say.block(explanation_text(str(run.id), mesh.explain_run(run.id)))
            _TROUBLE.pop(str(run.id), None)
    say.say()
    if database:
        say.say(f"See it in the operator console: {_ui_command(database)}")
    say.say(
        f"done in {time.perf_counter() - began:.2f} s: a retry, a compensation, and the "
        "errand walked home."
    )
    say.say(_NEXT)
    return 0


#: The closing hint: the same errand on a database of your own, moved on by hand.
_NEXT = """\
Next, the same errand on a database of your own. Each command runs the work that is
due when it acts, and nothing runs in between: once the errand's 5-second sleep is
over, `squidmesh drain` runs it on (a worker, `squidmesh worker`, would do that by
itself). Then the errand waits for you:

  export SQUIDMESH_APP=squidmesh.demo:app SQUIDMESH_DATABASE_URL=sqlite:///errands.db
  squidmesh migrate
  squidmesh runs start ring_errand --payload '{"ring_id": "one-ring"}'
  sleep 5 && squidmesh drain
  squidmesh runs unblock RUN_ID --actor strider
  squidmesh runs approve RUN_ID --actor elrond
  squidmesh runs show RUN_ID

(RUN_ID: the id `runs start` printed; its first 8 characters are enough.)"""


def _kept(url: str) -> str:
    from sqlalchemy.engine import make_url

    return f"{make_url(url).render_as_string(hide_password=True)} (kept: `squidmesh ui` shows it)"


def _ui_command(url: str) -> str:
    where = "" if url == "sqlite:///squidmesh.db" else f" --database-url '{_kept(url).split()[0]}'"
    return (
        f"`squidmesh{where} ui`, or `squidmesh --app squidmesh.demo:app{where} ui` to see "
        "its step graph too (pip install 'squidmesh[web]')"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m squidmesh.demo``."""
    if argv:
        print(f"squidmesh: error: demo takes no arguments, got {' '.join(argv)}", file=sys.stderr)
        return 2
    return run_demo()


if __name__ == "__main__":  # pragma: no cover
    # Run the importable module, not this ``__main__`` copy: step references recorded in
    # the history name ``squidmesh.demo``.
    from squidmesh import demo as _demo

    raise SystemExit(_demo.main(sys.argv[1:]))
