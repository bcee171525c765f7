"""The Ring Errand: Squid Mesh's flagship example, written as a squidmesh generator.

It packs provisions (a payload default decides how many), logs its departure, sleeps until
Gandalf turns up, hides at the Prancing Pony until an operator unblocks it, and asks the
council for approval. A rejection sends the hobbit home. Otherwise it crosses Moria (a
retrying step); if Moria fails for good it undoes what can be undone and walks home.
Then it reserves an eagle (compensated if a later step fails), insults Sauron (cannot
be undone), marches and looks brave in parallel, and tosses the ring (irreversible).

Run it in memory with ``squidmesh.testing.WorkflowTester`` (see tests/test_ring_errand.py).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import BaseModel, Field

import squidmesh as sm


class Errand(BaseModel):
    """The payload of the ``leave_shire`` trigger."""

    ring_id: str
    bearer: str = "Frodo"
    snack_count: int = 11
    fellowship: list[str] = Field(default_factory=lambda: ["Sam"])
    started_on: date = Field(default_factory=date.today)  # resolved once, at run creation


class Provisions(BaseModel):
    lembas: int
    packed_by: str


class MoriaReport(BaseModel):
    bearer: str
    summary: str


class Ride(BaseModel):
    reservation: str
    eagle: str


def unpack_lembas(
    input: dict[str, Any], output: dict[str, Any], failure: dict[str, Any] | None
) -> str:
    """Compensation for ``pack_lembas``: put the lembas back in the pantry."""
    return f"returned {output['lembas']} lembas"


@sm.step(compensate=unpack_lembas)
def pack_lembas(bearer: str, snack_count: int) -> Provisions:
    return Provisions(lembas=snack_count, packed_by=bearer)


@sm.step(retry=sm.Retry(max_attempts=3, backoff=sm.Backoff.exponential(min=1, max=10)))
def cross_moria(bearer: str, provisions: Provisions) -> MoriaReport:
    if provisions.lembas < 1:
        raise sm.NonRetryable("nobody crosses Moria without lembas")
    return MoriaReport(
        bearer=bearer, summary=f"{bearer} crossed Moria on {provisions.lembas} lembas"
    )


def cancel_ride(
    input: dict[str, Any], output: dict[str, Any], failure: dict[str, Any] | None
) -> str:
    """Compensation for ``reserve_eagle``: called with the step's input, output and failure."""
    return f"cancelled {output['reservation']}"


@sm.step(compensate=cancel_ride)
def reserve_eagle(ring_id: str) -> Ride:
    return Ride(reservation=f"eagle-for-{ring_id}", eagle="Gwaihir")


@sm.step(compensatable=False)
def insult_sauron(bearer: str) -> str:
    return f"{bearer} made a rude gesture at the Eye"


@sm.step
def march_to_gate(army: int) -> str:
    return f"{army} soldiers at the Black Gate"


@sm.step
def look_brave() -> str:
    return "looking very brave"


@sm.step(irreversible=True)
def toss_ring(ring_id: str) -> str:
    return f"{ring_id} destroyed"


@sm.step
def walk_home(bearer: str) -> str:
    return f"{bearer} walked home awkwardly"


@sm.workflow(
    triggers=[
        sm.manual("leave_shire", payload=Errand),
        sm.cron("0 21 * * *", name="nightly", timezone="Etc/UTC", payload=Errand),
    ]
)
def ring_errand(payload: Errand):
    provisions = yield from pack_lembas(payload.bearer, snack_count=payload.snack_count)
    yield sm.log("Leaving the Shire", bearer=payload.bearer, lembas=provisions.lembas)
    yield sm.sleep(seconds=5)  # wait for Gandalf
    yield sm.pause("hide_at_prancing_pony", reason="wait for Strider")
    council = yield from sm.approval("council_vote")
    if not council.approved:
        yield walk_home(payload.bearer)
        return "went home"
    try:
        report = yield from cross_moria(payload.bearer, provisions)
    except sm.StepFailed:
        yield sm.undo()  # compensate what completed so far, then go on
        yield walk_home(payload.bearer)
        return "retreated"
    ride = yield from reserve_eagle(payload.ring_id)
    yield insult_sauron(payload.bearer)
    march, brave = yield from sm.join(
        march_to_gate(army=len(payload.fellowship) * 1000), look_brave()
    )
    yield sm.log("Distraction in place", march=march, brave=brave, eagle=ride.eagle)
    yield toss_ring(payload.ring_id)
    return report.summary
