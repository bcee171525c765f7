"""Final Distraction: Squid Mesh's dependency (``after: [...]``) example as a ``join``.

Three steps run in parallel: the army marches to the Black Gate, looks very brave, and the
hobbits sneak up the volcano. Only when all three have completed does Gondor declare
victory, a step marked ``irreversible=True``: once it has completed, ``replay_run``
refuses to run the workflow again unless the operator passes ``allow_irreversible=True``.

If one branch fails (after its retries), the join throws that failure into the workflow,
the branches still pending are cancelled, and victory is never declared.
tests/examples/test_examples.py drives every path.
"""

from __future__ import annotations

from pydantic import BaseModel

import squidmesh as sm


class Distraction(BaseModel):
    """The payload of the ``start_distraction`` trigger."""

    speech: str = "For Frodo."
    army: int = 6000


@sm.step
def march_to_gate(army: int) -> str:
    return f"{army} soldiers at the Black Gate"


@sm.step
def look_very_brave(speech: str) -> str:
    return f"Aragorn shouts {speech!r}"


@sm.step(retry=sm.Retry(max_attempts=3, backoff=sm.Backoff.fixed(10)))
def sneak_up_volcano() -> str:
    return "Frodo and Sam at the Crack of Doom"


@sm.step(irreversible=True)
def declare_victory(march: str, brave: str, sneak: str) -> str:
    return f"Victory! ({march}; {brave}; {sneak})"


@sm.workflow(triggers=[sm.manual("start_distraction", payload=Distraction)])
def final_distraction(plan: Distraction):
    march, brave, sneak = yield from sm.join(
        march_to_gate(plan.army),
        look_very_brave(plan.speech),
        sneak_up_volcano(),
    )
    return (yield from declare_victory(march, brave, sneak))
