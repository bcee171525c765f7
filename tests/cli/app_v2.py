"""``--app tests.cli.app_v2:mesh``: version 2 of the application, whose ``ring_errand``
changed in a way that breaks runs in flight (no log before the sleep any more)."""

from __future__ import annotations

import os
from typing import Any

import squidmesh as sm
from examples.ring_errand import Errand, pack_lembas, walk_home


@sm.workflow(name="ring_errand", triggers=[sm.manual("leave_shire", payload=Errand)])
def ring_errand_v2(payload: Errand) -> Any:
    yield pack_lembas(payload.bearer, snack_count=payload.snack_count)
    yield sm.sleep(seconds=5)  # v2 dropped the "Leaving the Shire" log
    yield sm.pause("hide_at_prancing_pony")
    yield sm.approval("council_vote")
    yield walk_home(payload.bearer)
    return "went home"


mesh = sm.Mesh(
    os.environ["SQUIDMESH_TEST_URL"], workflows=[ring_errand_v2], executor=sm.InlineExecutor()
)
