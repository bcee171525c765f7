"""``--app tests.cli.app_v2:mesh``: version 2 of the application, whose ``ring_errand``
changed in a way that breaks runs in flight (no log before the sleep any more).

``mesh`` is a factory the CLI calls with the ``--database-url`` (or
``SQUIDMESH_DATABASE_URL``) value, so docs/operations.md can point it at any database.
"""

from __future__ import annotations

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


def mesh(url: str | None = None) -> sm.Mesh:
    return sm.Mesh(
        url or "sqlite:///squidmesh.db", workflows=[ring_errand_v2], executor=sm.InlineExecutor()
    )
